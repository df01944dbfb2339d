"""Milliseconds per photo of `localize_batch` by input size and batch size; JSON. The measurement
behind `cam.preprocess.inference_batch_size`.

    python benchmarks/batching.py ../shared/data/imagenet-val-dev [--photos 120] [--repeats 2]
    python benchmarks/batching.py examples --photos 128 --device cuda

FOLDER holds images/ (a dev set) or is a folder of photos; they are decoded first, and repeated up
to `--photos` if fewer. Each row is the best of `--repeats` passes over them at top-1 with `refine`
(the recommended setting's other options), for batches of 1-4 on a CPU and 1-64 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402
import cam.runtime  # noqa: E402
from cam.preprocess import inference_batch_size  # noqa: E402
from cam.localize import localize_batch  # noqa: E402


def main() -> None:
    cam.runtime.steady_allocator()  # as the app and the CLI do at start: the figures are theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--photos", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "openvino"])
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where present)")
    args = parser.parse_args()
    model = cam.load_model("default", device=args.device, runtime=args.runtime)
    folder = args.folder / "images" if (args.folder / "images").is_dir() else args.folder
    photos = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    arrays = [cam.load_image(p) for p in photos[:args.photos]]
    arrays = [arrays[i % len(arrays)] for i in range(args.photos)]
    batches = (1, 2, 3, 4) if model.device.type == "cpu" else (1, 4, 16, 32, 64)
    for size in (224, 288, 320, 384):
        row = {}
        for batch in batches:
            localize_batch(model, arrays[:8], topk=1, input_size=size, batch_size=batch)  # warm-up of this shape
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                localize_batch(model, arrays, topk=1, input_size=size, batch_size=batch)
                best = min(best, time.perf_counter() - started)
            row[f"batch_{batch}_ms"] = round(best / len(arrays) * 1e3, 2)
        print(json.dumps({"device": str(model.device), "runtime": model.runtime, "input_size": size, **row, "default_batch": inference_batch_size(model, (size, size))}),
              flush=True)


if __name__ == "__main__":
    main()
