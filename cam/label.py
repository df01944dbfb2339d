"""Boxes for whole photo collections: files, folders and zips -> blocks of photos -> `localize_batch`
-> an append-only log -> COCO, YOLO and Pascal VOC files (`cam.export`).

The log (`predictions.jsonl`, `errors.jsonl` in the output folder) is the run's record: a block's
lines are appended and flushed together, so a run killed at any moment resumes with the same
command, skipping what is logged. Photos are cut into blocks at fixed positions of the sorted
input list and each block is one forward pass, so a resumed run computes every photo in the same
batch as an uninterrupted one, bit for bit (a batch's bits depend on its other photos). Engines:
"local" (this process; a thread decodes the next block while the network runs) and "ray" (a Ray
Data `map_batches` over an actor pool, one model per actor, results streamed back in order).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import export
from .data import find_images, map_threads, private_temp_folder, read_photo, remove_orphaned_temp_folders, unpack_zip
from .localize import box_source, class_indices, localize_batch
from .preprocess import check_input_size, inference_batch_size
from .settings import Settings, settings_of
from .methods import check_method
from .loading import load_model
from .models import CamModel

LOG, ERRORS, RUN, REVIEW = "predictions.jsonl", "errors.jsonl", "run.json", "review.txt"
ENGINES = ("local", "ray")
RAY_MISSING = "--engine ray needs Ray: pip install -r requirements-scale.txt"


@dataclass(frozen=True)
class Item:
    """One photo of a collection."""

    name: str  # its path relative to its input root (POSIX): its key in every output file
    path: str  # where it is read from
    shown: str  # how messages name it (a zipped photo: the zip and the member)


def collect(inputs, unpack_root: Path) -> list[Item]:
    """The photos of `inputs` (image files, folders walked recursively, zips unpacked under
    `unpack_root` by the guarded `unpack_zip`), in order. Two photos with the same relative path,
    or whose YOLO/VOC files would share a name (`a.jpg` and `a.png`), are refused: each output
    file must belong to one photo."""
    items: list[Item] = []
    for number, value in enumerate(inputs):
        source = Path(value)
        if source.is_dir():
            items += [Item(p.relative_to(source).as_posix(), str(p), str(p)) for p in find_images([source])]
        elif source.suffix.lower() == ".zip" and source.is_file():
            dest = unpack_root / str(number)
            try:
                unpack_zip(source, dest)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
            members = find_images([dest]) if dest.is_dir() else []
            items += [Item(p.relative_to(dest).as_posix(), str(p), f"{source}:{p.relative_to(dest).as_posix()}")
                      for p in members]
        elif source.is_file():
            items.append(Item(source.name, str(source), str(source)))
        else:
            raise ValueError(f"{source}: no such file or folder")
    seen: dict[str, Item] = {}
    for item in items:
        stem = export.flat_stem(item.name)
        if stem in seen:
            raise ValueError(f"{seen[stem].shown} and {item.shown} would share the output name {stem!r} (relative "
                             "paths are kept from each input root): rename one, or pass their common parent folder")
        seen[stem] = item
    return items


def label(inputs, out, model: str | CamModel = "default", settings: Settings | str | None = None,
          formats=export.FORMATS, batch_size: int | None = None,
          engine: str = "local", ray_address: str | None = None, ray_cpus_per_worker: int | None = None,
          progress=None, on_record=None, runtime: str = "auto", device: str | None = None,
          val_fraction: float = 0.1, copy_images: bool = False, pretrained: bool = True) -> dict:
    """Localize every photo of `inputs` into the folder `out`: `predictions.jsonl` and `errors.jsonl`
    (appended batch by batch; a rerun resumes), then the `formats` among coco, yolo and voc, and
    review.txt (the photos most in doubt first: `cam.review`), written from the whole log. Returns a summary. `progress(done, total)` follows the photos and
    `on_record(record, item)` gets each new line of the log (errors have an "error" key) with its
    `Item`, whose file is readable until `label` returns.

    A `model` given as a CamModel is used as it is (local engine only); a spec is loaded here, onto
    `device`, and with engine "ray" once per actor, on `runtime`, with hub weights unless not
    `pretrained` (`cam.load_model`). Ray actors ask
    for no GPU: they run on `ray_cpus_per_worker` CPUs each, with as many torch threads (default:
    this process's thread count, which keeps their bits those of the local engine).

    `settings` (a `cam.Settings` or a preset's name; default: the recommended one, top-1, or every
    class where a checkpoint's detector gives boxes, alone or beside the maps') are the
    localization settings, recorded in `run.json` with `batch_size` (photos a forward pass, default
    `inference_batch_size`): a run resumes only with the same. `settings.classes` restricts the
    boxes to those classes (top-k among them) and makes them the exported classes, in that order.
    YOLO and VOC split the photos into train and val by a stable
    hash of each photo's relative path (`val_fraction` of them in val) and link the photos beside
    their labels (copies with `copy_images`; photos from zips are always copied).
    """
    formats = _check_formats(formats)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray" and device is not None and str(device) != "cpu":
        raise ValueError(f"the ray engine's actors run on their CPUs: device {str(device)!r} is for the local engine")
    if engine == "ray" and not pretrained:
        raise ValueError("the ray engine loads the model in each actor, and untrained weights would differ between "
                         "them: save the model as a checkpoint and pass its folder")
    ray = _connect_ray(ray_address) if engine == "ray" else None
    if isinstance(model, CamModel):
        if engine == "ray":
            raise ValueError("the ray engine loads the model in each actor: pass a model spec, not a CamModel")
    else:
        model = load_model(_portable_spec(model), pretrained=pretrained, device=device, runtime=runtime)
    settings = settings_of(settings)
    size = check_input_size(settings.input_size, model)
    classes = _export_classes(model, settings.classes)
    # CAM's one box a class: the top class. The detector's boxes: every exported class it finds.
    detected = box_source(model, settings.boxes) != "cam"
    settings = replace(settings, topk=settings.topk or (len(classes) if detected else 1),
                       classes=None if settings.classes is None else tuple(name for _, name in classes))
    batch_size = batch_size or inference_batch_size(model, size)
    _check_settings(model, settings, batch_size)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The runtime too: its float32 results differ in the last bits.
    _claim(out / RUN, {"model": model.spec, "weights": model.weights_digest(), "runtime": model.runtime,
                       **settings.to_dict(), "batch_size": batch_size, "val_fraction": val_fraction})

    remove_orphaned_temp_folders("cam-label-")  # zips unpacked by runs that were killed
    unpacked = private_temp_folder("cam-label-")
    started = time.perf_counter()
    try:
        items = collect(inputs, unpacked)
        done = _logged_names(out / LOG) | _logged_names(out / ERRORS)
        blocks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        blocks = [b for b in blocks if any(item.name not in done for item in b)]
        total, finished, new = len(items), sum(item.name in done for item in items), 0
        if progress:
            progress(finished, total)
        outcomes = _ray_blocks(ray, model.spec, model.runtime, blocks, settings, ray_cpus_per_worker) if ray else \
            _local_blocks(model, blocks, settings)
        with open(out / LOG, "a") as log, open(out / ERRORS, "a") as errors:
            for items_of_block, block in zip(blocks, outcomes):
                fresh = [(item, line, failed) for item, (_, line, failed) in zip(items_of_block, block)
                         if item.name not in done]
                log.write("".join(line for _, line, failed in fresh if not failed))
                errors.write("".join(line for _, line, failed in fresh if failed))
                log.flush()
                errors.flush()
                done.update(item.name for item, _, _ in fresh)
                finished, new = finished + len(fresh), new + len(fresh)
                if on_record:
                    for item, line, _ in fresh:
                        on_record(json.loads(line), item)
                if progress:
                    progress(finished, total)
        labelled = _logged_names(out / LOG)
        export.place_photos(out, [(item.name, item.path, Path(item.path).is_relative_to(unpacked))
                                  for item in items if item.name in labelled], formats, val_fraction, copy_images)
    finally:
        shutil.rmtree(unpacked, ignore_errors=True)
    seconds = time.perf_counter() - started
    written = write_exports(out, classes, formats, val_fraction)
    return {"out": str(out), "photos": total, "new": new, "skipped": total - new,
            "labelled": _count_lines(out / LOG), "errors": _count_lines(out / ERRORS),
            "seconds": round(seconds, 3), "photos_per_second": round(new / seconds, 2) if seconds > 0 else None,
            "engine": engine, "files": written}


def write_exports(out: Path, classes: list[tuple[int, str]], formats, val_fraction: float) -> list[str]:
    """Write the chosen formats from the folder's whole log, each replacing its old version at once,
    and review.txt: every photo once, those whose boxes are most in doubt first (`cam.review`)."""
    log, written = out / LOG, []
    export.write_review(log, out / REVIEW)
    if "coco" in formats:
        export.write_coco(log, classes, out / "coco.json")
        written.append("coco.json")
    if "yolo" in formats:
        export.write_yolo(log, classes, out / "yolo", val_fraction)
        written.append("yolo/")
    if "voc" in formats:
        export.write_voc(log, classes, out / "voc", val_fraction)
        written.append("voc/")
    return written + [REVIEW, LOG, ERRORS]


def _export_classes(model: CamModel, classes) -> list[tuple[int, str]]:
    """(model class index, name) of the exported classes: `classes` (names or indices) in the order
    given, or every class of the model."""
    if classes is None:
        return list(enumerate(model.class_names))
    return [(i, model.class_names[i]) for i in class_indices(model, list(classes))]


def label_block(model: CamModel, items: list[Item], settings: Settings) -> list[tuple[str, str, bool]]:
    """(name, JSON line, failed) for each photo of a block, in order: its record for
    `predictions.jsonl`, or, failed, `{"error", "file", "path"}` for `errors.jsonl`. One forward
    pass for the photos that decode."""
    return _label_decoded(model, _decode(items, _cover(model, settings)), settings)


def _cover(model: CamModel, settings: Settings) -> int:
    """The side photos are decoded to cover (`cam.data.read_photo`): the network's input side."""
    return max(check_input_size(settings.input_size, model))


def _decode(items: list[Item], cover: int) -> list[tuple[Item, object]]:
    """Each photo as a `Photo` at working size, or the message saying why it cannot be read."""
    def decode(item: Item):
        try:
            return item, read_photo(item.path, cover)
        except (ValueError, OSError) as exc:
            return item, str(exc).replace(item.path, item.shown)

    return map_threads(decode, items)


def _label_decoded(model: CamModel, decoded, settings: Settings) -> list[tuple[str, str, bool]]:
    photos = [value for _, value in decoded if not isinstance(value, str)]
    results = iter(localize_batch(model, photos, settings, batch_size=len(photos) or 1) if photos else [])
    lines = []
    for item, value in decoded:
        failed = isinstance(value, str)
        if failed:
            record = {"error": value, "file": item.name, "path": item.shown}
        else:
            record = {"file": item.name, **next(results).to_dict()}
        lines.append((item.name, json.dumps(record) + "\n", failed))
    return lines


def _local_blocks(model: CamModel, blocks, settings: Settings):
    """Label the blocks in this process, in order; a thread decodes the next block meanwhile."""
    with ThreadPoolExecutor(1, thread_name_prefix="cam-decode") as pool:
        cover = _cover(model, settings)
        ahead = collections.deque(pool.submit(_decode, block, cover) for block in blocks[:1])
        for number in range(len(blocks)):
            if number + 1 < len(blocks):
                ahead.append(pool.submit(_decode, blocks[number + 1], cover))
            yield _label_decoded(model, ahead.popleft().result(), settings)


class _RayLabeller:
    """A Ray Data actor: loads the model once, then labels one block (a row) per call."""

    def __init__(self, spec: str, runtime: str, settings: dict, threads: int):
        torch.set_num_threads(threads)
        self.model = load_model(spec, runtime=runtime)
        self.settings = Settings(**settings)  # from its dict: the fields, classes as a list

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        items = [Item(*fields) for fields in json.loads(batch["items"][0])]
        names, lines, failed = zip(*label_block(self.model, items, self.settings))
        return {"name": np.array(names), "line": np.array(lines), "failed": np.array(failed)}


def _ray_blocks(ray, spec: str, runtime: str, blocks, settings: Settings, cpus_per_worker: int | None):
    """Label the blocks on the Ray cluster, one row a block; rows come back in block order."""
    if not blocks:
        return
    cpus = int(cpus_per_worker or torch.get_num_threads())
    if cpus < 1:
        raise ValueError(f"ray_cpus_per_worker must be at least 1, got {cpus_per_worker!r}")
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the log's order, and so every file, as the local engine's
    context.enable_progress_bars = False  # the caller's progress bar is the one
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its INFO lines would break that bar
    workers = max(1, int(ray.cluster_resources().get("CPU", cpus)) // cpus)
    rows = [{"items": json.dumps([[i.name, i.path, i.shown] for i in block])} for block in blocks]
    # Ray blocks of about 32 rows (a Ray task each: fewer tasks, less overhead), at least 4 per actor.
    ray_blocks = max(1, min(len(rows), max(4 * workers, len(rows) // 32)))
    dataset = ray.data.from_items(rows, override_num_blocks=ray_blocks).map_batches(
        _RayLabeller, fn_constructor_kwargs={"spec": spec, "runtime": runtime, "settings": settings.to_dict(),
                                             "threads": cpus},
        batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers), num_cpus=cpus)
    sizes = iter(len(block) for block in blocks)
    pending, want = [], next(sizes)
    for row in dataset.iter_rows():
        pending.append((str(row["name"]), str(row["line"]), bool(row["failed"])))
        if len(pending) == want:
            yield pending
            pending, want = [], next(sizes, 0)


def _connect_ray(address: str | None):
    """The `ray` module, connected: to a running session, to `address` ('auto', 'HOST:PORT',
    'ray://HOST:10001') or to a new local Ray. Failures are one-line ValueErrors."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the `ray[data]` extra)
    except ImportError:
        raise ValueError(RAY_MISSING) from None
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot reach the Ray cluster at {address!r} ({exc})") from None
    try:  # the cam package travels to the workers: every node needs only the requirements installed
        ray.init(address=address, runtime_env={"py_modules": [str(Path(__file__).parent)]}, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot connect to Ray at {address or 'a new local cluster'!r}: {exc}") from None
    return ray


def _portable_spec(spec) -> str:
    """A checkpoint folder as an absolute path (Ray actors may run elsewhere); other specs as given."""
    text = str(spec).strip()
    return str(Path(text).resolve()) if ":" not in text and Path(text).is_dir() else text


def _check_formats(formats) -> tuple[str, ...]:
    chosen = tuple(formats.split(",") if isinstance(formats, str) else formats)
    chosen = tuple(f.strip().lower() for f in chosen if f.strip())
    unknown = sorted(set(chosen) - set(export.FORMATS))
    if unknown or not chosen:
        raise ValueError(f"formats must be among {','.join(export.FORMATS)}, got {','.join(chosen) or 'none'}")
    return chosen


def _check_settings(model: CamModel, settings: Settings, batch_size) -> None:
    ranked = len(settings.classes) if settings.classes else len(model.class_names)
    if not settings.topk <= ranked:
        raise ValueError(f"topk must be between 1 and {ranked}, got {settings.topk!r}")
    check_method(settings.method, model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")


def _claim(path: Path, run: dict) -> None:
    """Record what this folder's run computes, or refuse a folder that holds another run."""
    run = json.loads(json.dumps(run))  # as it reads back (tuples as lists)
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = [f"{key} {previous.get(key)!r} (now {run.get(key)!r})" for key in {**previous, **run}
                   if previous.get(key) != run.get(key)]
        if changed:
            raise ValueError(f"{path.parent} holds a run with other settings: {'; '.join(changed)}. Rerun with its "
                             "settings to resume it, or choose a new --out folder")
        return
    if (path.parent / LOG).exists():
        raise ValueError(f"{path.parent} holds a {LOG} without {RUN}: choose a new --out folder")
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{RUN}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(run, handle, indent=2)
    os.chmod(temp, 0o644)
    os.replace(temp, path)


def _logged_names(path: Path) -> set[str]:
    """The photos a log already holds. A line cut short by a kill (no newline at the end) is
    removed first, so the block it belonged to is done again."""
    if not path.is_file():
        return set()
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
    return {json.loads(line)["file"] for line in data.splitlines() if line.strip()}


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
