"""Fine-tuning benchmark: zip to saved checkpoint, then test accuracy and localization; prints JSON.

    python benchmarks/finetune.py DATA.zip [--test DIR] [--mode head|full|both]
    python benchmarks/finetune.py --from-dev ../shared/data/imagenet-val-dev [--mode both] [--repeats N]
        [--held-out F]
    python benchmarks/finetune.py --from-folder ../shared/data/hymenoptera-train [--mode both] [--repeats N]
        [--held-out F]

With --from-dev, a 3-class photo set is built (in a temporary folder) from an ImageNet folder with
boxes.csv, from ImageNet's superclasses 'bird' (7-24, 80-100, 127-146), 'dog' (151-268) and
'reptile' (25-68, amphibians included), a fraction of each class (--held-out, default a third)
held out as the test set (a seeded shuffle; labels are class indices in sorted folder order, boxes
kept); the rest is zipped as one folder per class. With --repeats N the whole run is repeated over
N different held-out sets and a last line gives the means, since 21 test photos make one run's
accuracy move in steps of 0.05. Smaller --held-out fractions train on more photos: a learning curve.
The 314-photo dev set holds 65 such photos (20 birds, 33 dogs, 12 reptiles), not ~170;
a broader split (animal / artifact / food) reached only 0.72-0.78 held-out accuracy, as its test
photos come from ImageNet classes never seen in training.

With --from-folder, a folder of one folder per class (no boxes) is split the same way, a seeded
stratified `--held-out` fraction of each class kept for testing, and the held-out photos give test
accuracy only (classified at the model's own input size, as training validates); with --repeats N,
a last line gives the mean, the standard deviation and the range over the N splits.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
from cam.evaluate import evaluate  # noqa: E402
from cam.settings import RECOMMENDED  # noqa: E402
from cam.train import train  # noqa: E402

BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))
GROUPS = {"bird": lambda c: c in BIRDS, "dog": lambda c: 151 <= c <= 268, "reptile": lambda c: 25 <= c <= 68}


def build_from_dev(dev: Path, work: Path, seed: int = 0, held_out: float = 1 / 3,
                   per_class: int = 70) -> tuple[Path, Path, int]:
    """Write work/data.zip (training photos) and work/test/ (images/ + boxes.csv, `held_out` of each
    class); return their paths and the number of photos."""
    rows = list(csv.DictReader((dev / "boxes.csv").open()))
    labels = {r["file"]: int(r["label"]) for r in rows}
    names = sorted(GROUPS)
    test = work / "test"
    (test / "images").mkdir(parents=True)
    zip_path, test_files, total = work / "data.zip", set(), 0
    with zipfile.ZipFile(zip_path, "w") as archive:
        for index, name in enumerate(names):
            files = sorted(f for f, c in labels.items() if GROUPS[name](c))[:per_class]
            random.Random(seed).shuffle(files)
            total += len(files)
            for i, file in enumerate(files):
                if int(round((i + 1) * held_out, 9)) > int(round(i * held_out, 9)):  # every 1/held_out-th photo
                    shutil.copy(dev / "images" / file, test / "images" / file)
                    test_files.add((file, index))
                else:
                    archive.write(dev / "images" / file, f"photos/{name}/{file}")
    with (test / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "x0", "y0", "x1", "y1"])
        for r in rows:
            for file, index in test_files:
                if r["file"] == file:
                    writer.writerow([file, index, r["x0"], r["y0"], r["x1"], r["y1"]])
    return zip_path, test, total


def build_from_folder(folder: Path, work: Path, seed: int = 0, held_out: float = 1 / 3) -> tuple[Path, list, int]:
    """Write work/data.zip from `folder`'s class folders less a seeded `held_out` fraction of each
    class; return it, the held-out [(path, class index)] and the number of photos."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    zip_path, test, total = work / "data.zip", [], 0
    with zipfile.ZipFile(zip_path, "w") as archive:
        for index, name in enumerate(classes):
            files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            random.Random(seed).shuffle(files)
            total += len(files)
            for i, path in enumerate(files):
                if int(round((i + 1) * held_out, 9)) > int(round(i * held_out, 9)):
                    test.append((path, index))
                else:
                    archive.write(path, f"photos/{name}/{path.name}")
    return zip_path, test, total


def run(zip_path: Path, test, mode: str, out: Path, input_size: int) -> dict:
    start = time.perf_counter()
    summary = train(zip_path, mode=mode, out=out, input_size=input_size)
    row = {"mode": mode, "train_input_size": input_size, "zip_to_checkpoint_s": round(time.perf_counter() - start, 2),
           "val_accuracy": round(summary["val_accuracy"], 3), "train_images": summary["metrics"]["train_images"],
           "val_images": summary["metrics"]["val_images"]}
    if isinstance(test, list):  # held-out photos without boxes: accuracy only
        model = cam.load_model(summary["checkpoint"])
        results = cam.localize_batch(model, [path for path, _ in test], topk=1, input_size=None, refine=False)
        hits = sum(r.predictions[0].class_index == label for r, (_, label) in zip(results, test))
        row.update({"test_images": len(test), "test_accuracy": round(hits / len(test), 3)})
    elif test:
        model = cam.load_model(summary["checkpoint"])
        metrics, _ = evaluate(model, test)
        row.update({"test_images": metrics["images"], "test_accuracy": round(metrics["top1_cls"], 3),
                    "test_top1_loc": round(metrics["top1_loc"], 3), "test_gt_known_loc": round(metrics["gt_known_loc"], 3),
                    "test_max_box_acc_v2": round(metrics["max_box_acc_v2"], 3),
                    "localization_setting": RECOMMENDED.to_dict()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip", nargs="?", help="a dataset zip (one folder per class)")
    parser.add_argument("--test", help="a test folder with images/ and boxes.csv (labels: sorted class order)")
    parser.add_argument("--from-dev", help="build the 3-class set from this ImageNet folder instead")
    parser.add_argument("--from-folder", help="split this folder of class folders into training and held-out photos")
    parser.add_argument("--mode", choices=["head", "full", "both"], default="head")
    parser.add_argument("--input-size", type=int, default=None, help="training input side (default: the model's)")
    parser.add_argument("--repeats", type=int, default=1, help="with --from-dev: runs over different held-out sets")
    parser.add_argument("--held-out", type=float, default=1 / 3, help="with --from-dev: the test fraction of each class")
    args = parser.parse_args()
    if not (args.zip or args.from_dev or args.from_folder):
        parser.error("give DATA.zip, --from-dev DIR or --from-folder DIR")
    if not 0 < args.held_out < 1:
        parser.error("--held-out must be between 0 and 1")
    modes = ["head", "full"] if args.mode == "both" else [args.mode]
    rows = []
    for seed in range(args.repeats if args.from_dev or args.from_folder else 1):
        with tempfile.TemporaryDirectory(prefix="cam-bench-") as scratch:
            work = Path(scratch)
            if args.from_folder:
                zip_path, test, total = build_from_folder(Path(args.from_folder), work, seed, args.held_out)
                print(json.dumps({"photo_set": args.from_folder, "photos": total, "split_seed": seed,
                                  "held_out": round(args.held_out, 3)}), flush=True)
            elif args.from_dev:
                zip_path, test, total = build_from_dev(Path(args.from_dev), work, seed, args.held_out)
                print(json.dumps({"photo_set": "3 classes from imagenet-val-dev", "photos": total, "split_seed": seed,
                                  "held_out": round(args.held_out, 3)}), flush=True)
            else:
                zip_path, test = Path(args.zip), Path(args.test) if args.test else None
            for mode in modes:
                rows.append(run(zip_path, test, mode, work / "checkpoints", args.input_size))
                print(json.dumps(rows[-1]), flush=True)
    if len(rows) > len(modes):
        for mode in modes:
            mine = [r for r in rows if r["mode"] == mode]
            keys = [k for k, v in mine[0].items() if isinstance(v, float)]
            print(json.dumps({"mode": mode, "runs": len(mine),
                              **{f"mean_{k}": round(statistics.mean(r[k] for r in mine), 3) for k in keys},
                              **{f"std_{k}": round(statistics.stdev(r[k] for r in mine), 3) for k in keys},
                              **{f"range_{k}": [min(r[k] for r in mine), max(r[k] for r in mine)] for k in keys}}),
                  flush=True)


if __name__ == "__main__":
    main()
