"""A large upload with "Train a detector too": `cam train DATA.zip --detector` on a zip of many small
photos, in its own process as the app runs it; prints JSON with the wall time and the process's
peak memory (its maximum resident set size).

    python benchmarks/train_memory.py ../shared/data/fruit/train [--photos 5000] [--side 96]

The photos are thumbnails (`--side` px on the long side) of the folder's class folders' photos,
each used again under new names with a seeded crop and mirror until the zip holds `--photos`,
written to a temporary folder and never kept. The detector learns from at most
`cam.train_detector.MAX_PHOTOS` of them, whatever the zip holds.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]


def thumbnails_zip(folder: Path, count: int, side: int, path: Path) -> dict:
    """A zip of `count` thumbnails made from `folder`'s class folders, spread evenly over its classes."""
    rng = random.Random(0)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    sources = {c.name: sorted(q for q in c.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in classes}
    made = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for n in range(count):
            name = classes[n % len(classes)].name
            image = ImageOps.exif_transpose(Image.open(rng.choice(sources[name]))).convert("RGB")
            width, height = image.size
            crop = rng.uniform(0.7, 1.0)
            x, y = rng.uniform(0, 1 - crop) * width, rng.uniform(0, 1 - crop) * height
            image = image.crop((int(x), int(y), int(x + crop * width), int(y + crop * height)))
            image.thumbnail((side, side))
            if rng.random() < 0.5:
                image = ImageOps.mirror(image)
            data = io.BytesIO()
            image.save(data, "JPEG", quality=85)
            archive.writestr(f"{name}/{n:05d}.jpg", data.getvalue())
            made[name] = made.get(name, 0) + 1
    return made


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of class folders of photos")
    parser.add_argument("--photos", type=int, default=5000)
    parser.add_argument("--side", type=int, default=96)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cam-bench-memory-") as scratch_name:
        scratch = Path(scratch_name)
        data = scratch / "thumbnails.zip"
        per_class = thumbnails_zip(args.folder, args.photos, args.side, data)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "cam", "train", str(data), "--detector", "--out",
                               str(scratch / "checkpoints")], cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, the largest child
        if done.returncode != 0:
            sys.exit(done.stderr)
        summary = json.loads(done.stdout.splitlines()[-1])
        print(json.dumps({"photos": args.photos, "side": args.side, "per_class": per_class,
                          "zip_mb": round(data.stat().st_size / 2**20, 1), "seconds": round(seconds, 1),
                          "peak_rss_gb": round(peak_kib / 2**20, 3),
                          "detector": summary["metrics"]["detector"], "val_accuracy": summary["val_accuracy"]},
                         indent=2))


if __name__ == "__main__":
    main()
