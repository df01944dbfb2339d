"""Detection from labels alone, held out: the CAM teacher's boxes, the detector trained on them, and
the same detector trained on the true boxes (the supervised ceiling); prints JSON.

    python benchmarks/detector.py fruit ../shared/data/fruit [--folds 5] [--repeats 1]
    python benchmarks/detector.py imagenet ../shared/data/imagenet-val-dev [--folds 3]
    python benchmarks/detector.py fruit ../shared/data/fruit --reviewed 0,5,10,20 [--folds 5]
    python benchmarks/detector.py fruit ../shared/data/fruit --time CHECKPOINT

fruit: `train/<class>/` is the dataset a user uploads, `mixed/` photos with several kinds of fruit,
`boxes.csv` (`file,label,x0,y0,x1,y1`, paths relative to the folder, class names) scores only.
imagenet: the dev set's dog, bird and reptile photos as three classes (ImageNet's index ranges).

The training photos are cut into k stratified folds (`cam.train.stratified_folds`, seed = repeat).
For each fold, `cam.train.train` trains a checkpoint with its detector on the other folds
(`Recipe(detector=True)`, the defaults) and the ceiling from the true boxes of the same photos
(`reviewed_boxes`, a COCO file of them); both are scored on the held-out fold and on `mixed/`, never
seen in training. Scores: COCO AP50 and AP (pycocotools) and CorLoc (for each class an image
holds, its best-scoring box hits a true box of that class at IoU 0.5). The teacher (the same
checkpoint's CAM boxes, scored by class probability) is scored at each setting of `TEACHER_GRID`,
and its best mean AP50 is the one compared. Times: training seconds, and milliseconds a photo for
`localize` with CAM boxes, the detector's and both, on PyTorch and OpenVINO, side by side on the
held-out photos and on 12 MP JPEGs made from them (first fold; `--time` on a given checkpoint).

--reviewed K,...: the review loop as a user runs it, on each fold: `train(DATA, detector=True)`,
`label(DATA)` for review.txt, then `train(DATA, detector=True, reviewed_boxes=...)` with the true
boxes of the first K photos a class in review.txt's order, and of K photos a class drawn at random
(seeded by the fold). Each checkpoint is scored held out with the boxes `auto` gives (every class
ranked, as `cam label` exports them; the maps' box: the top class), and the maps' box (top class)
and the detector's boxes alone beside them; K = 0 is the first checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
from cam.boxes import iou  # noqa: E402
from cam.train import Recipe, stratified_folds, train  # noqa: E402

TEACHER_GRID = [{"topk": k, "threshold": t, "all_regions": a} for k in (1, None) for t in (0.2, 0.3)
                for a in (False, True)]  # topk None: every class
IMAGENET_GROUPS = {"dog": [(151, 268)], "bird": [(7, 24), (80, 100), (127, 146)], "reptile": [(33, 68)]}


def fruit_set(root: Path):
    """(training photos [(path, class)], test sets {name: [path]}, true boxes {path: [(class, box)]})."""
    truths: dict[Path, list] = {}
    with (root / "boxes.csv").open() as handle:
        for row in csv.DictReader(handle):
            truths.setdefault(root / row["file"], []).append(
                (row["label"], tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))))
    photos = sorted((path, path.parent.name) for path in (root / "train").glob("*/*") if path in truths)
    return photos, {"mixed": sorted(p for p in truths if p.parent.name == "mixed")}, truths


def imagenet_set(root: Path):
    """The dev set's photos of `IMAGENET_GROUPS` as that many classes; no extra test set."""
    def group(label: int):
        return next((name for name, spans in IMAGENET_GROUPS.items() if any(a <= label <= b for a, b in spans)), None)

    truths: dict[Path, list] = {}
    with (root / "boxes.csv").open() as handle:
        for row in csv.DictReader(handle):
            name = group(int(row["label"]))
            if name:
                truths.setdefault(root / "images" / row["file"], []).append(
                    (name, tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))))
    return sorted((path, boxes[0][0]) for path, boxes in truths.items()), {}, truths


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1
            else 0.0, "min": round(min(values), 4), "max": round(max(values), 4), "folds": len(values)}


def dataset_folder(photos, folder: Path) -> Path:
    """A folder of class folders holding copies of `photos` [(path, class)], as a user's upload would
    (training reads no links)."""
    for path, name in photos:
        (folder / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / name / path.name)
    return folder


def true_boxes_coco(photos, truths, path: Path) -> Path:
    """The true boxes of `photos` as a COCO file named as the dataset folder names them: the ceiling's."""
    images, annotations, names = [], [], sorted({c for _, c in photos} | {c for p, _ in photos for c, _ in truths[p]})
    for i, (photo, name) in enumerate(photos, start=1):
        width, height = Image.open(photo).size
        images.append({"id": i, "file_name": f"{name}/{photo.name}", "width": width, "height": height})
        annotations += [{"id": len(annotations) + 1, "image_id": i, "category_id": names.index(c) + 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for c, b in truths[photo]]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}))
    return path


def found_boxes(model, paths, **settings) -> dict:
    """{path: [(class name, score, box)]}: the detector's box scores, or CAM boxes scored by the
    class's probability."""
    found = {}
    for path, result in zip(paths, cam.localize_batch(model, paths, **settings)):
        found[path] = [(p.label, score, box) for p in result.predictions
                       for box, score in zip(p.boxes, p.box_scores or [p.score] * len(p.boxes))]
    return found


def scores(found: dict, truths: dict, classes: list[str]) -> dict:
    """COCO AP50 and AP (pycocotools) and CorLoc of `found` against the true boxes of its photos."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    paths = list(found)
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 1, "height": 1} for i in range(len(paths))],
                  "categories": [{"id": k, "name": n} for k, n in enumerate(classes)],
                  "annotations": [{"id": n, "image_id": i, "category_id": classes.index(c), "iscrowd": 0,
                                   "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
                                  for n, (i, c, b) in enumerate(((i, c, b) for i, p in enumerate(paths)
                                                                  for c, b in truths[p]), start=1)]}
    hits = total = 0
    for path in paths:
        for name in {c for c, _ in truths[path]}:
            total += 1
            mine = [d for d in found[path] if d[0] == name]
            if mine:
                best = max(mine, key=lambda d: d[1])
                hits += any(iou(best[2], b) >= 0.5 for c, b in truths[path] if c == name)
    results = [{"image_id": i, "category_id": classes.index(c), "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for i, p in enumerate(paths) for c, s, b in found[p]]
    if not results:
        return {"ap50": 0.0, "ap": 0.0, "corloc": hits / total}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"ap50": float(evaluation.stats[1]), "ap": float(evaluation.stats[0]), "corloc": hits / total}


def timings(checkpoint: str, paths: list, scratch: Path) -> dict:
    """Milliseconds a photo for `localize` with CAM boxes, the detector's and both, on both runtimes,
    measured side by side (each the best of 3 rounds after a warm-up), on `paths` and on 12 MP
    JPEGs upscaled from the first 8 of them."""
    phone = []
    for k, path in enumerate(paths[:8]):
        image = Image.open(path).convert("RGB")
        image.resize((4000, 3000), Image.BICUBIC).save(scratch / f"phone_{k}.jpg", quality=90)
        phone.append(scratch / f"phone_{k}.jpg")
    out = {}
    for runtime in ("torch", "openvino"):
        model = cam.load_model(checkpoint, runtime=runtime)
        for photos_name, photos in (("photos", paths), ("12mp", phone)):
            best = {}
            for boxes in ("cam", "detector", "both") * 2:  # the first of each is the warm-up
                rounds = []
                for _ in range(3):
                    start = time.perf_counter()
                    for photo in photos:
                        cam.localize(model, photo, boxes=boxes)
                    rounds.append((time.perf_counter() - start) * 1000 / len(photos))
                best[boxes] = round(min(rounds), 1)
            out[f"{runtime}_{photos_name}"] = {**best, "ratio": round(best["detector"] / best["cam"], 2),
                                               "ratio_both": round(best["both"] / best["cam"], 2)}
    return out


def first_per_class(order: list[str], k: int) -> list[str]:
    """The first `k` names of each class (the name's folder) in `order`."""
    taken: dict[str, int] = {}
    picked = []
    for name in order:
        kind = name.split("/")[0]
        if taken.get(kind, 0) < k:
            taken[kind] = taken.get(kind, 0) + 1
            picked.append(name)
    return picked


def scored_sources(model, sets: dict, truths: dict, classes: list[str]) -> dict:
    """AP50 and CorLoc on each test set of the boxes auto gives, the maps' box and the detector's."""
    from cam.localize import box_source

    auto = box_source(model, "auto")
    line = {"auto_source": auto}
    for name, paths in sets.items():
        line[f"{name}/auto"] = scores(found_boxes(model, paths, box_score=0.0, topk=1 if auto == "cam" else len(classes)),
                                      truths, classes)
        line[f"{name}/maps"] = scores(found_boxes(model, paths, boxes="cam", topk=1), truths, classes)
        line[f"{name}/detector"] = scores(found_boxes(model, paths, boxes="detector", box_score=0.0,
                                                      topk=len(classes)), truths, classes)
    return line


def reviewed_curve(args, photos, tests, truths, classes) -> list[dict]:
    """`--reviewed`: each fold's line (also printed to stderr): held-out scores for each K, in
    review.txt's order and in a random one."""
    import random

    from cam.label import label

    ks = sorted({int(k) for k in args.reviewed.split(",")})
    lines = []
    with tempfile.TemporaryDirectory(prefix="cam-bench-reviewed-") as scratch_name:
        scratch = Path(scratch_name)
        for k, fold in enumerate(stratified_folds([classes.index(c) for _, c in photos], args.folds, 0)):
            if args.only is not None and k not in args.only:
                continue
            held = set(fold)
            train_photos = [p for i, p in enumerate(photos) if i not in held]
            run = scratch / f"f{k}"
            data = dataset_folder(train_photos, run / "data")
            sets = {"heldout": [photos[i][0] for i in fold], **tests}
            first = train(data, Recipe(detector=True), out=run / "checkpoints")
            label([data], run / "labels", model=first["checkpoint"], formats=["coco"])
            order = (run / "labels" / "review.txt").read_text().splitlines()
            rng = random.Random(k)
            shuffled = [f"{c}/{p.name}" for p, c in train_photos]
            rng.shuffle(shuffled)
            by_name = {f"{c}/{p.name}": (p, c) for p, c in train_photos}
            runs = {"0": first} if 0 in ks else {}
            for count in (c for c in ks if c > 0):
                for which, names in (("ours", order), ("random", shuffled)):
                    chosen = [by_name[n] for n in first_per_class(names, count)]
                    coco = true_boxes_coco(chosen, truths, run / f"{which}{count}.json")
                    runs[f"{count}/{which}"] = train(data, Recipe(detector=True, reviewed_boxes=str(coco)),
                                                     out=run / "checkpoints")
            for key, summary in runs.items():
                line = {"fold": k, "run": key, "train_seconds": summary["metrics"]["seconds"],
                        "reviewed_ap50": summary.get("reviewed_ap50"),
                        **scored_sources(cam.load_model(summary["checkpoint"], runtime="torch"), sets, truths, classes)}
                print(json.dumps(line), file=sys.stderr, flush=True)
                lines.append(line)
            shutil.rmtree(run, ignore_errors=True)
    return lines


def curve_summary(lines: list[dict], args, photos, classes) -> dict:
    """Mean, sd and range over the folds of each run's AP50s, training seconds and how often auto
    gave the maps' box."""
    table: dict[str, list[float]] = {}
    for line in lines:
        key = line["run"]
        for name, value in line.items():
            if isinstance(value, dict) and "ap50" in value:
                table.setdefault(f"{key}/{name}/ap50", []).append(value["ap50"])
        table.setdefault(f"{key}/train_seconds", []).append(line["train_seconds"])
        table.setdefault(f"{key}/auto_is_maps", []).append(float(line["auto_source"] == "cam"))
    return {"dataset": args.kind, "photos": len(photos), "classes": classes, "folds": len({l["fold"] for l in lines}),
            **{key: spread(values) for key, values in sorted(table.items())}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["fruit", "imagenet"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-timing", action="store_true", help="skip the inference timings")
    parser.add_argument("--reviewed", default=None, metavar="K,...",
                        help="the review loop's curve for these photos a class (e.g. 0,5,10,20) instead")
    parser.add_argument("--only", default=None, type=lambda text: {int(k) for k in text.split(",")},
                        help="--reviewed: run only these folds (e.g. 1,3), to run folds in parallel")
    parser.add_argument("--time", default=None, metavar="CHECKPOINT",
                        help="no training: only the timings, of this checkpoint with a detector, on the test photos")
    parser.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="LINES",
                        help="--reviewed: no run; the summary of fold lines saved from earlier runs' stderr")
    args = parser.parse_args(argv)
    photos, tests, truths = (fruit_set if args.kind == "fruit" else imagenet_set)(args.folder)
    classes = sorted({c for _, c in photos})
    if args.time:
        if cam.load_model(args.time, runtime="torch").detector is None:
            parser.error(f"{args.time} has no detector to time (train it with --detector)")
        paths = [p for name in tests for p in tests[name]] or [p for p, _ in photos][:20]
        with tempfile.TemporaryDirectory(prefix="cam-bench-detector-") as scratch_name:
            print(json.dumps({"checkpoint": args.time, "photos": len(paths), "cpus": os.cpu_count(),
                              "timing_ms_per_photo": timings(args.time, paths, Path(scratch_name))}, indent=2))
        return
    if args.summarize:
        lines = [json.loads(text) for path in args.summarize for text in path.read_text().splitlines()
                 if text.startswith("{")]
        print(json.dumps(curve_summary(lines, args, photos, classes), indent=2))
        return
    if args.reviewed:
        print(json.dumps(curve_summary(reviewed_curve(args, photos, tests, truths, classes), args, photos, classes),
                         indent=2))
        return
    table: dict[str, list[float]] = {}
    timed = None
    with tempfile.TemporaryDirectory(prefix="cam-bench-detector-") as scratch_name:
        scratch = Path(scratch_name)
        for repeat in range(args.repeats):
            for k, fold in enumerate(stratified_folds([classes.index(c) for _, c in photos], args.folds, repeat)):
                held = set(fold)
                train_photos = [p for i, p in enumerate(photos) if i not in held]
                run = scratch / f"r{repeat}f{k}"
                data = dataset_folder(train_photos, run / "data")
                student = train(data, Recipe(detector=True, seed=repeat), out=run / "checkpoints")
                ceiling = train(data, Recipe(seed=repeat, reviewed_boxes=str(true_boxes_coco(train_photos, truths,
                                                                                       run / "true.json"))),
                                out=run / "checkpoints")
                line = {"repeat": repeat, "fold": k, "train_seconds": student["metrics"]["seconds"],
                        "detector_seconds": student["metrics"]["detector"]["seconds"]}
                sets = {"heldout": [photos[i][0] for i in fold], **tests}
                for which, summary in (("detector", student), ("ceiling", ceiling)):
                    model = cam.load_model(summary["checkpoint"], runtime="torch")
                    for name, paths in sets.items():
                        everything = {"topk": len(classes), "box_score": 0.0}
                        line[f"{name}/{which}"] = scores(found_boxes(model, paths, boxes="detector", **everything),
                                                         truths, classes)
                        if which == "detector":
                            for n, setting in enumerate(TEACHER_GRID):
                                setting = {**setting, "topk": setting["topk"] or len(classes)}
                                line[f"{name}/teacher{n}"] = scores(found_boxes(model, paths, boxes="cam", **setting),
                                                                    truths, classes)
                for key, value in line.items():
                    if isinstance(value, dict):
                        for metric, number in value.items():
                            table.setdefault(f"{key}/{metric}", []).append(number)
                    elif key.endswith("seconds"):
                        table.setdefault(key, []).append(value)
                print(json.dumps({k: ({m: round(v, 4) for m, v in x.items()} if isinstance(x, dict) else x)
                                  for k, x in line.items()}), file=sys.stderr, flush=True)
                if timed is None and not args.no_timing:
                    timed = timings(student["checkpoint"], sets["heldout"], run)
                shutil.rmtree(run, ignore_errors=True)
    summary = {"dataset": args.kind, "photos": len(photos), "classes": classes, "folds": args.folds,
               "repeats": args.repeats, "teacher_settings": TEACHER_GRID, "timing_ms_per_photo": timed}
    for name in ["heldout", *tests]:
        best = max(range(len(TEACHER_GRID)),
                   key=lambda n: statistics.mean(table[f"{name}/teacher{n}/ap50"]))
        part = {"teacher_best_setting": TEACHER_GRID[best]}
        for which, key in (("teacher", f"teacher{best}"), ("detector", "detector"), ("ceiling", "ceiling")):
            part[which] = {m: spread(table[f"{name}/{key}/{m}"]) for m in ("ap50", "ap", "corloc")}
        gains = [d - t for d, t in zip(table[f"{name}/detector/ap50"], table[f"{name}/teacher{best}/ap50"])]
        part["detector_minus_teacher_ap50"] = {**spread(gains), "better": sum(g > 0 for g in gains)}
        part["detector_share_of_ceiling_ap50"] = round(statistics.mean(table[f"{name}/detector/ap50"]) /
                                                       max(statistics.mean(table[f"{name}/ceiling/ap50"]), 1e-9), 3)
        summary[name] = part
    summary["train_seconds"] = spread(table["train_seconds"])
    summary["detector_seconds"] = spread(table["detector_seconds"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
