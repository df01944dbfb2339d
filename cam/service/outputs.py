"""What a request gets back: screen-size pictures, tables and download files of a Result, in
per-request folders that expire."""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from .. import render
from ..boxes import scale_box
from ..data import load_image, private_temp_folder, remove_orphaned_temp_folders
from ..localize import Result, localize
from .model_cache import ModelCache


GALLERY_SIDE = 320  # gallery tiles are thumbnails: less to encode and send
DISPLAY_SIDE = 1600  # the on-screen overlay and boxes pictures; downloads keep the photo's own size


def views(result: Result, opacity: float, folder: Path):
    """The app's outputs for a Result, pictures as JPEG files in `folder` (a fresh one per request):
    overlay, boxes picture, gallery tiles with captions, score table, JSON.

    Files, not arrays: Gradio caches an array under its content hash and rewrites that file on
    every request, so identical answers to concurrent requests could be read half-written; a
    file path is copied into its cache atomically.
    """
    shown = _scaled_result(result, DISPLAY_SIDE)
    overlay = _jpeg(render.top_overlay(shown, opacity), folder / "overlay.jpg")
    boxes = _jpeg(render.draw_boxes(shown.image, shown), folder / "boxes.jpg")
    tiles = [(_jpeg(tile, folder / f"map_{rank + 1}.jpg"), caption)
             for rank, (tile, caption) in enumerate(render.gallery(_scaled_result(shown, GALLERY_SIDE), opacity))]
    return overlay, boxes, tiles, _score_table(result), result.to_dict()


LIVE_SIDE = 800  # webcam frames are localized at most this size on their longer side: a 1280x720 camera keeps the frame rate


def live_frame(cache: ModelCache, choice: str, frame, topk: int = 3, opacity: float = 0.5) -> tuple[str, str]:
    """One webcam frame (array or encoded bytes) localized at the recommended setting: the top
    class's heatmap with every box, as a JPEG data URL (a stream of frames writes no file), and a
    caption naming the top classes. Unreadable frames raise the ValueError of `load_image`."""
    model = cache.get(choice)
    image, _ = _shrunk(load_image(frame), LIVE_SIDE)
    result = localize(model, image, topk=min(int(topk), len(model.class_names)))  # the recommended setting
    picture = _jpeg_bytes(render.heatmap_with_boxes(result, opacity), quality=80)
    caption = " · ".join(f"**{p.label}** {p.score:.2f}" for p in result.predictions)
    return "data:image/jpeg;base64," + base64.b64encode(picture).decode("ascii"), caption


def _score_table(result: Result) -> list[list]:
    """Rows of rank, class, score and boxes (JSON, in the photo's pixels; a detector's box followed
    by its score)."""
    rows = []
    for rank, p in enumerate(result.predictions):
        boxes = [list(b) for b in p.boxes] if p.box_scores is None else [[*b, s] for b, s in zip(p.boxes, p.box_scores)]
        rows.append([rank + 1, p.label, round(p.score, 4), json.dumps(boxes)])
    return rows


def reboxed(result: Result, threshold: float, all_regions: bool) -> Result:
    """The result boxed at another map threshold (no network run): the maps' boxes anew, merged again
    with the detector's where it gives both; the detector's alone, which the threshold does not
    cut, stay as they are."""
    return result if result.box_source == "detector" else result.with_threshold(threshold, all_regions)


def compare_views(result: Result, folder: Path, name: str, opacity: float = 0.5):
    """One side of a comparison: the top class's heatmap with every box drawn over it (screen-sized
    JPEG in `folder`) and the table of classes, scores and boxes."""
    picture = render.heatmap_with_boxes(_scaled_result(result, DISPLAY_SIDE), opacity)
    return _jpeg(picture, folder / f"{name}.jpg"), _score_table(result)


def _jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the picture")
    return data.tobytes()


def _jpeg(rgb: np.ndarray, path: Path) -> str:
    path.write_bytes(_jpeg_bytes(rgb))
    return str(path)


def compact(result: Result) -> Result:
    """The Result without the full-size maps its predictions have upsampled so far (it is kept per
    browser session: a 1 MP photo's five maps are 20 MB; read again, they come back bit-identical)."""
    return replace(result, predictions=[replace(p) for p in result.predictions])


def _shrunk(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """`image` at most `side` pixels on its longer side (area-averaged; unchanged if already) and
    the scale it was shrunk by (at most 1)."""
    scale = min(1.0, side / max(image.shape[:2]))
    if scale == 1:
        return image, scale
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _scaled_result(result: Result, side: int) -> Result:
    """A copy of `result` for pictures on screen: its working image, at most `side` pixels on its
    longer side, the maps upsampled from their feature-resolution versions straight to that size,
    the boxes scaled to it. A 12 MP photo's pictures then are made, encoded and sent at screen size."""
    image, _ = _shrunk(result.working_image, side)
    size = image.shape[:2]
    if size == result.size:
        return result
    predictions = [replace(p, size=size, boxes=[scale_box(b, result.size, size) for b in p.boxes])
                   for p in result.predictions]
    return replace(result, working_image=image, size=size, source=None, predictions=predictions)


class OutputFolders:
    """Per-request folders for output files under one private temporary root. A daemon thread
    removes folders unchanged for `max_age` seconds (by then Gradio has copied what it serves), so
    disk use returns to nothing once requests stop; a folder under `lease` is never removed."""

    def __init__(self, max_age: float = 600):
        remove_orphaned_temp_folders("cam-outputs-")  # left by servers that were stopped or killed
        self.root = private_temp_folder("cam-outputs-")
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)  # a clean stop leaves nothing behind
        self.max_age = max_age
        self._leased: set[Path] = set()
        self._lock = threading.Lock()  # guards `_leased` against the sweep
        threading.Thread(target=self._sweep_forever, name="cam-outputs-sweep", daemon=True).start()

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root))

    @contextlib.contextmanager
    def lease(self):
        """A new folder that the sweep leaves alone while a job writes into it, however long it runs
        (a collection's VOC files and zip, a review), and that then has `max_age` seconds from the
        job's end for Gradio to copy what the job returned."""
        folder = self.new()
        with self._lock:
            self._leased.add(folder)
        try:
            yield folder
        finally:
            with self._lock:
                self._leased.discard(folder)
                if folder.exists():
                    os.utime(folder)

    def sweep(self) -> None:
        """Delete the unleased folders older than `max_age`. They are chosen under the lock and deleted
        after it, so a job asking for a lease never waits for a large deletion; a chosen folder
        cannot be leased meanwhile, since a lease always takes a new folder."""
        now = time.time()
        with self._lock:
            expired = [old for old in self.root.iterdir()
                       if old not in self._leased and _older_folder(old, now - self.max_age)]
        for old in expired:
            shutil.rmtree(old, ignore_errors=True)

    def _sweep_forever(self) -> None:
        while self.root.exists():
            time.sleep(min(max(self.max_age / 4, 0.1), 30))
            self.sweep()


def _older_folder(path: Path, moment: float) -> bool:
    """Whether `path` is a folder last changed before `moment` (one deleted meanwhile is not)."""
    try:
        return path.is_dir() and path.stat().st_mtime < moment
    except FileNotFoundError:
        return False


def write_downloads(result: Result, folder: Path, opacity: float) -> list[str]:
    """At the photo's own size: overlay PNG, boxes PNG, boxes JSON and the raw maps (.npy, k x H x W
    float32; k may be 0) of a Result."""
    paths = [folder / name for name in ("overlay.png", "boxes.png", "boxes.json", "maps.npy")]
    image = result.image  # the photo at its own size, decoded again if it was localized reduced
    render.save_png(render.top_overlay(result, opacity, image), paths[0])
    render.save_png(render.draw_boxes(image, result), paths[1])
    paths[2].write_text(json.dumps(result.to_dict(), indent=2))
    np.save(paths[3], np.array([p.cam for p in result.predictions], np.float32).reshape(-1, *result.size))
    return [str(p) for p in paths]
