"""Localization quality of plain CAM and each option on a folder with images/ and boxes.csv; JSON.

    python benchmarks/quality.py ../shared/data/imagenet-val-dev

One line per setting: top-1 cls, top-1 loc, GT-known loc, MaxBoxAcc (and its threshold),
MaxBoxAccV2, and the time per image (batched evaluation on this machine's CPU) with its ratio to
plain CAM measured in the same run. With `--cv-splits N`, then a line per setting in CV_SETTINGS:
top-1 loc on one random half of the photos when the box threshold is chosen on the other half
(N splits, both ways), a check that a threshold tuned on the set holds on photos it did not see.
With `--methods`, one line per map maker (CAM, Grad-CAM, Grad-CAM++, LayerCAM) at the paper's
setting and at the recommended one instead. With `--runtimes N`, `evaluate` at the paper's, the
recommended and the best setting on PyTorch and on OpenVINO instead, alternating, N rounds: the
median time per image of each runtime, their ratio, and whether the metrics are the same; then the
best setting on OpenVINO against the recommended one on PyTorch (the best preset's time budget).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataclasses import replace  # noqa: E402

import cam  # noqa: E402
import cam.runtime  # noqa: E402
from cam.evaluate import best_iou, evaluate, read_dataset  # noqa: E402
from cam.settings import BEST, PLAIN, RECOMMENDED  # noqa: E402

SETTINGS = [
    ("plain CAM (paper)", "default", PLAIN),
    ("threshold 0.3 (MaxBoxAcc's tau)", "default", replace(PLAIN, threshold=0.3)),
    ("flip", "default", replace(PLAIN, flip=True)),
    ("input 256", "default", replace(PLAIN, input_size=256)),
    ("input 288", "default", replace(PLAIN, input_size=288)),
    ("input 320", "default", replace(PLAIN, input_size=320)),
    ("input 288 + flip", "default", replace(PLAIN, input_size=288, flip=True)),
    ("refine", "default", replace(PLAIN, refine=True)),
    ("input 288 + refine (recommended)", "default", RECOMMENDED),
    ("input 288 + refine + flip", "default", replace(RECOMMENDED, flip=True)),
    ("input 288 + refine + adapt", "default", replace(RECOMMENDED, adapt=True)),
    ("input 288 + refine + flip + adapt (best)", "default", BEST),
    ("EfficientNet-Lite1 backbone", "efficientnet-lite1", PLAIN),
    ("EfficientNet-Lite2 backbone", "efficientnet-lite2", PLAIN),
    ("EfficientNet-Lite1, input 288 + refine", "efficientnet-lite1", RECOMMENDED),
    ("EfficientNet-Lite2, input 288 + refine", "efficientnet-lite2", RECOMMENDED),
]

# `--methods`: each map maker (cam.methods) at the paper's setting and at the recommended one.
METHOD_SETTINGS = [(f"{method}{suffix}", "default", replace(base, method=method))
                   for suffix, base in (("", PLAIN), (", input 288 + refine", RECOMMENDED))
                   for method in ("cam", "gradcam", "gradcam++", "layercam")]

CV_SETTINGS = ["plain CAM (paper)", "input 288", "input 288 + refine (recommended)",
               "input 288 + refine + flip + adapt (best)"]
CV_THRESHOLDS = np.round(np.arange(0.05, 0.65, 0.05), 2)


def threshold_cross_validation(model, folder, settings: cam.Settings, splits: int, seed: int = 0) -> dict:
    """Held-out top-1 loc when the threshold is picked on the other half (mean over 2 x `splits`)."""
    samples = read_dataset(folder)
    hits = np.zeros((len(samples), len(CV_THRESHOLDS)), dtype=bool)  # top-1 right and IoU >= 0.5
    for i, sample in enumerate(samples):
        top = cam.localize(model, Path(folder) / "images" / sample.file, settings, topk=1).predictions[0]
        if top.class_index == sample.label:
            hits[i] = [best_iou(cam.boxes_from_map(top.cam, tau), sample.boxes) >= 0.5 for tau in CV_THRESHOLDS]
    rng = np.random.default_rng(seed)
    held_out, chosen = [], collections.Counter()
    for _ in range(splits):
        order = rng.permutation(len(samples))
        halves = (order[: len(order) // 2], order[len(order) // 2:])
        for tune, test in (halves, halves[::-1]):
            best = int(hits[tune].mean(0).argmax())
            chosen[float(CV_THRESHOLDS[best])] += 1
            held_out.append(float(hits[test, best].mean()))
    whole = hits.mean(0)
    return {"splits": splits, "held_out_top1_loc_mean": round(float(np.mean(held_out)), 3),
            "held_out_top1_loc_range": [round(min(held_out), 3), round(max(held_out), 3)],
            "thresholds_chosen": dict(chosen.most_common()),
            "whole_set_top1_loc_by_threshold": dict(zip(CV_THRESHOLDS.tolist(), whole.round(3).tolist())),
            "whole_set_at_default": round(float(whole[np.isclose(CV_THRESHOLDS, settings.threshold)][0]), 3)}


def compare_runtimes(folder, rounds: int) -> None:
    """One line per setting: `evaluate`'s median ms per image on each runtime, side by side."""
    import statistics

    models = {runtime: cam.load_model("default", device="cpu", runtime=runtime) for runtime in ("torch", "openvino")}
    settings = {"plain": PLAIN, "recommended": RECOMMENDED, "best": BEST}
    times, metrics = collections.defaultdict(list), {}
    for _ in range(rounds):  # every setting in every round, so that the machine's drift hits all alike
        for name, options in settings.items():
            for runtime, model in models.items():
                metrics[name, runtime], _ = evaluate(model, folder, options)
                times[name, runtime].append(metrics[name, runtime].pop("ms_per_image"))
    median = {key: round(statistics.median(values), 2) for key, values in times.items()}
    for name in settings:
        quality = {k: round(metrics[name, "openvino"][k], 4) for k in ("top1_loc", "gt_known_loc", "max_box_acc_v2")}
        print(json.dumps({"setting": name, **quality,
                          "ms_per_image": {runtime: median[name, runtime] for runtime in models},
                          "all_ms_per_image": {runtime: times[name, runtime] for runtime in models},
                          "speedup": round(median[name, "torch"] / median[name, "openvino"], 2),
                          "same_metrics": metrics[name, "torch"] == metrics[name, "openvino"]}), flush=True)
    print(json.dumps({"best_openvino_ms": median["best", "openvino"], "recommended_torch_ms": median["recommended", "torch"],
                      "best_openvino_over_recommended_torch": round(median["best", "openvino"]
                                                                    / median["recommended", "torch"], 2)}), flush=True)


def main() -> None:
    cam.runtime.steady_allocator()  # as the app and the CLI do at start: the figures are theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--cv-splits", type=int, default=0, help="threshold cross-validation splits (0: none)")
    parser.add_argument("--methods", action="store_true", help="the table of map makers instead of the settings")
    parser.add_argument("--runtimes", type=int, default=0, metavar="N",
                        help="instead: evaluate's time per image on PyTorch and OpenVINO, N alternating rounds")
    args = parser.parse_args()
    if args.runtimes:
        compare_runtimes(args.folder, args.runtimes)
        return
    models, base_ms = {}, None
    for name, spec, settings in METHOD_SETTINGS if args.methods else SETTINGS:
        try:
            if spec not in models:
                models[spec] = cam.load_model(spec, device="cpu")
            model = models[spec]
        except ValueError as exc:  # an optional backbone package is not installed
            print(json.dumps({"setting": name, "skipped": str(exc)}), flush=True)
            continue
        metrics, _ = evaluate(model, args.folder, settings)
        metrics.pop("curve")
        base_ms = base_ms or metrics["ms_per_image"]
        row = {"setting": name, "model": spec, **settings.to_dict(),
               **{k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()},
               "latency_ratio_to_plain": round(metrics["ms_per_image"] / base_ms, 2)}
        print(json.dumps(row), flush=True)
    for name, spec, settings in [] if args.methods else SETTINGS:
        if args.cv_splits and name in CV_SETTINGS:
            cv = threshold_cross_validation(models[spec], args.folder, settings, args.cv_splits)
            print(json.dumps({"setting": name, "threshold_cross_validation": cv}), flush=True)


if __name__ == "__main__":
    main()
