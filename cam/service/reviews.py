"""The Review tab's work: a dataset of class folders, the model's proposed boxes of each photo, a
person's corrections kept photo by photo, the reviewed boxes as COCO, and a retraining on them.

A review lives in a folder of its own, `<checkpoints>/.reviews/<id>/` (hidden: never listed as a
checkpoint), named by a random id the visitor's browser keeps, so that a reload, a second tab or a
restarted server resumes it:

    data/          the dataset, unpacked (photos are read from it as they are shown)
    pass/          the order pass (`cam.label.label`: predictions.jsonl, resumable)
    review.json    the model, the classes, each photo's upright size, the proposed boxes, the order
    saved.json     the reviewed boxes by photo, in the order they were saved, and the photo shown;
                   rewritten atomically at every save
    thumbs/        a thumbnail of each reviewed photo with its boxes

Boxes are kept in the upright photo's own pixels (x0, y0, x1, y1, label). The photo is shown as an
upright copy at most DISPLAY_SIDE pixels on its longer side, without any EXIF tag, its boxes scaled
to it and back: the annotator never sees a photo stored on its side (gradio-image-annotation's
issue #33 shifts boxes on large portrait photos). What the server keeps is bounded (`Reviews`):
at most `max_reviews` reviews, none older than `max_age` since its last change, never one a
training reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from ..data import dataset_root, read_photo, scan_dataset, unpack_zip
from ..export import read_log
from ..review import review_order
from .model_cache import ModelCache
from .outputs import _jpeg, _shrunk

log = logging.getLogger("cam.reviews")
DISPLAY_SIDE = 640  # the photo in the annotator: its longer side, in pixels
THUMB_SIDE = 128  # the reviewed photos' strip
STRIP = 24  # thumbnails in the strip, the latest first
REVIEW_ID = re.compile(r"[0-9a-f]{32}")
# The shown photo's file name: which photo of which review, and which of its saved boxes (`revision`).
PHOTO_FILE = re.compile(r"photo_(\d+)_([0-9a-f]{8})_(p|[0-9a-f]{8})\.jpe?g")
MAX_REVIEWS = int(os.environ.get("CAM_REVIEWS", 50))  # reviews kept on the server at once
MAX_AGE = float(os.environ.get("CAM_REVIEW_DAYS", 7)) * 86400  # seconds a review is kept after its last change
MAX_BYTES = float(os.environ.get("CAM_REVIEWS_GB", 10)) * 2**30  # the reviews' files at once (each unpacks its zip)
SWEEP_SECONDS = 600  # how often a running server sweeps the reviews (`Reviews.sweep_every`)
COCO_NAME = "reviewed_coco.json"
SIZE_FILE = "bytes.txt"  # a review's bytes once opened (`Reviews.sweep`)


def new_review_id() -> str:
    return secrets.token_hex(16)


def check_review_id(value) -> str:
    """`value` if it is a review id (32 lowercase hex digits: it names a folder), else a ValueError."""
    if not isinstance(value, str) or not REVIEW_ID.fullmatch(value):
        raise ValueError("this review's id is not valid; open the dataset again")
    return value


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` at once: a reader (or a restart) finds the old file or the new one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


class Reviews:
    """The reviews a server keeps, under `root`: each in a folder named by its id. At most
    `max_reviews` and `max_bytes` of files (the latest review excepted), the least recently changed
    removed first; none kept longer than `max_age` seconds after its last change; a leased one (a
    training reads it) never removed."""

    def __init__(self, root: Path, max_reviews: int = MAX_REVIEWS, max_age: float = MAX_AGE,
                 max_bytes: float = MAX_BYTES):
        self.root = Path(root)
        self.max_reviews, self.max_age, self.max_bytes = max(int(max_reviews), 1), float(max_age), float(max_bytes)
        self._leased: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards both dicts

    def folder(self, review_id) -> Path:
        return self.root / check_review_id(review_id)

    def exists(self, review_id) -> bool:
        try:
            return (self.folder(review_id) / "review.json").is_file()
        except ValueError:
            return False

    def secret(self) -> str:
        """The key the browser's copy of the review id is encrypted with: kept on disk, so that a
        restarted server still reads the ids browsers hold."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".secret"
        if not path.is_file():
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_hex(16))
        return path.read_text().strip()

    def lock(self, review_id) -> threading.Lock:
        """The lock that orders one review's changes (two tabs may save at once); kept only for a
        review that exists, so that ids sent back after they expired add nothing."""
        review_id = check_review_id(review_id)
        with self._lock:
            if not (self.root / review_id).is_dir():
                return threading.Lock()
            return self._locks.setdefault(review_id, threading.Lock())

    @contextlib.contextmanager
    def lease(self, review_id):
        """Inside, the review is never removed (a training or an order pass reads it)."""
        review_id = check_review_id(review_id)
        with self._lock:
            self._leased[review_id] = self._leased.get(review_id, 0) + 1
        try:
            yield self.folder(review_id)
        finally:
            with self._lock:
                self._leased[review_id] -= 1
                if not self._leased[review_id]:
                    del self._leased[review_id]
            self.touch(review_id)

    def touch(self, review_id) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.folder(review_id))

    def remove(self, review_id) -> bool:
        """Delete a review unless it is leased or a change to it is under way; whether it went."""
        review_id = check_review_id(review_id)
        with self._lock:
            if review_id in self._leased:
                return False
            lock = self._locks.setdefault(review_id, threading.Lock())
        if not lock.acquire(blocking=False):
            return False
        try:  # a save waiting on the lock then finds the review gone: "expired"
            shutil.rmtree(self.root / review_id, ignore_errors=True)
        finally:
            with self._lock:
                self._locks.pop(review_id, None)
            lock.release()
        return True

    def sweep(self, room: int = 0) -> None:
        """Remove the reviews unchanged for `max_age`, then the least recently changed beyond
        `max_reviews - room` (`room`: reviews about to open) or `max_bytes`."""
        if not self.root.is_dir():
            return
        now, found = time.time(), []
        for folder in self.root.iterdir():
            if not REVIEW_ID.fullmatch(folder.name):
                continue
            try:
                found.append((folder.stat().st_mtime, folder.name))
            except FileNotFoundError:
                continue
        found.sort()
        over = max(len(found) - max(self.max_reviews - room, 0), 0)
        sizes = {review_id: _size(self.root / review_id) for _, review_id in found}
        total = sum(sizes.values())
        for number, (changed, review_id) in enumerate(found):
            latest = number == len(found) - 1
            if changed < now - self.max_age or number < over or (total > self.max_bytes and not latest):
                if self.remove(review_id):
                    total -= sizes[review_id]
                else:
                    over += 1  # a leased one stays; the next oldest goes in its place

    def sweep_every(self, seconds: float = SWEEP_SECONDS) -> threading.Event:
        """Sweep now, then every `seconds` in a daemon thread, until the Event it gives is set or
        `root` is gone: a server that runs for weeks keeps its reviews bounded between openings.
        One thread a folder: a second call while it runs gives the same Event."""
        stop = threading.Event()

        def sweeping():
            while self.root.is_dir():
                try:
                    self.sweep()
                except Exception:  # the next sweep tries again
                    log.exception("sweeping %s", self.root)
                if stop.wait(seconds):
                    return

        self.root.mkdir(parents=True, exist_ok=True)
        with _SWEEPERS_LOCK:
            running = _SWEEPERS.get(self.root.resolve())
            if running is not None and running[0].is_alive():
                return running[1]
            thread = threading.Thread(target=sweeping, name="cam-reviews-sweep", daemon=True)
            _SWEEPERS[self.root.resolve()] = (thread, stop)
            thread.start()
        return stop


_SWEEPERS: dict[Path, tuple[threading.Thread, threading.Event]] = {}  # reviews folder -> its sweeping thread
_SWEEPERS_LOCK = threading.Lock()


def _size(folder: Path) -> int:
    """A review's bytes, as recorded when it opened (its unpacked dataset is nearly all of it; a
    sweep then reads no folder through), else counted."""
    with contextlib.suppress(OSError, ValueError):
        return int((folder / SIZE_FILE).read_text())
    return _bytes(folder)


def _bytes(folder: Path) -> int:
    """The size of the files under `folder` (those deleted meanwhile left out)."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total


# --- opening: the dataset, the order pass, a reviewed COCO file ----------------------------------

def open_review(reviews: Reviews, cache: ModelCache, choice: str, data, coco=None, progress=None) -> str:
    """A new review of `data` (a .zip or folder of class folders) with the model `choice`: its id.
    A checkpoint trained on the dataset's classes proposes its own boxes; any other model the box
    of its top class's map, named by the photo's folder. `coco` (a COCO file: ours, CVAT's, Label
    Studio's) marks its photos reviewed with its boxes. Refuses what the dataset or the file lacks
    in one line (ValueError); a refused review leaves nothing."""
    if data is None:
        raise ValueError("Upload a .zip with one folder of photos per class first.")
    model = cache.get(choice)
    reviews.sweep(room=1)
    review_id = new_review_id()
    folder = reviews.folder(review_id)
    try:
        with reviews.lease(review_id):  # before the folder exists: no sweep takes it half made
            folder.mkdir(parents=True)
            source = Path(data)
            if source.is_file():
                unpack_zip(source, folder / "data")
            elif source.is_dir():
                shutil.copytree(source, folder / "data")
            else:
                raise ValueError(f"{source.name}: no such file")
            root, classes, names = dataset_names(folder / "data")
            meta = {"version": 1, "root": root.relative_to(folder).as_posix(), "classes": classes, "round": 0,
                    "checkpoints": []}
            meta.update(order_pass(model, choice, folder, root, classes, names, progress))
            for name in set(names) - set(meta["sizes"]):
                (root / name).unlink()  # a retraining reads every photo of data/: none it cannot read
            reviewed = coco_reviewed(coco, meta) if coco else {}
            meta["order"] = [n for n in reviewed] + [n for n in meta["order"] if n not in reviewed]
            atomic_write(folder / "review.json", json.dumps(meta))
            first = next((n for n in meta["order"] if n not in reviewed), meta["order"][-1])
            _write_saved(folder, {"reviewed": reviewed, "current": first})
            for name, boxes in reviewed.items():
                _thumbnail(folder, meta, name, boxes)
            (folder / SIZE_FILE).write_text(str(_bytes(folder)))
    except BaseException:
        reviews.remove(review_id)
        raise
    return review_id


def dataset_names(data: Path) -> tuple[Path, list[str], list[str]]:
    """(the folder holding the class folders, the classes, each photo's name below it: 'apple/1.jpg',
    as `cam train` matches reviewed boxes)."""
    classes, items, _ = scan_dataset(data)
    root = dataset_root(data)
    return root, classes, [p.relative_to(root).as_posix() for p, _ in items]


def order_pass(model, choice: str, folder: Path, root: Path, classes: list[str], names: list[str], progress=None,
               out: str = "pass") -> dict:
    """Run `model` over every photo, a block at a time (`cam.label.label_block`: as `cam label`
    does, each photo's record a line of a log, only small records kept): each photo's upright
    size, its proposed boxes and the order to review them in (`review_order`). A model trained on
    `classes` gives its own boxes (its detector's, or its top class's map); any other the box of
    its top class's map, labelled with the photo's folder."""
    from dataclasses import replace

    from ..label import Item, label_block
    from ..localize import box_source
    from ..preprocess import check_input_size, inference_batch_size
    from ..settings import Settings

    matching = sorted(model.class_names) == sorted(classes)
    settings = Settings() if matching else Settings(boxes="cam", topk=1)
    detected = box_source(model, settings.boxes) != "cam"
    settings = replace(settings, topk=settings.topk or (len(model.class_names) if detected else 1))
    batch = inference_batch_size(model, check_input_size(settings.input_size, model))
    (folder / out).mkdir(exist_ok=True)
    logged = folder / out / "predictions.jsonl"
    with open(logged, "w") as handle:
        for start in range(0, len(names), batch):
            block = [Item(name, str(root / name), name) for name in names[start:start + batch]]
            handle.write("".join(line for _, line, failed in label_block(model, block, settings) if not failed))
            if progress:
                progress(min(start + batch, len(names)), len(names))
    known = set(names)
    sizes, proposals = {}, {}

    def records():
        for record in read_log(logged):
            name = record["file"]
            if name not in known:  # a loose file beside the class folders
                continue
            sizes[name] = [record["height"], record["width"]]
            predictions = record.get("predictions") or []
            if matching:
                proposals[name] = [[*box, p["label"]] for p in predictions for box in p["boxes"]]
            else:
                folder_class = PurePosixPath(name).parts[0]
                proposals[name] = [[*box, folder_class] for box in (predictions[0]["boxes"] if predictions else [])]
                record = {**record, "predictions": [{**p, "label": folder_class} for p in predictions[:1]]}
            yield record

    order = review_order(records())
    if not order:
        raise ValueError("none of the dataset's photos could be read")
    return {"model": choice, "matching": matching, "sizes": sizes, "proposals": proposals, "order": order,
            "unreadable": len(names) - len(order)}


def coco_reviewed(path, meta: dict) -> dict:
    """The photos a COCO file lists, as reviewed: {name: [[x0, y0, x1, y1, label], ...]} in the
    photos' upright pixels, in the file's order; a photo listed without a box has none. Read as
    `cam train --boxes-from` reads it (`read_coco_file`); a photo whose size in the file is not in
    the proportions of the upright photo (within 1 %) is refused in one line."""
    from ..train_detector import read_coco_file

    reviewed = {}
    for name, ((height, width), boxes) in read_coco_file(path, list(meta["sizes"]), meta["classes"]).items():
        ph, pw = meta["sizes"][name]
        if abs(height / width - ph / pw) > 0.01 * ph / pw:
            sideways = abs(height / width - pw / ph) <= 0.01 * pw / ph
            raise ValueError(f"{Path(path).name}: {name} is {width:g} x {height:g} pixels there but {pw} x {ph} "
                             f"upright{': the tool boxed the photo on its side' if sideways else ''}")
        reviewed[name] = []
        for x0, y0, x1, y1, label in boxes:
            box = [min(max(round(x0 * pw), 0), pw - 1), min(max(round(y0 * ph), 0), ph - 1)]
            reviewed[name].append([*box, min(max(round(x1 * pw), box[0] + 1), pw),
                                   min(max(round(y1 * ph), box[1] + 1), ph), label])
    return reviewed


# --- the review's state on disk --------------------------------------------------------------------

def load(reviews: Reviews, review_id) -> tuple[Path, dict, dict]:
    """(folder, review.json, saved.json) of a review, or a ValueError saying it is gone."""
    folder = reviews.folder(review_id)
    try:
        meta = json.loads((folder / "review.json").read_text())
        saved = json.loads((folder / "saved.json").read_text())
    except FileNotFoundError:
        raise ValueError("No review is open here (or it has expired): open a dataset (.zip) first.") from None
    return folder, meta, saved


def _write_saved(folder: Path, saved: dict) -> None:
    atomic_write(folder / "saved.json", json.dumps(saved))


def status(meta: dict, saved: dict, note: str = "") -> str:
    """'k of N reviewed', the photo shown and where it is in the order."""
    total, done, current = len(meta["order"]), len(saved["reviewed"]), saved["current"]
    where = meta["order"].index(current) + 1 if current in meta["order"] else 0
    state = "reviewed" if current in saved["reviewed"] else "proposed by the model"
    text = f"**{done} of {total} reviewed**. Photo {where} of {total} in the order: `{current}` (boxes {state})."
    if done == total:
        text = f"**All {total} of {total} reviewed**. Shown: `{current}`."
    if meta.get("unreadable"):
        text += f" {meta['unreadable']} photos could not be read and are left out."
    return f"{note} {text}".strip()


def photo_view(reviews: Reviews, review_id, out: Path, note: str = "") -> tuple[dict, str]:
    """The annotator's value for the photo shown (`saved["current"]`): an upright copy at most
    DISPLAY_SIDE pixels on its longer side (a JPEG in `out`, named by the photo's number and the
    review), its boxes (reviewed, else proposed) scaled to it; and the status line."""
    folder, meta, saved = load(reviews, review_id)
    name = saved["current"]
    boxes = saved["reviewed"].get(name, meta["proposals"].get(name, []))
    image, size = _display_photo(folder, meta, name)
    path = _jpeg(image, out / photo_file(meta, saved, review_id, name))
    shown = [dict(zip(("xmin", "ymin", "xmax", "ymax"), _scaled(box[:4], size, image.shape[:2])), label=box[4])
             for box in boxes]
    return {"image": path, "boxes": shown}, status(meta, saved, note)


def _display_photo(folder: Path, meta: dict, name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The photo upright, at most DISPLAY_SIDE on its longer side (a large JPEG decoded reduced),
    and its own upright (height, width)."""
    size = tuple(meta["sizes"][name])
    cover = math.ceil(DISPLAY_SIDE * min(size) / max(size))
    photo = read_photo(folder / meta["root"] / name, cover=cover)
    if tuple(photo.size) != size:
        raise ValueError(f"{name}: the photo changed since the review opened")
    height, width = display_size(size)
    image = photo.pixels
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image, size


def display_size(size) -> tuple[int, int]:
    """The (height, width) a photo of upright `size` is shown at: at most DISPLAY_SIDE on its longer side."""
    scale = min(1.0, DISPLAY_SIDE / max(size))
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))) if scale < 1 else tuple(size)


def _scaled(box, size, to) -> list[int]:
    """A box (x0, y0, x1, y1) in an image of `size` (h, w) in the same image at `to` (h, w)."""
    sy, sx = to[0] / size[0], to[1] / size[1]
    return [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]


def photo_file(meta: dict, saved: dict, review_id: str, name: str) -> str:
    """The file name photo `name` is shown by (`PHOTO_FILE`): its number in the review, the review,
    the boxes shown (`revision`)."""
    return f"photo_{sorted(meta['sizes']).index(name)}_{review_id[:8]}_{revision(saved, name)}.jpg"


def revision(saved: dict, name: str) -> str:
    """Which boxes of photo `name` are shown: 'p' (the proposed ones), else a short hash of its
    saved boxes; a save drawn on other boxes than the saved ones was drawn in a stale tab."""
    if name not in saved["reviewed"]:
        return "p"
    return hashlib.sha1(json.dumps(saved["reviewed"][name]).encode()).hexdigest()[:8]


class SavedElsewhere(ValueError):
    """A save drawn on boxes of a photo that another tab has saved since (`photo_of`)."""

    def __init__(self, name: str):
        super().__init__(f"Not saved: `{name}` was saved in another tab since; shown again with those boxes.")
        self.name = name


def photo_of(value, review_id, meta: dict, saved: dict) -> str:
    """The photo an annotator value was drawn on: named by its picture's file (`photo_view`), or
    the one shown where the picture is not one of ours (an API caller's own file). SavedElsewhere
    where that photo's saved boxes changed since it was shown."""
    shown = Path(str((value or {}).get("image") or "")).name
    found = PHOTO_FILE.fullmatch(shown)
    if not found:
        return saved["current"]
    if found.group(2) != review_id[:8]:
        raise ValueError("These boxes were drawn on a photo of an earlier review; reload the page")
    names = sorted(meta["sizes"])
    number = int(found.group(1))
    if number >= len(names):
        raise ValueError("These boxes were drawn on a photo this review does not hold; reload the page")
    if found.group(3) != revision(saved, names[number]):
        raise SavedElsewhere(names[number])
    return names[number]


def shows_current(reviews: Reviews, review_id, value) -> bool:
    """Whether an annotator `value` shows the review's current photo with its current boxes
    (`photo_file`): then a new value would only wipe the person's unsaved edits."""
    _, meta, saved = load(reviews, review_id)
    return Path(str((value or {}).get("image") or "")).name == photo_file(meta, saved, review_id, saved["current"])


def checked_boxes(value, name: str, meta: dict, proposed: list) -> list[list]:
    """The annotator's boxes in the photo's own upright pixels [x0, y0, x1, y1, label]; a box
    outside the shown photo, of no size or of a class the dataset lacks is refused in one line. A
    box left as shown keeps its exact pixels; one without a label takes the photo's folder."""
    size = tuple(meta["sizes"][name])
    shown = display_size(size)
    if (value or {}).get("orientation") not in (None, 0):
        raise ValueError("the photo is turned in the editor: turn it back upright before saving")
    untouched = {(*_scaled(b[:4], size, shown), b[4]): b for b in proposed}
    boxes = []
    for box in (value or {}).get("boxes") or []:
        try:  # as the annotator sends it: in its canvas's pixels, `scaleFactor` times the picture's
            scale = float(box.get("scaleFactor") or 1)
            x0, y0, x1, y1 = (round(float(box[k]) / scale) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
            raise ValueError("a box needs the numbers xmin, ymin, xmax and ymax") from None
        label = str(box.get("label") or PurePosixPath(name).parts[0])
        if label not in meta["classes"]:
            raise ValueError(f"the class {label!r} is not one of the dataset's: {', '.join(meta['classes'])}")
        if not (0 <= x0 and 0 <= y0 and x1 <= shown[1] and y1 <= shown[0]):
            raise ValueError(f"a box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the photo "
                             f"({shown[1]} x {shown[0]} pixels as shown)")
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"a box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no size")
        key = (round(x0), round(y0), round(x1), round(y1), label)
        if key in untouched:
            boxes.append(list(untouched[key]))
            continue
        sy, sx = size[0] / shown[0], size[1] / shown[1]
        box = [min(round(x0 * sx), size[1] - 1), min(round(y0 * sy), size[0] - 1)]
        boxes.append([*box, max(min(round(x1 * sx), size[1]), box[0] + 1), max(min(round(y1 * sy), size[0]), box[1] + 1),
                      label])
    return boxes


def save(reviews: Reviews, review_id, value) -> str:
    """Keep the annotator's boxes as the reviewed boxes of the photo they were drawn on (at once,
    atomically) and show the next photo to review; the name of the photo kept. Boxes drawn in a
    stale tab (SavedElsewhere) are not kept: that photo is shown, with the boxes saved since."""
    with reviews.lock(review_id):
        folder, meta, saved = load(reviews, review_id)
        try:
            name = photo_of(value, review_id, meta, saved)
        except SavedElsewhere as exc:
            _write_saved(folder, {**saved, "current": exc.name})
            raise
        proposed = saved["reviewed"].get(name, meta["proposals"].get(name, []))
        boxes = checked_boxes(value, name, meta, proposed)
        reviewed = {n: b for n, b in saved["reviewed"].items() if n != name}
        reviewed[name] = boxes  # the latest saved last: the strip shows it first
        _thumbnail(folder, meta, name, boxes)
        _write_saved(folder, {"reviewed": reviewed, "current": _next(meta["order"], reviewed, name)})
    return name


def _next(order: list[str], reviewed: dict, after: str) -> str:
    """The first photo after `after` in the order not yet reviewed, else the first such from the
    start; with every photo reviewed, `after` itself."""
    start = order.index(after) + 1 if after in order else 0
    return next((n for n in order[start:] + order[:start] if n not in reviewed), after)


def move(reviews: Reviews, review_id, step: int = 0, to: str | None = None) -> None:
    """Show another photo: `step` places on in the order (skip: 1, back: -1), or the photo `to`."""
    with reviews.lock(review_id):
        folder, meta, saved = load(reviews, review_id)
        order = meta["order"]
        if to is not None:
            if to not in meta["sizes"]:
                raise ValueError(f"{to!r} is not a photo of this review")
            current = to
        elif step > 0:
            current = _next(order, {**saved["reviewed"], saved["current"]: None}, saved["current"])
        else:
            current = order[max(order.index(saved["current"]) + step, 0)]
        _write_saved(folder, {**saved, "current": current})


def _thumbnail(folder: Path, meta: dict, name: str, boxes: list) -> None:
    image, size = _display_photo(folder, meta, name)
    image, _ = _shrunk(image, THUMB_SIDE)
    image = np.array(image)  # a copy to draw on (a small photo's pixels are read-only)
    for box in boxes:
        x0, y0, x1, y1 = _scaled(box[:4], size, image.shape[:2])
        cv2.rectangle(image, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), (255, 200, 0), 2)
    (folder / "thumbs").mkdir(exist_ok=True)
    number = sorted(meta["sizes"]).index(name)
    _jpeg(image, folder / "thumbs" / f"{number}.jpg")


def strip(reviews: Reviews, review_id, out: Path) -> list[tuple[str, str]]:
    """The latest STRIP reviewed photos, the latest first: (thumbnail in `out`, the photo's name)."""
    folder, meta, saved = load(reviews, review_id)
    names = sorted(meta["sizes"])
    tiles = []
    for name in list(saved["reviewed"])[::-1][:STRIP]:
        number = names.index(name)
        source = folder / "thumbs" / f"{number}.jpg"
        if source.is_file():
            target = out / f"thumb_{number}.jpg"
            shutil.copyfile(source, target)
            tiles.append((str(target), name))
    return tiles


# --- the reviewed boxes as COCO -------------------------------------------------------------------

def coco(meta: dict, saved: dict) -> dict:
    """Standard COCO of the reviewed photos: images (id, file_name, width, height), categories (the
    classes, ids from 1), annotations (bbox [x, y, w, h] in upright pixels, area, iscrowd 0). A photo
    reviewed with no box is listed with no annotation: `cam train --boxes-from` learns it as
    background; CVAT and Label Studio import it as a photo without boxes."""
    ids = {name: number for number, name in enumerate(meta["classes"], start=1)}
    images, annotations = [], []
    for image_id, (name, boxes) in enumerate(saved["reviewed"].items(), start=1):
        height, width = meta["sizes"][name]
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for x0, y0, x1, y1, label in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": ids[label],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                "segmentation": []})
    return {"info": {"description": "boxes reviewed in the CAM localizer's Review tab"}, "images": images,
            "categories": [{"id": i, "name": name, "supercategory": ""} for name, i in ids.items()],
            "annotations": annotations}


def write_coco(reviews: Reviews, review_id, out: Path) -> str:
    """The reviewed boxes as a COCO file in `out` (any moment: what was saved so far, before the
    first save the classes alone)."""
    _, meta, saved = load(reviews, review_id)
    path = out / COCO_NAME
    atomic_write(path, json.dumps(coco(meta, saved), indent=1))
    return str(path)


# --- retraining with the reviewed boxes ------------------------------------------------------------

def retrain_updates(reviews: Reviews, cache: ModelCache, review_id, epochs=None, detector_epochs=None,
                    mode: str = "head"):
    """Train the classifier and the detector on the review's dataset, the detector from the
    reviewed boxes and the teacher's for the rest (`cam train --boxes-from`), in a process of its
    own (`training_updates`), yielding its progress; then order the photos not yet reviewed by the
    new model, which proposes their boxes. The review is leased throughout: it never expires under
    a training. Ends with {'stage': 'done', 'checkpoint', 'metrics', ...}."""
    from ..train import DEFAULT_EPOCHS, DEFAULT_LR
    from .jobs import training_updates

    with reviews.lease(review_id):
        folder, meta, saved = load(reviews, review_id)
        if not saved["reviewed"]:
            raise ValueError("No photo is reviewed yet: save the boxes of a few photos first.")
        boxes = folder / COCO_NAME
        atomic_write(boxes, json.dumps(coco(meta, saved)))
        choice = meta["model"]
        spec = str(cache.checkpoints / choice) if choice in cache.choices() and choice != "default" else choice
        summary = None
        for event in training_updates(folder / meta["root"], mode, epochs or DEFAULT_EPOCHS[mode], DEFAULT_LR[mode],
                                      0.2, out=cache.checkpoints, model_spec=spec, detector=True,
                                      boxes_from=str(boxes), detector_epochs=detector_epochs):
            if event["stage"] == "done":
                summary = event
                break
            yield event
        name = Path(summary["checkpoint"]).name
        yield {"stage": "ordering the photos by the new model"}
        model = cache.get(name)
        root, classes, names = dataset_names(folder / "data")
        number = meta.get("round", 0) + 1
        fresh = order_pass(model, name, folder, root, classes, names, out=f"pass_{number}")
        with reviews.lock(review_id):
            folder, meta, saved = load(reviews, review_id)
            reviewed = saved["reviewed"]
            meta.update(fresh, round=number, checkpoints=[*meta.get("checkpoints", []), name])
            meta["order"] = list(reviewed) + [n for n in fresh["order"] if n not in reviewed]
            atomic_write(folder / "review.json", json.dumps(meta))
            current = saved["current"]  # still unreviewed: it stays, with what the person is doing on it
            if current in reviewed and len(reviewed) < len(meta["order"]):
                current = _next(meta["order"], reviewed, meta["order"][-1])  # the first left in the new order
            _write_saved(folder, {"reviewed": reviewed, "current": current})
        shutil.rmtree(folder / f"pass_{number - 1}" if number > 1 else folder / "pass", ignore_errors=True)
        yield summary


def retrain_status(summary: dict) -> str:
    """The line that ends a retraining: the new checkpoint, its validation accuracy and the reviewed
    photos' AP50 of each box source (or why it was not measured), as the tab shows it."""
    from ..train_detector import MIN_REVIEWED_TO_CHOOSE

    ap50 = summary.get("reviewed_ap50")
    figures = ("AP50 on your reviewed photos (each scored by a model that did not learn it): "
               + ", ".join(f"{source} {value:.2f}" for source, value in ap50.items())
               + (f" (it now gives {summary['boxes']})" if summary.get("boxes") else "")) if ap50 else \
        f"AP50 needs {MIN_REVIEWED_TO_CHOOSE} reviewed photos, some with boxes"
    return (f"Done: **{Path(summary['checkpoint']).name}**, validation accuracy "
            f"{summary['metrics']['val_accuracy']:.1%}; {figures}. It is now selected in the Localize tab; the "
            "photos left to review come in its order.")
