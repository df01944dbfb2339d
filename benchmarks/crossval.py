"""Repeated stratified k-fold cross-validation: scores on photos that chose nothing; prints JSON.

    python benchmarks/crossval.py presets ../shared/data/imagenet-val-dev [--folds 5] [--repeats 4]
    python benchmarks/crossval.py finetune ../shared/data/hymenoptera-train [--folds 5] [--repeats 2]
        [--mode head|full|both]

presets: the dev photos (images/ + boxes.csv) are cut into k folds, stratified by class
(`cam.train.stratified_folds`), and each fold is scored (`cam.evaluate`) at every preset. For each
held-out fold the preset with the higher mean of top-1 loc and MaxBoxAccV2 on the other k-1 folds
is picked and its score on the held-out fold kept: what choosing a preset on these photos is worth
on others. Per preset, and for best minus recommended, the mean, standard deviation and range over
the folds of every repeat, and on how many folds best beats recommended on each metric.

finetune: the photos of a folder of class folders are cut into k stratified folds; for each, a
checkpoint is trained (`cam.train.train`, its own validation split inside) on the other folds and
classifies the held-out fold at its own input size. One line per fold, then per mode the mean,
standard deviation and range of held-out accuracy over all folds and repeats, and the seconds per
training.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
from cam.data import scan_dataset  # noqa: E402
from cam.evaluate import evaluate, read_dataset  # noqa: E402
from cam.settings import PRESETS  # noqa: E402
from cam.train import stratified_folds, train  # noqa: E402

METRICS = ("top1_loc", "max_box_acc_v2")


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "folds": len(values)}


def fold_folder(dev: Path, files: list[str], rows: dict[str, list[list[str]]], out: Path) -> Path:
    """A folder of `files` (images/ linked, boxes.csv) that `cam.evaluate` reads."""
    (out / "images").mkdir(parents=True)
    with (out / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "x0", "y0", "x1", "y1"])
        for file in files:
            (out / "images" / file).symlink_to((dev / "images" / file).resolve())
            writer.writerows(rows[file])
    return out


def presets(args, scratch: Path) -> None:
    dev = Path(args.folder)
    samples = read_dataset(dev)
    rows: dict[str, list[list[str]]] = {}
    with (dev / "boxes.csv").open() as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            rows.setdefault(row[0], []).append(row)
    model = cam.load_model("default")
    held_out = {name: {m: [] for m in METRICS} for name in (*PRESETS, "picked")}
    picks, wins = [], {m: 0 for m in METRICS}
    for repeat in range(args.repeats):
        folds = stratified_folds([s.label for s in samples], args.folds, seed=repeat)
        scores = []  # per fold: {preset: metrics}
        for k, fold in enumerate(folds):
            folder = fold_folder(dev, [samples[i].file for i in fold], rows, scratch / f"r{repeat}f{k}")
            scores.append({name: evaluate(model, folder, settings)[0] for name, settings in PRESETS.items()})
        for k, fold in enumerate(folds):
            for name in PRESETS:
                for m in METRICS:
                    held_out[name][m].append(scores[k][name][m])
            for m in METRICS:
                wins[m] += scores[k]["best"][m] > scores[k]["recommended"][m]

            def others(name: str) -> float:  # the mean of both metrics on the other folds, weighted by photos
                n = [len(f) for j, f in enumerate(folds) if j != k]
                return sum(w * (scores[j][name]["top1_loc"] + scores[j][name]["max_box_acc_v2"]) / 2
                           for w, j in zip(n, [j for j in range(len(folds)) if j != k])) / sum(n)

            pick = max(("recommended", "best"), key=others)
            picks.append(pick)
            for m in METRICS:
                held_out["picked"][m].append(scores[k][pick][m])
            print(json.dumps({"repeat": repeat, "fold": k, "photos": len(fold), "picked": pick,
                              **{name: {m: round(scores[k][name][m], 4) for m in METRICS} for name in PRESETS}}),
                  flush=True)
    gain = {m: [b - r for b, r in zip(held_out["best"][m], held_out["recommended"][m])] for m in METRICS}
    print(json.dumps({"summary": "held-out folds", "photos": len(samples), "folds": args.folds, "repeats": args.repeats,
                      **{name: {m: spread(v) for m, v in by.items()} for name, by in held_out.items()},
                      "best_minus_recommended": {m: spread(v) for m, v in gain.items()},
                      "folds_where_best_beats_recommended": wins,
                      "picks": {name: picks.count(name) for name in ("recommended", "best")}}), flush=True)


def finetune(args, scratch: Path) -> None:
    class_names, items, _ = scan_dataset(args.folder)
    labels = [label for _, label in items]
    modes = ["head", "full"] if args.mode == "both" else [args.mode]
    accuracy, seconds = {m: [] for m in modes}, {m: [] for m in modes}
    for repeat in range(args.repeats):
        folds = stratified_folds(labels, args.folds, seed=repeat)
        for k, fold in enumerate(folds):
            data = scratch / f"r{repeat}f{k}"
            held = set(fold)
            for i, (path, label) in enumerate(items):
                if i not in held:
                    target = data / class_names[label] / f"{i}{path.suffix}"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)  # training skips links
            for mode in modes:
                started = time.perf_counter()
                summary = train(data, mode=mode, out=scratch / "checkpoints", seed=repeat)
                seconds[mode].append(time.perf_counter() - started)
                model = cam.load_model(summary["checkpoint"])
                results = cam.localize_batch(model, [items[i][0] for i in fold], topk=1, input_size=None, refine=False)
                hits = sum(r.predictions[0].class_index == labels[i] for r, i in zip(results, fold))
                accuracy[mode].append(hits / len(fold))
                shutil.rmtree(summary["checkpoint"], ignore_errors=True)
                print(json.dumps({"repeat": repeat, "fold": k, "mode": mode, "train_photos": len(items) - len(fold),
                                  "held_out_photos": len(fold), "held_out_accuracy": round(accuracy[mode][-1], 4),
                                  "val_accuracy": round(summary["val_accuracy"], 4),
                                  "seconds": round(seconds[mode][-1], 1)}), flush=True)
    print(json.dumps({"summary": "held-out folds", "photos": len(items), "folds": args.folds, "repeats": args.repeats,
                      **{mode: {"held_out_accuracy": spread(accuracy[mode]),
                                "seconds_per_training": round(statistics.mean(seconds[mode]), 1)} for mode in modes}}),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["presets", "finetune"])
    parser.add_argument("folder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mode", choices=["head", "full", "both"], default="both")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-crossval-"))
    try:
        (presets if args.what == "presets" else finetune)(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
