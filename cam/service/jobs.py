"""Long work for the app: labelling an uploaded collection, fine-tuning in a process of its own,
reviewing what a checkpoint learned."""

from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import yaml

from .. import render
from ..boxes import check_threshold, scale_box
from ..data import MAX_ARCHIVE_FILES, hard_link_or_copy, private_temp_folder, read_photo
from ..export import read_log
from ..models import DEFAULT_SPEC
from ..settings import RECOMMENDED, Settings
from .model_cache import CHECKPOINTS, ROOT, ModelCache
from .outputs import GALLERY_SIDE, _jpeg, _scaled_result, _shrunk


SHEET_PHOTOS = 48  # photos shown on the contact sheet; the download holds every photo's boxes


def hold_uploads(files, folder: Path) -> list[str]:
    """Hard links (copies where linking fails) of the uploaded `files` in a job's leased `folder`,
    by their names: Gradio deletes uploads older than its cache's expiry, whether or not a job still reads them."""
    held = []
    for number, path in enumerate(files or []):
        target = folder / "uploads" / str(number) / Path(path).name
        target.parent.mkdir(parents=True)
        try:
            hard_link_or_copy(path, target)
        except FileNotFoundError:  # the page sat open past the cache's expiry
            raise ValueError(f"{Path(path).name}: this upload has expired; upload it again") from None
        held.append(str(target))
    return held


def label_collection(cache: ModelCache, choice: str, files, folder: Path, topk: int = 0, min_score: float = 0.0,
                     threshold: float = RECOMMENDED.threshold, classes: str = "", progress=None) -> tuple[list, dict, str]:
    """Label uploaded photos and zips (`cam.label.label`, the recommended setting) into `folder`:
    the contact sheet (boxed thumbnails of the first SHEET_PHOTOS photos, captioned), the run's
    summary with the first errors, and a zip of the COCO, YOLO and VOC files, their photos and the
    logs, from links to the uploads held in `folder` (`hold_uploads`). `topk` classes a photo; 0 is
    `cam label`'s default: the top class, or every class where a checkpoint's detector gives the
    boxes. `classes`, comma-separated names (empty: all), are the classes boxed and exported.
    `folder` must outlive the run: lease it (`OutputFolders.lease`), since a large one runs for minutes."""
    from types import SimpleNamespace

    from ..label import ERRORS, label

    files = [str(f) for f in files or []]
    if not files:
        raise ValueError("Add photos or a .zip of photos first.")
    if len(files) > MAX_ARCHIVE_FILES:
        raise ValueError(f"{len(files):,} files is over the limit of {MAX_ARCHIVE_FILES:,}; upload a zip of fewer photos")
    model = cache.get(choice)
    chosen = tuple(name.strip() for name in str(classes or "").split(",") if name.strip()) or None
    try:
        settings = Settings(topk=min(int(topk), len(chosen or model.class_names)) or None,
                            min_score=float(min_score), threshold=check_threshold(threshold), classes=chosen)
    except (TypeError, ValueError):
        raise ValueError("top-k, minimum score and threshold must be numbers") from None
    files = hold_uploads(files, folder)  # once the request is known to be good
    sheet = []

    def add_to_sheet(record: dict, item) -> None:
        if "error" in record or len(sheet) >= SHEET_PHOTOS:
            return
        photo = read_photo(item.path)
        image, _ = _shrunk(photo.pixels, GALLERY_SIDE)
        # a detector's boxes are captioned with their own scores, as on the Localize tab
        shown = [SimpleNamespace(label=p["label"], score=p["score"], box_scores=p.get("box_scores"),
                                 boxes=[scale_box(b, photo.size, image.shape[:2]) for b in p["boxes"]])
                 for p in record["predictions"]]
        top = record["predictions"][0] if record["predictions"] else None
        caption = f"{record['file']}: {top['label']} {top['score']:.2f}" if top else f"{record['file']}: no class above the minimum score"
        sheet.append((_jpeg(render.draw_boxes(image, shown), folder / f"sheet_{len(sheet):03d}.jpg"), caption))

    out = folder / "labels"
    try:
        summary = label(files, out, model=model, settings=settings, progress=progress, on_record=add_to_sheet)
    except ValueError as exc:
        raise ValueError(without_folders(str(exc), files)) from None
    _scrub_log(out / ERRORS, files)  # it travels in the download
    summary["first_errors"] = [f"{e['file']}: {e['error'].replace(e['path'] + ': ', '')}"
                               for e in itertools.islice(read_log(out / ERRORS), 5)]
    portable_data_yaml(out / "yolo" / "data.yaml")
    archive = shutil.make_archive(str(folder / "labels"), "zip", root_dir=out)  # links are followed: photos included
    return sheet, summary, archive


def without_folders(text: str, files=()) -> str:
    """`text` without the server's folders: the folders the uploaded `files` lie in are cut (a
    visitor knows the files by name), then any path under the server's own folders (`server_folders`)
    is cut down to its last part."""
    for folder in {str(Path(f).parent) for f in files}:
        if len(folder) > 1:
            text = text.replace(folder + "/", "")
    return _server_paths().sub(lambda m: m.group(0).rstrip("/").rpartition("/")[2], text)


def server_folders() -> list[str]:
    """The server's folders a visitor must never read: temp, working dir, checkpoints, home, the
    code's own and Gradio's cache; longest first, so that the most specific cuts first."""
    folders = {tempfile.gettempdir(), os.environ.get("GRADIO_TEMP_DIR", ""), os.getcwd(), str(ROOT),
               str(CHECKPOINTS), str(Path.home())}
    return sorted({os.path.realpath(f) for f in folders if len(f) > 1} | {f for f in folders if len(f) > 1},
                  key=len, reverse=True)


def _server_paths() -> re.Pattern:
    """A path under one of `server_folders()`: the folder, not followed by more of a name (so "in
    /root." and "/root?" are cut, "/tmp.bak" is not), then any run of path characters."""
    roots = "|".join(re.escape(f.rstrip("/")) for f in server_folders())
    return re.compile(rf"(?:{roots})(?![\w-]|\.[\w-])(?:/[^\s'\":;,)\]}}]*)?")


def _scrub_log(path: Path, files) -> None:
    """Rewrite a log's text fields `without_folders`: an upload's record names its server path."""
    records = [{k: without_folders(v, files) if isinstance(v, str) else v for k, v in record.items()}
               for record in read_log(path)]
    if path.is_file():
        path.write_text("".join(json.dumps(record) + "\n" for record in records))


def portable_data_yaml(path: Path) -> None:
    """Empty the `path` of a YOLO data.yaml that travels in a download: Ultralytics then takes the
    folder the file is in as the dataset root, wherever it is unpacked."""
    if not path.is_file():
        return
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "path": ""}, allow_unicode=True, sort_keys=False))


def training_updates(data, mode: str, epochs, lr, val_split, out: Path = CHECKPOINTS, model_spec: str = DEFAULT_SPEC,
                     detector: bool = False, boxes_from: str | None = None, detector_epochs: int | None = None):
    """Run a fine-tuning job in its own process (`python -m cam train`) and yield its progress
    dicts as they come, then {'stage': 'done', **summary}. Its own process: the server's memory is
    untouched when it ends, and inference never waits on it. A failed job raises a ValueError with
    its one-line message (a crash is logged with its stderr and raised as a RuntimeError, which the
    app shows as "something went wrong"); closing the generator (the user left) stops the job, and a stopped job
    writes no checkpoint. With `detector`, a detector is trained on the new classifier's boxes too;
    with `boxes_from` (a COCO file), on the reviewed boxes of the photos it lists as well."""
    try:
        settings = ["--mode", str(mode), "--epochs", str(int(epochs)), "--lr", str(float(lr)),
                    "--val-split", str(float(val_split)), *(["--detector"] if detector else []),
                    *(["--boxes-from", str(boxes_from)] if boxes_from else []),
                    *(["--detector-epochs", str(int(detector_epochs))] if detector_epochs else [])]
    except (TypeError, ValueError):
        raise ValueError("epochs, learning rate and validation split must be numbers") from None
    command = [sys.executable, "-m", "cam", "train", str(data), "--model", model_spec, *settings, "--out", str(out)]
    job = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors: collections.deque = collections.deque(maxlen=20)
    drain = threading.Thread(target=lambda: errors.extend(job.stderr), daemon=True)  # the progress bar
    drain.start()
    try:
        summary = None
        for line in job.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or not {"stage", "checkpoint"} & event.keys():  # a library's own print
                logging.getLogger("cam.jobs").warning("training printed a line that is not progress: %s", line.rstrip())
                continue
            if "checkpoint" in event:
                summary = event
            else:
                yield event
        job.wait()
        drain.join(timeout=10)
        if job.returncode != 0 or summary is None:
            tail = "".join(errors)
            logging.getLogger("cam.jobs").warning("training ended with exit code %s:\n%s", job.returncode, tail)
            if "Traceback (most recent call last)" in tail:  # not the CLI's own one-line error: logged only
                raise RuntimeError(f"training crashed (exit code {job.returncode})")
            reported = [e.rsplit("error: ", 1)[1].strip() for e in errors if "error: " in e]
            raise ValueError(reported[-1] if reported else f"training stopped (exit code {job.returncode})")
        yield {"stage": "done", **summary}
    finally:
        if job.poll() is None:
            job.terminate()
            job.wait(timeout=30)


def confusion_table(metrics: dict):
    """The training's confusion matrix as a table: a row per true class, a column per predicted one,
    and each class's accuracy (blank for a class without validation photos)."""
    import pandas as pd

    names = metrics["class_names"]
    table = pd.DataFrame(metrics["confusion_matrix"], columns=names)
    table.insert(0, "true \\ predicted", names)
    table["class accuracy"] = [None if a is None else f"{a:.0%}" for a in metrics["per_class_accuracy"].values()]
    return table


def validation_review(cache: ModelCache, choice: str, data, folder: Path, limit: int = SHEET_PHOTOS) -> list:
    """What a fine-tuned checkpoint learned: its validation photos (the split its training made,
    rebuilt from `data`, the same zip or folder) with the new model's heatmap and box, captioned with
    the true and the predicted class; misclassified photos first, then class by class. At most
    `limit` (picture, caption) tiles, pictures as JPEGs in `folder`."""
    from ..data import scan_dataset, unpack_zip
    from ..localize import localize_batch
    from ..train import stratified_split

    model = cache.get(choice)
    config = json.loads((cache.checkpoints / choice / "config.json").read_text())
    if "val_split" not in config:
        raise ValueError(f"{choice} was trained before checkpoints recorded their validation split")
    scratch = private_temp_folder("cam-review-")
    try:
        root = Path(data)
        if root.is_file():
            unpack_zip(root, scratch / "data")
            root = scratch / "data"
        _, items, _ = scan_dataset(root)
        _, val = stratified_split([label for _, label in items], config["val_split"], config.get("seed", 0))
        # At the size training validated at, so that the classes are those of the confusion matrix.
        size = config.get("train_input_size", [None])[0]
        results = localize_batch(model, [items[i][0] for i in val], topk=1, input_size=size)
        truths = [items[i][1] for i in val]
        order = sorted(range(len(val)), key=lambda j: (results[j].predictions[0].class_index == truths[j], truths[j], j))
        tiles = []
        for rank, j in enumerate(order[:limit]):
            top = results[j].predictions[0]
            mark = "right" if top.class_index == truths[j] else "WRONG"
            caption = f"{mark}: {model.class_names[truths[j]]} -> {top.label} {top.score:.2f}"
            picture = render.heatmap_with_boxes(_scaled_result(results[j], GALLERY_SIDE))
            tiles.append((_jpeg(picture, folder / f"review_{rank:03d}.jpg"), caption))
        return tiles
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def checkpoint_archive(checkpoint: str, folder: Path) -> str:
    """A zip of a checkpoint folder, for download; its config.json without the server's folders (a
    checkpoint trained from a path records it)."""
    checkpoint, base = Path(checkpoint), folder / Path(checkpoint).name
    with zipfile.ZipFile(f"{base}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in checkpoint.iterdir() if p.is_file()):
            if path.name == "config.json":
                archive.writestr(path.name, without_folders(path.read_text()))
            else:
                archive.write(path, path.name)
    return f"{base}.zip"


def epoch_progress(event: dict) -> tuple[float, str]:
    """A training event's share of its stage done and its words ('epoch 2/8', 'detector epoch 1/24'),
    for a progress bar: the Review and Fine-tune tabs show the same."""
    done = event["epoch"] - 1 + event.get("step", event.get("steps", 1)) / event.get("steps", 1)
    stage = "detector epoch" if event["stage"] == "detector" else "epoch"
    return done / event["epochs"], f"{stage} {event['epoch']}/{event['epochs']}"
