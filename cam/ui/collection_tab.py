"""The Collection tab: photos or zips in; a contact sheet and a zip of COCO, YOLO and VOC files out."""

from __future__ import annotations

import gradio as gr

from ..service import label_collection
from ..settings import RECOMMENDED
from .components import guarded, model_menu, readable


def build(ctx) -> None:
    """The tab and its event: one collection at a time, others wait in the queue."""
    cache, folders = ctx.cache, ctx.outputs

    def run_labelling(files, choice, topk, min_score, threshold, classes="", progress=gr.Progress()):
        def report(done, total):
            progress(done / max(total, 1), desc=f"{done}/{total} photos")

        try:
            with folders.lease() as folder:  # the VOC files and the zip take minutes for a large collection
                sheet, summary, archive = label_collection(cache, choice, files, folder, topk,
                                                           min_score, threshold, classes, progress=report)
        except ValueError as exc:
            raise readable(exc, *(files or [])) from None
        if not summary["labelled"]:
            raise gr.Error(f"None of the {summary['photos']} photos could be read: "
                           + "; ".join(summary["first_errors"]) + ". Upload JPEG, PNG, BMP, GIF, WebP or TIFF "
                           "photos, or a .zip of them.")
        status = (f"Labelled **{summary['labelled']}** photos in {summary['seconds']:.1f} s "
                  f"({summary['photos_per_second'] or 0:.1f} photos/s)")
        if summary["errors"]:
            status += f"; **{summary['errors']}** could not be read: " + "; ".join(summary["first_errors"])
        if summary["labelled"] > len(sheet):
            status += f". The sheet shows the first {len(sheet)}; the download holds them all."
        return status, sheet, archive

    with gr.Tab("Collection"):
        gr.Markdown("Boxes for a whole collection, in the formats detectors train on: upload **photos or a .zip "
                    "of photos** (folders inside are kept). Every photo gets the boxes of its top classes; the "
                    "download holds `coco.json`, `yolo/` (Ultralytics' layout: `yolo detect train "
                    "data=yolo/data.yaml`) and `voc/` (the VOCdevkit layout), with the photos and the logs. "
                    "Weakly supervised: no box is ever drawn by hand. For large collections use "
                    "`cam label` (resumable, Ray).")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                collection = gr.File(label="Photos or .zip", file_count="multiple", file_types=["image", ".zip"],
                                     type="filepath", elem_id="collection")
                collection_model = model_menu(cache, label="Model", elem_id="collection_model")
                collection_classes = gr.Textbox("", label="Classes to box (comma-separated; empty: all the model's)",
                                                placeholder="e.g. ant, bee", elem_id="collection_classes")
                collection_topk = gr.Slider(0, 5, value=0, step=1, label="Classes per photo (0: the top one, or "
                                            "every class a checkpoint's detector finds, as `cam label` does)")
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
    label_button.click(guarded(run_labelling), [collection, collection_model, collection_topk, min_score, collection_threshold,
                                       collection_classes],
                       [collection_status, sheet, labels_file], api_name="label", concurrency_limit=1,
                       concurrency_id="label").success(lambda: gr.File(visible=True), None, labels_file,
                                                       api_visibility="private")
