"""The Review tab: a .zip of class folders in, one photo at a time in the order the model doubts
most, its proposed boxes edited in place (gradio-image-annotation) and kept at each save; the
reviewed boxes out as COCO, and a retraining on them. The review is known by a random id the
browser keeps (`gr.BrowserState`), so that a reload, a second tab or a restarted server resumes it;
its files live on the server (`cam.service.reviews`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..render import PALETTE
from ..service import epoch_progress
from ..service import reviews as service
from ..train import DEFAULT_EPOCHS
from ..train_detector import DETECTOR_EPOCHS
from .components import BoxEditor, guarded, model_menu, readable

# Keys, on the page while the Review tab shows and no text field, list or label dialog has them:
# S (or Ctrl+Enter) saves and shows the next photo, -> or K skips, <- or B goes back.
KEYS = """() => {
  if (window.camReviewKeys) return;
  window.camReviewKeys = true;
  const buttons = {s: "review_save", k: "review_skip", arrowright: "review_skip", b: "review_back", arrowleft: "review_back"};
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    if (event.altKey || event.metaKey || (event.ctrlKey && event.key !== "Enter")) return;
    const id = event.ctrlKey ? "review_save" : buttons[event.key.toLowerCase()];
    const button = id && document.getElementById(id);
    const editor = document.querySelector("#review_annotator #model-box-edit");  // the box's label editor, open
    if (!button || button.offsetParent === null || (editor && editor.getClientRects().length > 0)) return;
    event.preventDefault();
    button.click();
  });
}"""

HELP = """Check the boxes the model proposes, **one photo at a time**, the photos it doubts most first (spread
over the classes): drag a box to move it, its corners to resize it, select it and press Delete to remove it, press
**C** over the photo (or the draw button) and drag to add one, then pick its class. **S** saves and shows the next
photo (kept on the server at once: a reload or another tab resumes here), **→** skips, **←** goes back.
The reviewed boxes download as COCO (`cam train --boxes-from`, CVAT, Label Studio); "Retrain" trains the classifier
and its detector on them plus the model's own boxes of the other photos. The class you pick for a box goes into the
COCO file; retraining learns where the objects are, each of the class of its photo's folder."""


def build(ctx, demo: gr.Blocks, model: gr.Dropdown) -> None:
    """The tab and its events; a retraining selects its checkpoint in `model` (the Localize tab's menu)."""
    cache, folders = ctx.cache, ctx.outputs
    reviews = service.Reviews(cache.checkpoints / ".reviews")
    reviews.sweep_every()  # what expired while the server was stopped, then what expires while it runs

    def view(review_id, note=""):
        """The annotator's value for the photo shown, and the status."""
        return service.photo_view(reviews, review_id, folders.new(), note)

    def classes(review_id):
        """The annotator's class list: the review's classes (its value untouched)."""
        if not reviews.exists(review_id):
            return gr.skip()
        names = service.load(reviews, review_id)[1]["classes"]
        return BoxEditor(label_list=names, label_colors=[PALETTE[i % len(PALETTE)] for i in range(len(names))])

    def open_review(data, coco, choice, progress=gr.Progress()):
        def report(done, total):
            progress(done / max(total, 1), desc=f"{done}/{total} photos: the model's boxes and doubts")

        try:
            review_id = service.open_review(reviews, cache, choice, data, coco, report)
            value, status = view(review_id)
        except ValueError as exc:
            raise readable(exc, data, coco) from None
        return value, status, review_id  # the previous review stays until it expires: its boxes may be wanted

    def resume(browser_id):
        """The review the browser holds, where it was left; or nothing shown."""
        if not reviews.exists(browser_id):
            return None, None, "Open a dataset (.zip of class folders) to start a review.", gr.skip()
        value, status = view(browser_id, "Resumed where you left off.")
        _, meta, _ = service.load(reviews, browser_id)
        return browser_id, value, status, gr.Dropdown(choices=cache.choices(), value=meta["model"])

    def restore(review_id, browser_id):
        """The session's review, else the browser's: a restarted server forgot the session's."""
        return review_id or browser_id

    def current(review_id):
        if not review_id:
            raise gr.Error("No review is open here: open a dataset (.zip of class folders) first.")
        return review_id

    def save(value, review_id):
        try:
            name = service.save(reviews, current(review_id), value)
            return view(review_id, f"Saved `{name}`.")
        except service.SavedElsewhere as exc:
            gr.Warning(str(exc))
            return view(review_id, str(exc))
        except ValueError as exc:
            raise readable(exc) from None

    def step(review_id, by):
        try:
            service.move(reviews, current(review_id), step=by)
            return view(review_id)
        except ValueError as exc:
            raise readable(exc) from None

    def pick(review_id, browser_id, evt: gr.SelectData):
        try:
            review_id = restore(review_id, browser_id)
            caption = (evt.value or {}).get("caption") if isinstance(evt.value, dict) else None
            service.move(reviews, current(review_id), to=caption)
            return view(review_id)
        except ValueError as exc:
            raise readable(exc) from None

    def strip(review_id):
        if not reviews.exists(review_id):
            return []
        return service.strip(reviews, review_id, folders.new())

    def download(review_id):
        try:
            with folders.lease() as folder:
                return service.write_coco(reviews, current(review_id), folder)
        except ValueError as exc:
            raise readable(exc) from None

    def retrain(epochs, detector_epochs, review_id, progress=gr.Progress()):
        status = "Starting..."
        try:
            for event in service.retrain_updates(reviews, cache, current(review_id), int(epochs or 0) or None,
                                                 int(detector_epochs or 0) or None):
                if "checkpoint" in event:
                    break
                if "epoch" in event:
                    share, desc = epoch_progress(event)
                    progress(share, desc=desc)
                    status = f"Training: {desc}"
                else:
                    progress(0, desc=event["stage"])
                    status = f"{event['stage'].capitalize()}..."
                yield status, gr.skip()
        except ValueError as exc:
            raise readable(exc) from None
        yield service.retrain_status(event), Path(event["checkpoint"]).name

    def after_train(review_id, name, shown_value):
        """The photo to review now (unless it is the one shown: its unsaved edits stay); the checkpoint selected."""
        try:
            value, status = view(review_id)
            same = service.shows_current(reviews, review_id, shown_value)
        except ValueError as exc:
            raise readable(exc) from None
        menu = gr.Dropdown(choices=cache.choices(), value=name)
        return gr.skip() if same else value, status, menu, menu

    # Outside the tab, which the page mounts only once shown: the browser's copy is read on page load.
    review_key = gr.State(None)
    browser_key = gr.BrowserState(None, storage_key="cam-review-id", secret=reviews.secret())
    with gr.Tab("Review"):
        gr.Markdown(HELP)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280):
                data = gr.File(label="Dataset (.zip of class folders)", file_types=[".zip"], type="filepath",
                               elem_id="review_zip")
                coco = gr.File(label="Reviewed boxes to resume from (COCO .json: this tab's, CVAT's, Label Studio's; "
                               "optional)", file_types=[".json"], type="filepath", elem_id="review_coco")
                review_model = model_menu(cache, label="Model (a checkpoint of these classes proposes its own boxes; "
                                          "any other, the box of its map)", elem_id="review_model",
                                          allow_custom_value=True)  # checked by the model cache, which knows new checkpoints
                open_button = gr.Button("Open for review", variant="primary", elem_id="review_open")
                download_button = gr.Button("Download reviewed boxes (COCO)", elem_id="review_download")
                coco_file = gr.File(label="Reviewed boxes (COCO)", interactive=False, elem_id="review_coco_file")
                with gr.Accordion("Retrain with my boxes", open=False):
                    epochs = gr.Number(DEFAULT_EPOCHS["head"], label="Classifier epochs", precision=0, minimum=1,
                                       maximum=1000)
                    detector_epochs = gr.Number(DETECTOR_EPOCHS, label="Detector epochs", precision=0, minimum=1,
                                                maximum=1000)
                    train_button = gr.Button("Retrain with my boxes", variant="primary", elem_id="review_train")
                train_status = gr.Markdown("", elem_id="review_train_status")
                trained = gr.Textbox(visible=False, label="New checkpoint")
            with gr.Column(scale=2, min_width=320):
                status = gr.Markdown("Open a dataset (.zip of class folders) to start a review.", elem_id="review_status")
                # The picture comes back by the file name it was sent with, which says which photo the
                # boxes were drawn on (`service.photo_of`)
                annotator = BoxEditor(None, label_list=[], sources=[], image_type="filepath", show_clear_button=False,
                                      show_remove_button=True, show_download_button=False, height=560,
                                      elem_id="review_annotator", label="Boxes (drag to move, corners to resize)")
                with gr.Row():
                    back = gr.Button("← Back (B)", elem_id="review_back", size="sm")
                    skip = gr.Button("Skip (K, →)", elem_id="review_skip", size="sm")
                    save_button = gr.Button("Save and next (S)", variant="primary", elem_id="review_save", size="sm")
                thumbs = gr.Gallery(label="Reviewed (latest first): click one to see it again", columns=8, rows=1,
                                    height=150, allow_preview=False, fit_columns=False, object_fit="contain",
                                    format="jpeg", elem_id="review_strip")

    shown = [annotator, status]

    def restored(listener, name):
        """`listener`'s event (a button's click) that first restores the session's review id (`restore`)."""
        return listener(guarded(restore), [review_key, browser_key], review_key, api_name=f"review_restore_{name}",
                        api_visibility="private", queue=False, show_progress="hidden")

    opened = open_button.click(guarded(open_review), [data, coco, review_model], [*shown, review_key],
                               api_name="review_open", concurrency_limit=2, concurrency_id="review_open")
    opened.success(guarded(lambda key: key), review_key, browser_key, api_name="review_remember",
                   api_visibility="private").then(
        guarded(classes), review_key, annotator, api_name="review_classes", api_visibility="private").then(
        guarded(strip), review_key, thumbs, api_name="review_strip", api_visibility="private")
    restored(save_button.click, "save").then(
        guarded(save), [annotator, review_key], shown, api_name="review_save", concurrency_limit=4,
        concurrency_id="review").success(guarded(strip), review_key, thumbs, api_name="review_strip_saved",
                                         api_visibility="private", show_progress="hidden")
    restored(skip.click, "skip").then(guarded(lambda key: step(key, 1)), review_key, shown, api_name="review_skip",
                                      concurrency_limit=4, concurrency_id="review")
    restored(back.click, "back").then(guarded(lambda key: step(key, -1)), review_key, shown, api_name="review_back",
                                      concurrency_limit=4, concurrency_id="review")
    thumbs.select(guarded(pick), [review_key, browser_key], shown, api_name="review_pick", api_visibility="private")
    restored(download_button.click, "download").then(guarded(download), review_key, coco_file,
                                                     api_name="review_download")
    restored(train_button.click, "train").then(
        guarded(retrain), [epochs, detector_epochs, review_key], [train_status, trained], api_name="review_train",
        concurrency_limit=1, concurrency_id="train"
    ).success(guarded(after_train), [review_key, trained, annotator], [*shown, review_model, model],
              api_name="review_after_train",
              api_visibility="private").then(guarded(strip), review_key, thumbs, api_name="review_strip_trained",
                                             api_visibility="private")
    demo.load(guarded(resume), browser_key, [review_key, *shown, review_model], api_name="review_resume",
              api_visibility="private").then(guarded(classes), review_key, annotator, api_name="review_classes_resumed",
                                             api_visibility="private").then(
        guarded(strip), review_key, thumbs, api_name="review_strip_resumed", api_visibility="private")
    demo.load(None, js=KEYS, api_name="review_keys", api_visibility="private")

