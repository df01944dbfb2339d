"""The Fine-tune tab: a zip of class folders in; a checkpoint out, with its curves, confusion
matrix and a review of its validation photos, selected in the Localize tab's model menu."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ..service import (checkpoint_archive, confusion_table, epoch_progress, hold_uploads, training_updates,
                       validation_review)
from ..train import DEFAULT_EPOCHS, DEFAULT_LR
from .components import guarded, readable

CURVES = {"loss": "training loss", "train_accuracy": "training accuracy", "val_accuracy": "validation accuracy"}


def _curve_plot(curve: list[dict]):
    """The training curve so far, or no update while it is empty: the plot takes its axes and
    colours from the first data it gets, and an empty first frame left them broken."""
    return pd.DataFrame(curve) if curve else gr.skip()


def build(ctx, model: gr.Dropdown) -> None:
    """The tab and its events; a finished run selects its checkpoint in `model`."""
    cache, folders = ctx.cache, ctx.outputs

    def run_training(zip_file, mode, epochs, lr, val_split, detector=False, progress=gr.Progress()):
        if zip_file is None:
            raise gr.Error("Upload a .zip with one folder of images per class first.")
        curve, status = [], "Starting..."
        with folders.lease() as folder:  # held for the whole job: the upload's link, then the review's pictures
            data = zip_file
            try:
                (data,) = hold_uploads([zip_file], folder)  # the review reads it again after training
                for event in training_updates(data, mode, epochs, lr, val_split, out=cache.checkpoints,
                                              detector=bool(detector)):
                    if event["stage"] == "done":
                        break
                    if "epoch" in event:
                        share, desc = epoch_progress(event)
                        progress(share, desc=desc)
                        if event["stage"] == "detector":
                            status = f"Training the detector on the new model's boxes: epoch {event['epoch']}/{event['epochs']}"
                        if "val_accuracy" in event:
                            curve += [{"epoch": event["epoch"], "value": event[key], "series": name}
                                      for key, name in CURVES.items()]
                            status = f"Epoch {event['epoch']}/{event['epochs']}: validation accuracy {event['val_accuracy']:.1%}"
                    else:
                        progress(0, desc=event["stage"])
                        status = f"{event['stage'].capitalize()}..."
                    yield status, _curve_plot(curve), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            except ValueError as exc:
                raise readable(exc, zip_file, data) from None
            metrics = event["metrics"]
            confusion = confusion_table(metrics)
            name = Path(event["checkpoint"]).name
            progress(1.0, desc="localizing the validation photos")
            try:  # localizing every validation photo can outlast the folders' expiry too
                review = validation_review(cache, name, data, folder)
            except ValueError as exc:
                raise readable(exc, zip_file, data) from None
        yield (f"Done: **{name}**, validation accuracy {metrics['val_accuracy']:.1%} in {metrics['seconds']:.0f} s. "
               "It is now selected in the Localize tab.", _curve_plot(curve), metrics, confusion,
               gr.Dropdown(choices=cache.choices(), value=name), review)

    def download_checkpoint(choice):
        # A plain (not generator) event, so that Gradio's cache expiry also covers the archive.
        if choice not in cache.choices() or choice == "default":
            raise gr.Error("Choose a fine-tuned checkpoint in the model menu.")
        with folders.lease() as folder:
            return checkpoint_archive(str(cache.checkpoints / choice), folder)

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
                detector = gr.Checkbox(False, label="Train a detector too: several scored boxes per class, learned "
                                       "from the new model's own boxes; for photos holding several objects, a "
                                       "hundred photos a class or more (about a minute for 200 photos on 2 cores)",
                                       elem_id="train_detector")
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
    start.click(guarded(run_training), [dataset, mode, epochs, lr, val_split, detector],
                [train_status, train_plot, train_metrics, confusion, model, review],
                api_name="train", concurrency_limit=1, concurrency_id="train"
                ).success(guarded(download_checkpoint), model, checkpoint_file, api_name="checkpoint_archive")
