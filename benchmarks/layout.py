"""Forward-pass time with the weights in PyTorch's default layout and in channels-last (what
`cam.load_model` uses), side by side on random input; prints JSON.

    python benchmarks/layout.py [default timm:resnet50 torchvision:densenet121 ...]

Specs other than 'default' are built with random weights (no download): the layout's speed does
not depend on the values.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cam  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", default=["default"])
    parser.add_argument("--repeats", type=int, default=40, help="passes of one image (batches get a sixth)")
    args = parser.parse_args()
    for spec in args.specs:
        model = cam.load_model(spec, pretrained=spec == "default", device="cpu")
        channels_last = model.net
        default_layout = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
        side = model.input_size[0]
        row = {"model": spec, "threads": torch.get_num_threads()}
        for batch, size in ((1, side), (1, 288), (8, side)):
            x = torch.randn(batch, 3, size, size)
            times = {"default_layout": [], "channels_last": []}
            with torch.inference_mode():
                for net in (default_layout, channels_last):
                    net(x)  # warm up
                for _ in range(args.repeats if batch == 1 else max(3, args.repeats // 6)):
                    for name, net in (("default_layout", default_layout), ("channels_last", channels_last)):
                        start = time.perf_counter()
                        net(x)
                        times[name].append((time.perf_counter() - start) * 1000)
            medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
            row[f"batch{batch}_{size}px_ms"] = {**medians, "speedup": round(medians["default_layout"] / medians["channels_last"], 2)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
