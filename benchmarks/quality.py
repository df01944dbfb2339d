"""Localization quality of plain CAM and each option on a folder with images/ and boxes.csv; JSON.

    python benchmarks/quality.py ../shared/data/imagenet-val-dev

One line per setting: top-1 cls, top-1 loc, GT-known loc, MaxBoxAcc (and its threshold),
MaxBoxAccV2, and the time per image (batched evaluation on this machine's CPU) with its ratio to
plain CAM measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
from cam.evaluate import evaluate  # noqa: E402
from cam.localize import PLAIN, RECOMMENDED  # noqa: E402

SETTINGS = [
    ("plain CAM (paper)", "default", PLAIN),
    ("threshold 0.3 (MaxBoxAcc's tau)", "default", {**PLAIN, "threshold": 0.3}),
    ("flip", "default", {**PLAIN, "flip": True}),
    ("input 256", "default", {**PLAIN, "input_size": 256}),
    ("input 288", "default", {**PLAIN, "input_size": 288}),
    ("input 320", "default", {**PLAIN, "input_size": 320}),
    ("input 288 + flip", "default", {**PLAIN, "input_size": 288, "flip": True}),
    ("refine", "default", {**PLAIN, "refine": True}),
    ("input 288 + refine (recommended)", "default", RECOMMENDED),
    ("input 288 + refine + flip", "default", {**RECOMMENDED, "flip": True}),
    ("EfficientNet-Lite1 backbone", "efficientnet-lite1", PLAIN),
    ("EfficientNet-Lite2 backbone", "efficientnet-lite2", PLAIN),
    ("EfficientNet-Lite1, input 288 + refine", "efficientnet-lite1", RECOMMENDED),
    ("EfficientNet-Lite2, input 288 + refine", "efficientnet-lite2", RECOMMENDED),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    args = parser.parse_args()
    models, base_ms = {}, None
    for name, spec, settings in SETTINGS:
        try:
            if spec not in models:
                models[spec] = cam.load_model(spec, device="cpu")
            model = models[spec]
        except ValueError as exc:  # an optional backbone package is not installed
            print(json.dumps({"setting": name, "skipped": str(exc)}), flush=True)
            continue
        metrics, _ = evaluate(model, args.folder, **settings)
        metrics.pop("curve")
        base_ms = base_ms or metrics["ms_per_image"]
        row = {"setting": name, "model": spec, **settings,
               **{k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()},
               "latency_ratio_to_plain": round(metrics["ms_per_image"] / base_ms, 2)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
