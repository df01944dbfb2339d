"""The Localize tab: a photo in; the top classes, the top class's heatmap, boxes, one map per class
and the downloads out. It opens on a finished result for the first example photo."""

from __future__ import annotations

import gradio as gr

from ..methods import METHODS
from ..service import analyze, compact, reboxed, views, write_downloads
from ..settings import BOX_SOURCES, PRESETS, RECOMMENDED, Settings
from .components import PhotoInput, example_photos, guarded, readable

ABOUT = """### How it works
A network that ends in global average pooling and one linear layer scores class *c* as the
average over the image of `M_c(x, y) = Σ_k w[c, k] · f_k(x, y)`, its classifier's weights applied
to every pixel of the last feature map. That map, upsampled to the photo, is the class activation
map; the box is the bounding rectangle of the largest region above the threshold (a fraction of
the map's maximum). Zhou et al., [Learning Deep Features for Discriminative Localization](https://arxiv.org/abs/1512.04150), CVPR 2016.
By default each map is then refined: every pixel of the finer feature map one stage earlier takes
the map's mean weighted by how alike its features are, which sharpens the boxes (MaxBoxAccV2 0.63
-> 0.71 on ImageNet photos); untick it under "Localization options" for the paper's exact CAM.
The "best" quality adds the mirror image and adapts each map's contrast to its spread, so that the
box is cut relative to the map's mean rather than its peak (MaxBoxAccV2 0.740, top-1 loc 0.621).
Moving the threshold or opacity sliders re-draws from the kept maps, without running the network.
For heads where CAM is not exact (ViT, Swin, ConvNeXt, MobileNetV3, VGG: type e.g. `timm:convnext_tiny`
in the model menu, where the server reaches the model hub) the maps are Grad-CAM's, or Grad-CAM++'s
or LayerCAM's (under "Localization options"); the captions name the method that made them.
"""
QUALITIES = [("Recommended", "recommended"), ("Best (about 1.4x the time)", "best"), ("The paper's CAM", "plain")]
INPUT_SIZES = [("288 px (recommended)", 288), ("the model's own (the paper's CAM)", 0), ("320 px", 320), ("384 px", 384)]


def build(ctx, demo: gr.Blocks) -> gr.Dropdown:
    """The tab, its events and the result shown on page load; returns its model menu (the Fine-tune
    tab selects a new checkpoint there)."""
    cache, folders = ctx.cache, ctx.outputs

    def run_localize(image, choice, topk, threshold, all_regions, opacity, input_size, flip, refine, method="auto",
                     adapt=False, boxes="auto"):
        if image is None:
            raise gr.Error("Add a photo first: upload, drop, paste, use the webcam, or click an example.")
        try:
            settings = Settings(topk=int(topk), threshold=threshold, all_regions=all_regions,
                                input_size=int(input_size or 0) or None, flip=flip, refine=refine,
                                method=method or "auto", adapt=adapt, boxes=boxes or "auto")
            result = analyze(cache, choice, image, settings)
        except ValueError as exc:
            raise readable(exc, image) from None
        return (*views(result, opacity, folders.new()), compact(result))

    def preset_controls(name):
        """The option controls' values for a quality preset (input size 0: the model's own)."""
        preset = PRESETS[name]
        return preset.input_size or 0, preset.flip, preset.refine, preset.adapt

    def rerender(result, threshold, all_regions, opacity):
        if result is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        try:
            result = reboxed(result, threshold, all_regions)
            return (*views(result, opacity, folders.new()), compact(result))
        except ValueError as exc:
            raise readable(exc) from None

    def prepare_downloads(result, opacity):
        if result is None:
            raise gr.Error("Localize a photo first.")
        try:
            with folders.lease() as folder:  # a 12 MP photo's PNGs take a while
                return write_downloads(result, folder, opacity)
        except ValueError as exc:
            raise readable(exc, result.source if isinstance(result.source, str) else None) from None

    photos = example_photos()
    with gr.Tab("Localize"):
        last = gr.State(None, time_to_live=1800)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                image = PhotoInput(str(photos[0]) if photos else None, label="Photo", type="filepath",
                                   sources=["upload", "webcam", "clipboard"], height=260, elem_id="photo")
                gr.Examples([[str(p)] for p in photos], inputs=[image], label="Examples (click one)",
                            elem_id="examples", examples_per_page=len(photos) or 1)
                with gr.Row():
                    model = gr.Dropdown(cache.choices(), value="default", label="Model (or type timm:NAME, torchvision:NAME)",
                                        scale=4, elem_id="model", allow_custom_value=True)
                    refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                topk = gr.Slider(1, 10, value=5, step=1, label="Top-k classes")
                threshold = gr.Slider(0, 1, value=RECOMMENDED.threshold, step=0.01,
                                      label="Box threshold (fraction of the map's maximum)")
                all_regions = gr.Checkbox(False, label="A box for every region (not only the largest)")
                boxes = gr.Radio(list(BOX_SOURCES), value="auto", elem_id="boxes-from",
                                 label="Boxes from (auto: what the checkpoint measured best, else both, the map's "
                                       "box first; cam: the map cut at the threshold)")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")
                quality = gr.Radio(QUALITIES, value="recommended", label="Quality (sets the options below)",
                                   elem_id="quality")
                with gr.Accordion("Localization options", open=False):
                    input_size = gr.Dropdown(INPUT_SIZES, value=RECOMMENDED.input_size or 0, label="Input size")
                    flip = gr.Checkbox(RECOMMENDED.flip, label="Average with the mirror image (flip)")
                    refine = gr.Checkbox(RECOMMENDED.refine, label="Refine the maps by feature similarity "
                                         "(sharper boxes; off: the paper's exact CAM)")
                    adapt = gr.Checkbox(RECOMMENDED.adapt, label="Adapt each map's contrast to its spread "
                                        "(boxes cut relative to the map's mean, not only its peak)")
                    method = gr.Dropdown(["auto", *METHODS], value="auto", label="Map method (auto: CAM where it is exact, "
                                         "Grad-CAM for other heads: ViT, Swin, ConvNeXt, MobileNetV3, VGG)",
                                         elem_id="method")
                run = gr.Button("Localize", variant="primary")
            with gr.Column(scale=2, min_width=320):
                with gr.Row():
                    # No label tab over the pictures' top-left corner, where the top box's caption is drawn.
                    overlay = gr.Image(label="Heatmap of the top class", show_label=False, format="jpeg",
                                       interactive=False, elem_id="overlay", buttons=["download", "fullscreen"])
                    boxed = gr.Image(label="Boxes", show_label=False, format="jpeg", interactive=False,
                                     elem_id="boxes", buttons=["download", "fullscreen"])
                gallery = gr.Gallery(label="One map per class", columns=5, height=240, format="jpeg", elem_id="gallery")
                table = gr.Dataframe(headers=["rank", "class", "score", "boxes (x0, y0, x1, y1)"],
                                     label="Classes and scores", interactive=False, elem_id="table")
                with gr.Accordion("Result as JSON (boxes in image pixels)", open=False):
                    result_json = gr.JSON(label="Result")
                with gr.Row():
                    download_button = gr.Button("Prepare downloads at full size (overlay PNG, boxes PNG and JSON, maps .npy)")
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, visible=False,
                                elem_id="downloads")  # shown once there is something to download
        gr.Markdown(ABOUT)

    outputs = [overlay, boxed, gallery, table, result_json, last]
    inputs = [image, model, topk, threshold, all_regions, opacity, input_size, flip, refine, method, adapt, boxes]
    quality.input(preset_controls, quality, [input_size, flip, refine, adapt], api_visibility="private")
    quality.input(lambda name: PRESETS[name].boxes, quality, boxes, api_visibility="private")  # plain: the maps' box
    run.click(guarded(run_localize), inputs, outputs, api_name="localize", concurrency_limit=4, concurrency_id="infer")
    image.change(guarded(run_localize), inputs, outputs, api_visibility="private", concurrency_limit=4,
                 concurrency_id="infer", trigger_mode="always_last")
    demo.load(guarded(run_localize), inputs, outputs, api_visibility="private", concurrency_limit=4,
              concurrency_id="infer")  # a finished result for the example photo the page opens on
    threshold.change(guarded(rerender), [last, threshold, all_regions, opacity], outputs, api_name="rerender",
                     show_progress="hidden", trigger_mode="always_last", concurrency_limit=4, concurrency_id="render")
    for control in (opacity, all_regions):
        control.change(guarded(rerender), [last, threshold, all_regions, opacity], outputs, api_visibility="private",
                       show_progress="hidden", trigger_mode="always_last", concurrency_limit=4, concurrency_id="render")
    boxes.change(guarded(run_localize), inputs, outputs, api_visibility="private", concurrency_limit=4, concurrency_id="infer",
                 trigger_mode="always_last")
    refresh.click(lambda: gr.Dropdown(choices=cache.choices()), None, model, api_name="models")
    download_button.click(guarded(prepare_downloads), [last, opacity], files, api_name="downloads").success(
        lambda: gr.File(visible=True), None, files, api_visibility="private")  # API answers stay plain files
    return model
