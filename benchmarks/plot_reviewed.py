"""The review loop's curve as a PNG: held-out AP50 of the boxes `auto` gives against the reviewed
photos a class, in review.txt's order and in a random one, with the maps' box as the line to beat;
one panel per `benchmarks/detector.py --reviewed` JSON output.

    python benchmarks/plot_reviewed.py fruit.json imagenet.json --out docs/reviewed.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def panel(axis, data: dict, test_set: str) -> None:
    """One test set of one run: mean ± sd over the folds for each K."""
    ks = sorted({int(key.split("/")[0]) for key in data if key.split("/")[0].isdigit()})
    for which, colour in (("ours", "tab:blue"), ("random", "tab:orange")):
        keys = [str(k) if k == 0 else f"{k}/{which}" for k in ks]
        means = [data[f"{key}/{test_set}/auto/ap50"]["mean"] for key in keys]
        sds = [data[f"{key}/{test_set}/auto/ap50"]["std"] for key in keys]
        axis.errorbar(ks, means, yerr=sds, marker="o", capsize=3, color=colour,
                      label="auto, review.txt's order" if which == "ours" else "auto, random photos")
    maps = [data[f"{str(k) if k == 0 else f'{k}/ours'}/{test_set}/maps/ap50"]["mean"] for k in ks]
    axis.plot(ks, maps, linestyle="--", color="grey", label="the maps' box (top class)")
    axis.set_xticks(ks)
    axis.set_xlabel("reviewed photos a class")
    axis.set_ylabel("AP50")
    axis.set_ylim(0, 1)
    axis.set_title(f"{data['dataset']}, {test_set} ({data['folds']} folds)")
    axis.grid(alpha=0.3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.runs]
    panels = [(run, name) for run in runs for name in ("heldout", "mixed") if f"0/{name}/auto/ap50" in run]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for axis, (run, name) in zip(axes[0], panels):
        panel(axis, run, name)
    axes[0][0].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
