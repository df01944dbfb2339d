"""The Compare tab: one photo through two models or two settings, side by side."""

from __future__ import annotations

import gradio as gr

from ..methods import METHODS
from ..render import method_name
from ..service import analyze, compare_views
from ..settings import Settings
from .components import PhotoInput, example_photos, guarded, model_menu, readable


def build(ctx) -> None:
    """The tab and its event."""
    cache, folders = ctx.cache, ctx.outputs

    def run_compare(image, choice_a, method_a, refine_a, choice_b, method_b, refine_b, topk):
        if image is None:
            raise gr.Error("Add a photo first.")
        outputs = []
        with folders.lease() as folder:  # a first load (a hub download) can outlast the folders' expiry
            for side, (choice, method, refine) in zip("ab", ((choice_a, method_a, refine_a),
                                                             (choice_b, method_b, refine_b))):
                try:
                    result = analyze(cache, choice, image, Settings(topk=int(topk), refine=refine, method=method))
                except ValueError as exc:
                    raise readable(ValueError(f"{side.upper()}: {exc}"), image) from None
                picture, table = compare_views(result, folder, side)
                caption = f"**{side.upper()}**: {choice}, {method_name(result)}"
                outputs += [caption, picture, table]
        return outputs

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
                        sides += [model_menu(cache, allow_custom_value=True, label=f"{side}: model",
                                             elem_id=f"compare_model_{side.lower()}"),
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
    compare_button.click(guarded(run_compare), [compare_image, *sides, compare_topk], compare_outputs, api_name="compare",
                         concurrency_limit=4, concurrency_id="infer")
