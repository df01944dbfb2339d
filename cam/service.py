"""What the web app needs from the package: a shared model cache, the pictures and tables of a
Result, and download files. Kept here so that app.py holds UI only."""

from __future__ import annotations

import atexit
import base64
import collections
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from . import render
from .boxes import check_threshold, scale_box
from .data import MAX_ARCHIVE_FILES, load_image, private_temp_folder, read_photo, remove_orphaned_temp_folders
from .export import read_log
from .localize import Result, localize
from .settings import RECOMMENDED, Settings
from .models import DEFAULT_SPEC, CamModel, check_hub_spec, load_model
from .runtime import check_runtime, glibc_mallopt

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = Path(os.environ.get("CAM_CHECKPOINTS", ROOT / "checkpoints"))
EXAMPLES = ROOT / "examples"
GALLERY_SIDE = 320  # gallery tiles are thumbnails: less to encode and send
DISPLAY_SIDE = 1600  # the on-screen overlay and boxes pictures; downloads keep the photo's own size


def is_checkpoint(folder: Path) -> bool:
    """A complete checkpoint folder: visible name, both files present (half-written ones are hidden)."""
    return (folder.is_dir() and not folder.name.startswith(".")
            and (folder / "config.json").is_file() and (folder / "model.safetensors").is_file())


class ModelCache:
    """Models by menu choice, each loaded once, lazily, and shared by all requests.

    Menu choices are 'default' and the names of complete checkpoint folders under `checkpoints`,
    kept once loaded. A typed 'timm:NAME' or 'torchvision:NAME' loads with its hub weights (where
    the machine reaches the hub, as on Spaces) into a small LRU of `hub_models`, since a visitor
    can name any of hundreds. Anything else, a path included, is refused. Models load on `runtime`
    (default: the CAM_RUNTIME environment variable, else "auto").
    """

    def __init__(self, checkpoints: Path = CHECKPOINTS, device: str | None = None, hub_models: int = 2,
                 runtime: str | None = None):
        self.checkpoints = Path(checkpoints)
        self.device = device
        self.runtime = check_runtime(runtime or os.environ.get("CAM_RUNTIME", "auto"))  # what runs the networks
        self.hub_models = hub_models
        self._models: collections.OrderedDict[tuple[str, int], CamModel] = collections.OrderedDict()
        self._lock = threading.Lock()  # guards the dict
        self._loading = threading.Lock()  # one load at a time; cached models are served meanwhile

    def choices(self) -> list[str]:
        found = sorted(p.name for p in self.checkpoints.iterdir() if is_checkpoint(p)) if self.checkpoints.is_dir() else []
        return [DEFAULT_SPEC] + found

    def get(self, choice: str) -> CamModel:
        choice = str(choice or "").strip()
        listed = choice in self.choices()
        if not listed and not choice.startswith(("timm:", "torchvision:")):
            raise ValueError(f"unknown model {choice!r}: choose 'default' or a checkpoint listed in the menu, "
                             "or type timm:NAME or torchvision:NAME")
        key = self._key(choice)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            if choice == DEFAULT_SPEC:
                model = load_model(DEFAULT_SPEC, device=self.device, runtime=self.runtime)
            elif listed:
                model = load_model(str(self.checkpoints / choice), device=self.device, runtime=self.runtime)
            else:
                check_hub_spec(choice)
                _check_reachable(HUB_HOSTS[choice.partition(":")[0]], choice)
                model = load_model(choice, pretrained=True, device=self.device, runtime=self.runtime)
            with self._lock:
                for old in [k for k in self._models if k[0] == choice]:  # a checkpoint since written again
                    del self._models[old]
                self._models[key] = model
                hub = [k for k in self._models if k[0].startswith(("timm:", "torchvision:"))]
                for old in hub[:max(len(hub) - self.hub_models, 0)]:  # least recently used first
                    del self._models[old]
            return model

    def _key(self, choice: str) -> tuple[str, int]:
        """A checkpoint is known by its name and its weights file's modification time: one trained again
        under a name that was deleted is loaded afresh."""
        weights = self.checkpoints / choice / "model.safetensors"
        return choice, weights.stat().st_mtime_ns if choice != DEFAULT_SPEC and weights.is_file() else 0


HUB_HOSTS = {"timm": "huggingface.co", "torchvision": "download.pytorch.org"}  # where typed models' weights come from


def _check_reachable(host: str, choice: str) -> None:
    """A quick look for the hub before a download, whose own retries take a minute to fail offline."""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        raise ValueError(f"{choice!r} needs its pretrained weights from {host}, which this server cannot reach; "
                         "choose 'default' or a fine-tuned checkpoint from the menu") from None


def analyze(cache: ModelCache, choice: str, image, settings: Settings) -> Result:
    """Run the model once on `image` (a path or array) at `settings`, its top-k at most the model's
    class count, and keep every map for later re-boxing."""
    model = cache.get(choice)
    if settings.topk is not None:
        settings = replace(settings, topk=min(settings.topk, len(model.class_names)))
    return localize(model, image, settings)


def views(result: Result, opacity: float, folder: Path):
    """The app's outputs for a Result, pictures as JPEG files in `folder` (a fresh one per request):
    overlay, boxes picture, gallery tiles with captions, score table, JSON.

    Files, not arrays: Gradio caches an array under its content hash and rewrites that file on
    every request, so identical answers to concurrent requests could be read half-written; a
    file path is copied into its cache atomically.
    """
    shown = _scaled_result(result, DISPLAY_SIDE)
    overlay = _jpeg(render.overlay(shown.image, shown.predictions[0].cam, opacity), folder / "overlay.jpg")
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
    """Rows of rank, class, score and boxes (JSON, in the photo's pixels)."""
    return [[rank + 1, p.label, round(p.score, 4), json.dumps([list(b) for b in p.boxes])]
            for rank, p in enumerate(result.predictions)]


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
    removes folders older than `max_age` seconds (by then Gradio has copied what it serves), so
    disk use returns to nothing once requests stop."""

    def __init__(self, max_age: float = 600):
        remove_orphaned_temp_folders("cam-outputs-")  # left by servers that were stopped or killed
        self.root = private_temp_folder("cam-outputs-")
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)  # a clean stop leaves nothing behind
        self.max_age = max_age
        threading.Thread(target=self._sweep_forever, name="cam-outputs-sweep", daemon=True).start()

    def new(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root))

    def sweep(self) -> None:
        now = time.time()
        for old in self.root.iterdir():
            try:
                if old.is_dir() and now - old.stat().st_mtime > self.max_age:
                    shutil.rmtree(old, ignore_errors=True)
            except FileNotFoundError:
                pass

    def _sweep_forever(self) -> None:
        while self.root.exists():
            time.sleep(max(self.max_age / 4, 1))
            self.sweep()


def write_downloads(result: Result, folder: Path, opacity: float) -> list[str]:
    """At the photo's own size: overlay PNG, boxes PNG, boxes JSON and the raw maps (.npy, k x H x W
    float32) of a Result."""
    paths = [folder / name for name in ("overlay.png", "boxes.png", "boxes.json", "maps.npy")]
    image = result.image  # the photo at its own size, decoded again if it was localized reduced
    render.save_png(render.overlay(image, result.predictions[0].cam, opacity), paths[0])
    render.save_png(render.draw_boxes(image, result), paths[1])
    paths[2].write_text(json.dumps(result.to_dict(), indent=2))
    np.save(paths[3], np.stack([p.cam for p in result.predictions]))
    return [str(p) for p in paths]


SHEET_PHOTOS = 48  # photos shown on the contact sheet; the download holds every photo's boxes


def label_collection(cache: ModelCache, choice: str, files, folder: Path, topk: int = 1, min_score: float = 0.0,
                     threshold: float = RECOMMENDED.threshold, classes: str = "", progress=None) -> tuple[list, dict, str]:
    """Label uploaded photos and zips (`cam.label.label`, the recommended setting) into `folder`:
    the contact sheet (boxed thumbnails of the first SHEET_PHOTOS photos, captioned), the run's
    summary with the first errors, and a zip of the COCO, YOLO and VOC files, their photos and the
    logs. `classes`, comma-separated names (empty: all), are the classes boxed and exported."""
    from types import SimpleNamespace

    from .label import label

    files = [str(f) for f in files or []]
    if not files:
        raise ValueError("Add photos or a .zip of photos first.")
    if len(files) > MAX_ARCHIVE_FILES:
        raise ValueError(f"{len(files):,} files is over the limit of {MAX_ARCHIVE_FILES:,}; upload a zip of fewer photos")
    model = cache.get(choice)
    chosen = tuple(name.strip() for name in str(classes or "").split(",") if name.strip()) or None
    try:
        settings = Settings(topk=min(int(topk), len(chosen or model.class_names)), min_score=float(min_score),
                            threshold=check_threshold(threshold), classes=chosen)
    except (TypeError, ValueError):
        raise ValueError("top-k, minimum score and threshold must be numbers") from None
    sheet = []

    def add_to_sheet(record: dict, item) -> None:
        if "error" in record or len(sheet) >= SHEET_PHOTOS:
            return
        photo = read_photo(item.path)
        image, _ = _shrunk(photo.pixels, GALLERY_SIDE)
        shown = [SimpleNamespace(label=p["label"], score=p["score"],
                                 boxes=[scale_box(b, photo.size, image.shape[:2]) for b in p["boxes"]])
                 for p in record["predictions"]]
        top = record["predictions"][0] if record["predictions"] else None
        caption = f"{record['file']}: {top['label']} {top['score']:.2f}" if top else f"{record['file']}: no class above the minimum score"
        sheet.append((_jpeg(render.draw_boxes(image, shown), folder / f"sheet_{len(sheet):03d}.jpg"), caption))

    def report(done: int, total: int) -> None:
        os.utime(folder)  # a long run's folder stays fresh for OutputFolders' sweep, which goes by age
        if progress:
            progress(done, total)

    out = folder / "labels"
    summary = label(files, out, model=model, settings=settings, progress=report, on_record=add_to_sheet)
    summary["first_errors"] = [f"{e['file']}: {e['error']}" for e in itertools.islice(read_log(out / "errors.jsonl"), 5)]
    portable_data_yaml(out / "yolo" / "data.yaml")
    archive = shutil.make_archive(str(folder / "labels"), "zip", root_dir=out)  # links are followed: photos included
    return sheet, summary, archive


def portable_data_yaml(path: Path) -> None:
    """Empty the `path` of a YOLO data.yaml that travels in a download: Ultralytics then takes the
    folder the file is in as the dataset root, wherever it is unpacked."""
    if not path.is_file():
        return
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "path": ""}, allow_unicode=True, sort_keys=False))


def training_updates(data, mode: str, epochs, lr, val_split, out: Path = CHECKPOINTS, model_spec: str = DEFAULT_SPEC):
    """Run a fine-tuning job in its own process (`python -m cam train`) and yield its progress
    dicts as they come, then {'stage': 'done', **summary}. Its own process: the server's memory is
    untouched when it ends, and inference never waits on it. A failed job raises a ValueError with
    its one-line message; closing the generator (the user left) stops the job, and a stopped job
    writes no checkpoint."""
    try:
        settings = ["--mode", str(mode), "--epochs", str(int(epochs)), "--lr", str(float(lr)),
                    "--val-split", str(float(val_split))]
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
            event = json.loads(line)
            if "checkpoint" in event:
                summary = event
            else:
                yield event
        job.wait()
        drain.join(timeout=10)
        if job.returncode != 0 or summary is None:
            reported = [e.rsplit("error: ", 1)[1].strip() for e in errors if "error: " in e]
            raise ValueError(reported[-1] if reported else f"training stopped (exit code {job.returncode})")
        yield {"stage": "done", **summary}
    finally:
        if job.poll() is None:
            job.terminate()
            job.wait(timeout=30)


def validation_review(cache: ModelCache, choice: str, data, folder: Path, limit: int = SHEET_PHOTOS) -> list:
    """What a fine-tuned checkpoint learned: its validation photos (the split its training made,
    rebuilt from `data`, the same zip or folder) with the new model's heatmap and box, captioned with
    the true and the predicted class; misclassified photos first, then class by class. At most
    `limit` (picture, caption) tiles, pictures as JPEGs in `folder`."""
    from .data import scan_dataset, unpack_zip
    from .localize import localize_batch
    from .train import stratified_split

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
    """A zip of a checkpoint folder, for download."""
    base = folder / Path(checkpoint).name
    return shutil.make_archive(str(base), "zip", root_dir=checkpoint)


def private_gradio_cache() -> None:
    """Point Gradio's file cache (uploads, answers) at a private temp folder removed at exit, unless
    GRADIO_TEMP_DIR is set. Gradio's own cleanup at shutdown left them in the shared /tmp/gradio
    whenever clients were still connected; folders of killed servers go when the next one starts.
    Call before building the UI."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return
    remove_orphaned_temp_folders("cam-gradio-")
    folder = private_temp_folder("cam-gradio-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does): with many request threads the
    default of 8 per core lets a server's resident memory creep through fragmentation."""
    if os.environ.get("MALLOC_ARENA_MAX") is None:
        glibc_mallopt(-8, arenas)  # M_ARENA_MAX
