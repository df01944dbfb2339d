"""Repeated stratified k-fold cross-validation: scores on photos that chose nothing; prints JSON.

    python benchmarks/crossval.py presets ../shared/data/imagenet-val-dev [--folds 5] [--repeats 4]
    python benchmarks/crossval.py finetune ../shared/data/hymenoptera-train [--folds 5] [--repeats 2]
        [--mode head|full|both]

presets: the dev photos (images/ + boxes.csv) are scored once at every preset and at every pair
of `adapt` constants in `ADAPT_GRID` (`cam.evaluate.score_folder`), then cut into k folds,
stratified by class (`cam.train.stratified_folds`). For each held-out fold the constants with the
highest top-1 loc + MaxBoxAccV2 on the other k-1 folds are selected, and the best preset with them
is scored on the held-out fold (its thresholds for MaxBoxAccV2 chosen on that fold, as the metric
defines): what choosing `--best`'s constants on these photos is worth on others. Per preset, for
`best_selected`, and for each minus recommended: mean, standard deviation and range over the folds
of every repeat, and on how many folds the difference is positive or zero.

finetune: the photos of a folder of class folders are cut into k stratified folds; for each, a
checkpoint is trained (`cam.train.train`, its own validation split inside) on the other folds and
classifies the held-out fold at its own input size. One line per fold, then per mode the mean,
standard deviation and range of held-out accuracy over all folds and repeats, and the seconds per
training.
"""

from __future__ import annotations

import argparse
import contextlib
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
from cam import methods  # noqa: E402
from cam.evaluate import read_dataset, score_folder  # noqa: E402
from cam.settings import BEST, PRESETS  # noqa: E402
from cam.train import stratified_folds, train  # noqa: E402

METRICS = ("top1_loc", "max_box_acc_v2")


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4), "max": round(max(values), 4), "folds": len(values)}


ADAPT_GRID = [(k, level) for k in (0.2, 0.3, 0.4, 0.5, 0.6) for level in (0.01, 0.02, 0.04)]


@contextlib.contextmanager
def adapt_constants(fraction: float, level: float):
    """`cam.methods.adapt_contrast`'s two constants set to a candidate's for the duration."""
    saved = methods.ADAPT_MEAN_FRACTION, methods.ADAPT_LEVEL
    methods.ADAPT_MEAN_FRACTION, methods.ADAPT_LEVEL = fraction, level
    try:
        yield
    finally:
        methods.ADAPT_MEAN_FRACTION, methods.ADAPT_LEVEL = saved


def presets(args) -> None:
    model = cam.load_model("default")
    samples = read_dataset(args.folder)
    scored = {name: score_folder(model, args.folder, settings)[0] for name, settings in PRESETS.items()}
    candidates = {}
    for constants in ADAPT_GRID:
        with adapt_constants(*constants):
            candidates[constants] = score_folder(model, args.folder, BEST)[0]
    shipped = (methods.ADAPT_MEAN_FRACTION, methods.ADAPT_LEVEL)
    held_out = {name: {m: [] for m in METRICS} for name in (*PRESETS, "best_selected")}
    gains = {name: {m: [] for m in METRICS} for name in ("best", "best_selected")}
    picks = []
    for repeat in range(args.repeats):
        for k, fold in enumerate(stratified_folds([s.label for s in samples], args.folds, seed=repeat)):
            rest = sorted(set(range(len(samples))) - set(fold))
            pick = max(ADAPT_GRID, key=lambda c: sum(candidates[c].metrics(rest)[m] for m in METRICS))
            picks.append(pick)
            fold_scores = {name: scores.metrics(fold) for name, scores in scored.items()}
            fold_scores["best_selected"] = candidates[pick].metrics(fold)
            for name, metrics in fold_scores.items():
                for m in METRICS:
                    held_out[name][m].append(metrics[m])
            for name, by in gains.items():
                for m in METRICS:
                    by[m].append(fold_scores[name][m] - fold_scores["recommended"][m])
            print(json.dumps({"repeat": repeat, "fold": k, "photos": len(fold), "adapt_selected": pick,
                              **{name: {m: round(v[m], 4) for m in METRICS} for name, v in fold_scores.items()}}),
                  flush=True)
    whole = {f"{k},{level}": {m: round(scores.metrics()[m], 4) for m in METRICS} for (k, level), scores in candidates.items()}
    print(json.dumps({
        "summary": "held-out folds", "photos": len(samples), "folds": args.folds, "repeats": args.repeats,
        "adapt_shipped": shipped, "adapt_grid_on_all_photos": whole,
        **{name: {m: spread(v) for m, v in by.items()} for name, by in held_out.items()},
        **{f"{name}_minus_recommended": {m: {**spread(v), "wins": sum(x > 0 for x in v), "ties": sum(x == 0 for x in v)}
                                         for m, v in by.items()} for name, by in gains.items()},
        "adapt_picks": {f"{k},{level}": picks.count((k, level)) for k, level in sorted(set(picks))}}), flush=True)


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
                                  "start": summary["metrics"]["start"], "best_epoch": summary["metrics"]["best_epoch"],
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
        presets(args) if args.what == "presets" else finetune(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
