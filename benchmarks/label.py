"""Photo collections: throughput of `cam label` against a Python loop of `cam.localize`, and the COCO
AP of its boxes against ground truth; JSON.

    python benchmarks/label.py ../shared/data/imagenet-val-dev [--repeats 3] [--memory-photos 10000]

DIR holds images/ and boxes.csv (file,label,x0,y0,x1,y1; label = ImageNet class index). For
--topk 1 and 5 at the recommended setting, side by side in one run (medians of `--repeats`):
photos/s of the loop, of `label` on the local engine and on a local Ray (2 CPUs; one actor with
this machine's torch threads, and one actor per CPU with one thread each), every run writing all
three formats. A Ray run includes starting its actors and loading a model in each (several
seconds, which `--copies N` spreads over N copies of the set). Then pycocotools scores `coco.json` (AP, AP50, AP75) against the ground truth,
converted from boxes.csv. `--memory-photos N` labels N generated photos and prints the resident
memory after the first batch and at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
from cam.label import label  # noqa: E402
from cam.settings import RECOMMENDED, Settings  # noqa: E402


def loop_seconds(model, paths, topk: int) -> float:
    started = time.perf_counter()
    for path in paths:
        cam.localize(model, path, topk=topk)
    return time.perf_counter() - started


def label_seconds(inputs: list[Path], model, topk: int, **options) -> tuple[float, Path]:
    out = Path(tempfile.mkdtemp(prefix="cam-label-bench-"))
    started = time.perf_counter()
    label(inputs, out, model=model, settings=Settings(topk=topk), **options)
    return time.perf_counter() - started, out


def copies_of(images: Path, copies: int) -> list[Path]:
    """`images` as it is, or a folder of `copies` subfolders of links to its photos (a larger
    collection, over which a Ray run's start-up is spread)."""
    if copies <= 1:
        return [images]
    folder = Path(tempfile.mkdtemp(prefix="cam-label-copies-"))
    for copy in range(copies):
        (folder / f"copy_{copy}").mkdir()
        for photo in images.iterdir():
            (folder / f"copy_{copy}" / photo.name).symlink_to(photo.resolve())
    return [folder]


@contextlib.contextmanager
def local_ray(wanted: bool):
    """A local Ray with 2 CPUs for one run, shut down after it: its daemons would otherwise take CPU
    time from the other rows."""
    if not wanted:
        yield
        return
    import psutil
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"py_modules": [str(Path(cam.__file__).parent)]})
    try:
        yield
    finally:
        started = psutil.Process().children(recursive=True)
        ray.shutdown()
        psutil.wait_procs(started, timeout=30)  # Ray's processes are gone before the next row is timed


def ground_truth(folder: Path, coco_json: Path) -> dict:
    """boxes.csv as a COCO ground truth over the images and categories of `coco_json`."""
    predicted = json.loads(coco_json.read_text())
    ids = {image["file_name"]: image["id"] for image in predicted["images"]}
    annotations = []
    with (folder / "boxes.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
            annotations.append({"id": len(annotations) + 1, "image_id": ids[row["file"]],
                                "category_id": int(row["label"]) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    return {"images": predicted["images"], "categories": predicted["categories"], "annotations": annotations}


def coco_ap(folder: Path, coco_json: Path) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO()
    truth.dataset = ground_truth(folder, coco_json)
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        detections = truth.loadRes(json.loads(coco_json.read_text())["annotations"])
        evaluation = COCOeval(truth, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": round(float(evaluation.stats[0]), 4), "AP50": round(float(evaluation.stats[1]), 4),
            "AP75": round(float(evaluation.stats[2]), 4)}


def memory_run(count: int) -> dict:
    """Label `count` generated 96x96 photos; resident memory after the first batch and at the end."""
    import psutil
    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="cam-label-memory-"))
    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / f"{i // 1000:02d}" / f"photo_{i:05d}.jpg"
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(target, quality=90)
    process, seen = psutil.Process(), {}

    def progress(done: int, total: int) -> None:
        if done and "first_batch_mb" not in seen:
            seen["first_batch_mb"] = process.memory_info().rss / 2**20

    model = cam.load_model("default")
    started = time.perf_counter()
    summary = label([folder], Path(tempfile.mkdtemp(prefix="cam-label-memory-out-")), model=model, progress=progress)
    end = process.memory_info().rss / 2**20
    return {"photos": summary["labelled"], "seconds": round(time.perf_counter() - started, 1),
            "rss_first_batch_mb": round(seen["first_batch_mb"], 1), "rss_end_mb": round(end, 1),
            "growth": round(end / seen["first_batch_mb"] - 1, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--memory-photos", type=int, default=0)
    parser.add_argument("--copies", type=int, default=1, help="label this many copies of the set (no COCO AP then)")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-label-")
    tempfile.tempdir = scratch  # every run's output, the copies and the generated photos: removed at the end
    try:
        run(args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args) -> None:
    images = args.folder / "images"
    paths = sorted(p for p in images.iterdir() if p.is_file())
    model = cam.load_model("default")
    for path in paths[:4]:
        cam.localize(model, path)  # warm-up
    inputs = copies_of(images, args.copies)
    print(json.dumps({"photos": len(paths) * args.copies, "setting": RECOMMENDED.to_dict()}), flush=True)
    for topk in (1, 5):
        engines = {"label_local": (model, {})}
        if not args.no_ray:
            engines["label_ray_1x2_threads"] = ("default", {"engine": "ray"})
            engines["label_ray_2x1_thread"] = ("default", {"engine": "ray", "ray_cpus_per_worker": 1})
        runs: dict[str, list[float]] = {"loop": []}
        out = None
        for _ in range(args.repeats):  # interleaved, so that the machine's drift hits every row alike
            runs["loop"].append(loop_seconds(model, paths * args.copies, topk))
            for name, (spec, options) in engines.items():
                with local_ray(options.get("engine") == "ray"):
                    seconds, folder = label_seconds(inputs, spec, topk, **options)
                runs.setdefault(name, []).append(seconds)
                out = out or folder
        median = {name: statistics.median(values) for name, values in runs.items()}
        print(json.dumps({
            "topk": topk,
            "photos_per_second": {name: round(len(paths) * args.copies / s, 2) for name, s in median.items()},
            "speedup_vs_loop": {name: round(median["loop"] / s, 3) for name, s in median.items() if name != "loop"},
            "coco": coco_ap(args.folder, out / "coco.json") if args.copies == 1 else None,
        }), flush=True)
    if args.memory_photos:
        print(json.dumps({"memory": memory_run(args.memory_photos)}), flush=True)


if __name__ == "__main__":
    main()
