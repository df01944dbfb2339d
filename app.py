"""Gradio UI for the cam package: localize objects in a photo, fine-tune on your own classes.

UI only: every computation comes from `cam`. Nothing heavy happens at import; models load on
first use. Run `python app.py [--host H] [--port P]`.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
from pathlib import Path

import gradio as gr
import pandas as pd
from gradio.data_classes import ImageData

from cam.methods import METHODS
from cam.settings import PRESETS, RECOMMENDED, Settings
from cam.train import DEFAULT_EPOCHS, DEFAULT_LR
from cam.render import method_name
from cam.service import (EXAMPLES, OutputFolders, ModelCache, analyze, checkpoint_archive, compact, compare_views,
                         label_collection, limit_malloc_arenas, live_frame, private_gradio_cache, training_updates,
                         validation_review, views, write_downloads)

INTRO = """# Where does the classifier look?
Upload a photo (or drop, paste, or take one with the webcam), or click an example below. One forward
pass of an ImageNet classifier gives its top classes, a **class activation map** for each of them and
a **box** around the region each map highlights: object localization without a single annotated box.
"""
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
CURVES = {"loss": "training loss", "train_accuracy": "training accuracy", "val_accuracy": "validation accuracy"}
# Gradio shows nothing when the webcam cannot be had; this wraps the browser's camera request to say why.
CAMERA_MESSAGES = """<script>
(() => {
  const messages = {
    NotAllowedError: "The browser refused this page the webcam. Allow the camera for this site (the camera icon in the address bar), then click the webcam box again.",
    NotFoundError: "No webcam was found. Plug one in and click the webcam box again, or upload a photo in the Localize tab.",
    NotReadableError: "The webcam is busy in another program or tab. Close it there, then click the webcam box again.",
    none: "This browser gives this page no webcam: browsers allow cameras only on HTTPS pages (or localhost)."
  };
  messages.SecurityError = messages.NotAllowedError;
  messages.OverconstrainedError = messages.NotFoundError;
  messages.AbortError = messages.NotReadableError;
  const say = (text) => { const box = document.querySelector("#camera_message"); if (box) box.textContent = text; };
  const media = navigator.mediaDevices;
  if (!media || !media.getUserMedia) {
    document.addEventListener("click", (event) => { if (event.target.closest("#webcam")) say(messages.none); }, true);
    return;
  }
  const ask = media.getUserMedia.bind(media);
  media.getUserMedia = async (constraints) => {
    try {
      const stream = await ask(constraints);
      say("");
      return stream;
    } catch (error) {
      say(messages[error.name] || `The webcam could not be opened (${error.name}).`);
      throw error;
    }
  };
})();
</script>"""
CSS = "#camera_message {color: var(--error-text-color)} .gradio-container {max-width: 1400px !important} @media (max-width: 700px) {.gradio-container {padding: 4px !important}}"


class PhotoInput(gr.Image):
    """gr.Image whose unreadable uploads raise a message a person understands, not a preprocessing dump."""

    is_template = True  # drawn by the frontend as a plain Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            raise gr.Error(f"This file is not an image this app can read ({type(exc).__name__}). "
                           "Upload a JPEG, PNG, BMP, GIF, WebP or TIFF photo.") from None


class LiveInput(gr.Image):
    """The webcam stream's input: each frame's JPEG bytes, for the package's guarded loader to decode."""

    is_template = True

    def preprocess(self, payload):
        if payload is not None and payload.url and payload.url.startswith("data:image/"):
            try:
                return base64.b64decode(payload.url.partition(",")[2], validate=True)
            except ValueError:
                raise gr.Error("The webcam sent a frame this app cannot read.") from None
        return super().preprocess(payload)


class LiveOverlay(gr.Image):
    """An output picture that takes a data URL as it is: live frames are never written to disk."""

    is_template = True

    def postprocess(self, value):
        if isinstance(value, str) and value.startswith("data:image/"):
            return ImageData(url=value)
        return super().postprocess(value)


def example_photos() -> list[Path]:
    """The example photos, those the ImageNet model gets right first (the gallery opens on them);
    the astronaut, whose top class is 'bobsled', last."""
    first, last = ["coffee.png", "chelsea.png", "flower.jpg", "grace_hopper.jpg"], ["astronaut.png"]
    photos = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))
    return sorted(photos, key=lambda p: (p.name in last, first.index(p.name) if p.name in first else len(first)))


def _curve_plot(curve: list[dict]):
    """The training curve so far, or no update while it is empty: the plot takes its axes and
    colours from the first data it gets, and an empty first frame left them broken."""
    return pd.DataFrame(curve) if curve else gr.skip()


def build_app(cache: ModelCache | None = None) -> gr.Blocks:
    """The whole UI; `cache` holds the models (a fresh one by default)."""
    cache = cache or ModelCache()
    ttl = int(os.environ.get("CAM_CACHE_TTL", 3600))  # seconds a result file stays downloadable
    outputs_root = OutputFolders(max_age=min(ttl, 120))  # Gradio has copied them by the time the answer is sent
    live_seconds = int(os.environ.get("CAM_LIVE_SECONDS", 60))  # one stream's length: a shared server's slots come back
    live_streams = int(os.environ.get("CAM_LIVE_STREAMS", 2))  # webcam streams served at once; more wait in the queue

    def run_localize(image, choice, topk, threshold, all_regions, opacity, input_size, flip, refine, method="auto",
                     adapt=False):
        if image is None:
            raise gr.Error("Add a photo first: upload, drop, paste, use the webcam, or click an example.")
        try:
            settings = Settings(topk=int(topk), threshold=threshold, all_regions=all_regions,
                                input_size=int(input_size or 0) or None, flip=flip, refine=refine, method=method or "auto",
                                adapt=adapt)
            result = analyze(cache, choice, image, settings)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return (*views(result, opacity, outputs_root.new()), compact(result))

    def preset_controls(name):
        """The option controls' values for a quality preset (input size 0: the model's own)."""
        preset = PRESETS[name]
        return preset.input_size or 0, preset.flip, preset.refine, preset.adapt

    def rerender(result, threshold, all_regions, opacity):
        if result is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), None
        try:
            result = result.with_threshold(threshold, all_regions)
            return (*views(result, opacity, outputs_root.new()), compact(result))
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def prepare_downloads(result, opacity):
        if result is None:
            raise gr.Error("Localize a photo first.")
        return write_downloads(result, outputs_root.new(), opacity)

    def run_training(zip_file, mode, epochs, lr, val_split, progress=gr.Progress()):
        if zip_file is None:
            raise gr.Error("Upload a .zip with one folder of images per class first.")
        curve, status = [], "Starting..."
        try:
            for event in training_updates(zip_file, mode, epochs, lr, val_split, out=cache.checkpoints):
                if event["stage"] == "done":
                    break
                if "epoch" in event:
                    done = event["epoch"] - 1 + event.get("step", event.get("steps", 1)) / event.get("steps", 1)
                    progress(done / event["epochs"], desc=f"epoch {event['epoch']}/{event['epochs']}")
                    if "val_accuracy" in event:
                        curve += [{"epoch": event["epoch"], "value": event[key], "series": name}
                                  for key, name in CURVES.items()]
                        status = f"Epoch {event['epoch']}/{event['epochs']}: validation accuracy {event['val_accuracy']:.1%}"
                else:
                    progress(0, desc=event["stage"])
                    status = f"{event['stage'].capitalize()}..."
                yield status, _curve_plot(curve), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        metrics = event["metrics"]
        names = metrics["class_names"]
        confusion = pd.DataFrame(metrics["confusion_matrix"], columns=names)
        confusion.insert(0, "true \\ predicted", names)
        confusion["class accuracy"] = [None if a is None else f"{a:.0%}" for a in metrics["per_class_accuracy"].values()]
        name = Path(event["checkpoint"]).name
        progress(1.0, desc="localizing the validation photos")
        try:
            review = validation_review(cache, name, zip_file, outputs_root.new())
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        yield (f"Done: **{name}**, validation accuracy {metrics['val_accuracy']:.1%} in {metrics['seconds']:.0f} s. "
               "It is now selected in the Localize tab.", _curve_plot(curve), metrics, confusion,
               gr.Dropdown(choices=cache.choices(), value=name), review)

    def run_labelling(files, choice, topk, min_score, threshold, classes="", progress=gr.Progress()):
        def report(done, total):
            progress(done / max(total, 1), desc=f"{done}/{total} photos")

        try:
            sheet, summary, archive = label_collection(cache, choice, files, outputs_root.new(), topk, min_score,
                                                       threshold, classes, progress=report)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        status = (f"Labelled **{summary['labelled']}** photos in {summary['seconds']:.1f} s "
                  f"({summary['photos_per_second'] or 0:.1f} photos/s)")
        if summary["errors"]:
            status += f"; **{summary['errors']}** could not be read: " + "; ".join(summary["first_errors"])
        if summary["labelled"] > len(sheet):
            status += f". The sheet shows the first {len(sheet)}; the download holds them all."
        return status, sheet, archive

    def run_compare(image, choice_a, method_a, refine_a, choice_b, method_b, refine_b, topk):
        if image is None:
            raise gr.Error("Add a photo first.")
        folder, outputs = outputs_root.new(), []
        for side, (choice, method, refine) in zip("ab", ((choice_a, method_a, refine_a), (choice_b, method_b, refine_b))):
            try:
                result = analyze(cache, choice, image, Settings(topk=int(topk), refine=refine, method=method))
            except ValueError as exc:
                raise gr.Error(f"{side.upper()}: {exc}") from None
            picture, table = compare_views(result, folder, side)
            caption = f"**{side.upper()}**: {choice}, {method_name(result)}"
            outputs += [caption, picture, table]
        return outputs

    def run_live(frame, choice, topk):
        if frame is None:
            return gr.skip(), gr.skip()
        try:
            return live_frame(cache, choice, frame, topk)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None

    def download_checkpoint(choice):
        # A plain (not generator) event, so that Gradio's cache expiry also covers the archive.
        if choice not in cache.choices() or choice == "default":
            raise gr.Error("Choose a fine-tuned checkpoint in the model menu.")
        return checkpoint_archive(str(cache.checkpoints / choice), outputs_root.new())

    with gr.Blocks(title="CAM localizer", delete_cache=(max(ttl // 4, 10), ttl)) as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Localize"):
            last = gr.State(None, time_to_live=1800)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    image = PhotoInput(label="Photo", type="filepath", sources=["upload", "webcam", "clipboard"], height=320)
                    with gr.Row():
                        model = gr.Dropdown(cache.choices(), value="default", label="Model (or type timm:NAME, torchvision:NAME)",
                                            scale=4, elem_id="model", allow_custom_value=True)
                        refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                    topk = gr.Slider(1, 10, value=5, step=1, label="Top-k classes")
                    threshold = gr.Slider(0, 1, value=RECOMMENDED.threshold, step=0.01,
                                          label="Box threshold (fraction of the map's maximum)")
                    all_regions = gr.Checkbox(False, label="A box for every region (not only the largest)")
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
            gr.Examples([[str(p)] for p in example_photos()], inputs=[image], label="Examples (click one)")
            gr.Markdown(ABOUT)

        with gr.Tab("Live"):
            gr.Markdown(f"Click the webcam box, allow the camera, point it at something and press Record: every "
                        f"frame is localized at the recommended setting, its top classes boxed over the top class's heatmap (about 10 "
                        f"frames/s on 2 CPU cores; the newest frame is always the one shown, none wait in a queue). "
                        f"A stream stops after {live_seconds} s, so that the server's live slots ({live_streams}) "
                        "come back to others; press Record again to go on.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    webcam = LiveInput(label="Webcam", sources=["webcam"], streaming=True, elem_id="webcam")
                    gr.HTML('<p id="camera_message" role="alert"></p>', padding=False)
                    live_model = gr.Dropdown(cache.choices(), value="default", label="Model", elem_id="live_model")
                    live_topk = gr.Slider(1, 5, value=3, step=1, label="Top-k classes")
                with gr.Column(scale=1, min_width=320):
                    live_overlay = LiveOverlay(show_label=False, interactive=False, format="jpeg", elem_id="live_overlay")
                    live_caption = gr.Markdown(elem_id="live_caption")

        with gr.Tab("Fine-tune"):
            gr.Markdown("Teach the model your own classes: upload a **.zip with one folder of images per class** "
                        "(e.g. `car/`, `bicycle/`, `motorbike/`, at the root or under one top folder). The trained model "
                        "then localizes your objects from its class activation maps: no box is ever annotated.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    dataset = gr.File(label="Dataset (.zip)", file_types=[".zip"], type="filepath", elem_id="dataset")
                    mode = gr.Radio([("head: classifier only, seconds", "head"), ("full: whole network, minutes", "full")],
                                    value="head", label="Mode")
                    epochs = gr.Number(DEFAULT_EPOCHS["head"], label="Epochs", precision=0, minimum=1, maximum=1000)
                    lr = gr.Number(DEFAULT_LR["head"], label="Learning rate", minimum=1e-6, maximum=0.9)
                    val_split = gr.Slider(0.05, 0.5, value=0.2, step=0.05, label="Validation split (per class)")
                    start = gr.Button("Start training", variant="primary")
                with gr.Column(scale=2, min_width=320):
                    train_status = gr.Markdown("One training runs at a time; others wait in the queue.", elem_id="train_status")
                    train_plot = gr.LinePlot(x="epoch", y="value", color="series", label="Loss and accuracy",
                                             y_title="loss / accuracy", color_title="", elem_id="train_plot")
                    confusion = gr.Dataframe(label="Validation confusion matrix (rows: true class)", interactive=False,
                                             elem_id="confusion")
                    with gr.Accordion("All metrics as JSON", open=False):
                        train_metrics = gr.JSON(label="Metrics")
                    review = gr.Gallery(label="What it learned: validation photos with the new model's maps and boxes "
                                        "(misclassified first, then class by class)", columns=6, height=360,
                                        format="jpeg", elem_id="review")
                    checkpoint_file = gr.File(label="Checkpoint (.zip)", interactive=False, elem_id="checkpoint_file")
            mode.change(lambda m: (DEFAULT_EPOCHS[m], DEFAULT_LR[m]), mode, [epochs, lr], api_visibility="private")

        with gr.Tab("Compare"):
            gr.Markdown("The same photo through two models or two settings, side by side: the ImageNet model "
                        "against your fine-tuned checkpoint, plain CAM against refined, CAM against Grad-CAM.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    compare_image = PhotoInput(label="Photo", type="filepath", sources=["upload", "clipboard"], height=260,
                                               elem_id="compare_photo")
                    compare_topk = gr.Slider(1, 10, value=3, step=1, label="Top-k classes")
                    sides = []
                    for side, method_default, refine_default in (("A", "cam", False), ("B", "auto", True)):
                        with gr.Group():
                            sides += [gr.Dropdown(cache.choices(), value="default", allow_custom_value=True,
                                                  label=f"{side}: model", elem_id=f"compare_model_{side.lower()}"),
                                      gr.Dropdown(["auto", *METHODS], value=method_default, label=f"{side}: method"),
                                      gr.Checkbox(refine_default, label=f"{side}: refine the maps")]
                    compare_button = gr.Button("Compare", variant="primary")
                compare_outputs = []
                for side in ("a", "b"):
                    with gr.Column(scale=1, min_width=300):
                        compare_outputs += [
                            gr.Markdown(f"**{side.upper()}**", elem_id=f"compare_caption_{side}"),
                            gr.Image(show_label=False, format="jpeg", interactive=False, elem_id=f"compare_picture_{side}",
                                     buttons=["download", "fullscreen"]),
                            gr.Dataframe(headers=["rank", "class", "score", "boxes (x0, y0, x1, y1)"], interactive=False,
                                         elem_id=f"compare_table_{side}")]
            gr.Examples([[str(p)] for p in example_photos()[:4]], inputs=[compare_image], label="Examples")

        with gr.Tab("Collection"):
            gr.Markdown("Boxes for a whole collection, in the formats detectors train on: upload **photos or a .zip "
                        "of photos** (folders inside are kept). Every photo gets the boxes of its top classes; the "
                        "download holds `coco.json`, `yolo/` (Ultralytics' layout: `yolo detect train "
                        "data=yolo/data.yaml`) and `voc/` (the VOCdevkit layout), with the photos and the logs. "
                        "Weakly supervised: no box is ever drawn by hand. For large collections use "
                        "`python -m cam label` (resumable, Ray).")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=280):
                    collection = gr.File(label="Photos or .zip", file_count="multiple", file_types=["image", ".zip"],
                                         type="filepath", elem_id="collection")
                    collection_model = gr.Dropdown(cache.choices(), value="default", label="Model",
                                                   elem_id="collection_model")
                    collection_classes = gr.Textbox("", label="Classes to box (comma-separated; empty: all the model's)",
                                                    placeholder="e.g. ant, bee", elem_id="collection_classes")
                    collection_topk = gr.Slider(1, 5, value=1, step=1, label="Classes per photo")
                    min_score = gr.Slider(0, 1, value=0, step=0.01, label="Minimum score (drop classes below it)")
                    collection_threshold = gr.Slider(0, 1, value=RECOMMENDED.threshold, step=0.01,
                                                     label="Box threshold (fraction of the map's maximum)")
                    label_button = gr.Button("Label the collection", variant="primary")
                with gr.Column(scale=2, min_width=320):
                    collection_status = gr.Markdown("One collection is labelled at a time; others wait in the queue.",
                                                    elem_id="collection_status")
                    sheet = gr.Gallery(label="Contact sheet", columns=6, height=420, format="jpeg", elem_id="sheet")
                    labels_file = gr.File(label="Boxes (.zip: COCO, YOLO, Pascal VOC)", interactive=False,
                                          elem_id="labels_file", visible=False)  # shown once labelled

        outputs = [overlay, boxed, gallery, table, result_json, last]
        inputs = [image, model, topk, threshold, all_regions, opacity, input_size, flip, refine, method, adapt]
        quality.input(preset_controls, quality, [input_size, flip, refine, adapt], api_visibility="private")
        run.click(run_localize, inputs, outputs, api_name="localize", concurrency_limit=4, concurrency_id="infer")
        image.change(run_localize, inputs, outputs, api_visibility="private", concurrency_limit=4,
                     concurrency_id="infer", trigger_mode="always_last")
        threshold.change(rerender, [last, threshold, all_regions, opacity], outputs, api_name="rerender",
                         show_progress="hidden", trigger_mode="always_last", concurrency_limit=4, concurrency_id="render")
        for control in (opacity, all_regions):
            control.change(rerender, [last, threshold, all_regions, opacity], outputs, api_visibility="private",
                           show_progress="hidden", trigger_mode="always_last", concurrency_limit=4, concurrency_id="render")
        webcam.stream(run_live, [webcam, live_model, live_topk], [live_overlay, live_caption], api_visibility="private",
                      stream_every=0.1, time_limit=live_seconds, concurrency_limit=live_streams, concurrency_id="live",
                      show_progress="hidden")
        live_model.focus(lambda: gr.Dropdown(choices=cache.choices()), None, live_model, api_visibility="private")
        refresh.click(lambda: gr.Dropdown(choices=cache.choices()), None, model, api_name="models")
        collection_model.focus(lambda: gr.Dropdown(choices=cache.choices()), None, collection_model,
                               api_visibility="private")  # lists checkpoints trained since the page loaded
        compare_button.click(run_compare, [compare_image, *sides, compare_topk], compare_outputs, api_name="compare",
                             concurrency_limit=4, concurrency_id="infer")
        for dropdown in (sides[0], sides[3]):
            dropdown.focus(lambda: gr.Dropdown(choices=cache.choices()), None, dropdown, api_visibility="private")
        label_button.click(run_labelling, [collection, collection_model, collection_topk, min_score, collection_threshold,
                                           collection_classes],
                           [collection_status, sheet, labels_file], api_name="label", concurrency_limit=1,
                           concurrency_id="label").success(lambda: gr.File(visible=True), None, labels_file,
                                                           api_visibility="private")
        download_button.click(prepare_downloads, [last, opacity], files, api_name="downloads").success(
            lambda: gr.File(visible=True), None, files, api_visibility="private")  # API answers stay plain files
        start.click(run_training, [dataset, mode, epochs, lr, val_split],
                    [train_status, train_plot, train_metrics, confusion, model, review],
                    api_name="train", concurrency_limit=1, concurrency_id="train"
                    ).success(download_checkpoint, model, checkpoint_file, api_name="checkpoint_archive")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the CAM localizer web app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args()
    limit_malloc_arenas()
    private_gradio_cache()
    # A stop request (SIGTERM: what Spaces and process managers send) is handled as Ctrl-C: Gradio
    # closes its server, deleting the files it cached, and the app's own folders go at exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    build_app().queue(default_concurrency_limit=4).launch(
        server_name=args.host, server_port=args.port, show_error=True, css=CSS, head=CAMERA_MESSAGES, max_file_size="50mb")


if __name__ == "__main__":
    main()
