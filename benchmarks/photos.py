"""Phone photos against small ones, side by side in one run; prints JSON.

    python benchmarks/photos.py ../shared/data/imagenet-val-dev/images [--photos 40] [--repeats 3]
        [--app-repeats 15] [--visitor-seconds 60] [--skip-app]

Makes, in a temporary folder that is removed at the end, two versions of the first N photos of
FOLDER: 12 MP phone-like JPEGs (upscaled to 4032 px on the longer side, a little noise, quality
92, every other one stored on its side with EXIF orientation 6, as phones do) and the same photos
at 640 px. Then measures, on the default model:

- `localize_batch` throughput on each set (runs interleaved, median of the repeats) and their ratio;
- agreement of the 12 MP answers with localizing the fully decoded photo passed as an array: same
  top-1 class, and the top-1 box's IoU;
- the peak memory of `localize_batch` over each set with every Result kept (a fresh process each);
- `cam label` photos per second on each set;
- the app: `/localize` round trips (gradio_client) for one 12 MP and one 640 px upload, interleaved,
  and the server's memory growth after 8 new visitors each uploading for `--visitor-seconds`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PHONE_SIDE = 4032
SMALL_SIDE = 640


def make_photos(folder: Path, count: int, out: Path) -> tuple[Path, Path]:
    """Write the 12 MP and the 640 px versions of the first `count` photos of `folder` under `out`."""
    phone, small = out / "phone", out / "small"
    phone.mkdir()
    small.mkdir()
    rng = np.random.default_rng(0)
    sources = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    for i, path in enumerate(sources):
        image = Image.open(path).convert("RGB")
        scale = PHONE_SIDE / max(image.size)
        big = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))
        noisy = (big + rng.normal(0, 3, big.shape)).clip(0, 255).astype(np.uint8)
        stored, exif = Image.fromarray(noisy), Image.Exif()
        if i % 2:  # stored on its side, upright through its EXIF orientation
            stored, exif[0x0112] = stored.transpose(Image.Transpose.ROTATE_90), 6
        stored.save(phone / f"{path.stem}.jpg", quality=92, exif=exif.tobytes())
        scale = SMALL_SIDE / max(image.size)
        image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC).save(
            small / f"{path.stem}.jpg", quality=92)
    return phone, small


def photos_in(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.iterdir())]


def throughput(model, sets: dict[str, Path], repeats: int) -> dict:
    """Photos per second of `localize_batch` on each set, runs interleaved; median of the repeats."""
    import cam

    rates = {name: [] for name in sets}
    for _ in range(repeats):
        for name, folder in sets.items():
            paths = photos_in(folder)
            t0 = time.perf_counter()
            cam.localize_batch(model, paths)
            rates[name].append(len(paths) / (time.perf_counter() - t0))
    return {name: {"photos_per_second": round(statistics.median(r), 2), "runs": [round(x, 2) for x in r]}
            for name, r in rates.items()}


def agreement(model, phone: Path) -> dict:
    """The 12 MP answers against the fully decoded photos passed as arrays."""
    import cam

    same_class, ious = [], []
    for path in photos_in(phone):
        reduced = cam.localize(model, path).predictions[0]
        full = cam.localize(model, cam.load_image(path)).predictions[0]
        same_class.append(reduced.class_index == full.class_index)
        if reduced.class_index == full.class_index and reduced.boxes and full.boxes:
            ious.append(cam.iou(reduced.boxes[0], full.boxes[0]))
        elif not reduced.boxes and not full.boxes:
            ious.append(1.0)
        else:
            ious.append(0.0)
    ious = np.array(ious)
    return {"photos": len(same_class), "same_top1_class": round(float(np.mean(same_class)), 3),
            "top1_box_iou_at_least_0.9": round(float(np.mean(ious >= 0.9)), 3),
            "top1_box_iou_median": round(float(np.median(ious)), 4), "top1_box_iou_min": round(float(ious.min()), 4)}


def memory_child(folder: str) -> None:
    """In a fresh process: the resident memory's peak above its level before `localize_batch` runs
    over every photo of `folder`, each Result kept."""
    import gc

    import psutil

    import cam

    model = cam.load_model("default")
    paths = photos_in(Path(folder))
    cam.localize_batch(model, paths[:4])  # warm: the runtime's buffers exist before the baseline
    gc.collect()
    process, peak, running = psutil.Process(), [0], [True]
    base = process.memory_info().rss

    def sample():
        while running[0]:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results = cam.localize_batch(model, paths)
    running[0] = False
    sampler.join()
    held = process.memory_info().rss
    print(json.dumps({"photos": len(results), "peak_mb_above_start": round((peak[0] - base) / 2**20, 1),
                      "held_mb_after": round((held - base) / 2**20, 1)}))


def memory(sets: dict[str, Path]) -> dict:
    out = {}
    for name, folder in sets.items():
        done = subprocess.run([sys.executable, __file__, "--memory-child", str(folder)], capture_output=True, text=True,
                              check=True, cwd=ROOT)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def label_rates(sets: dict[str, Path], scratch: Path, repeats: int) -> dict:
    """Photos per second of `cam.label.label` (a fresh output folder each run) on each set."""
    from cam.label import label

    rates = {name: [] for name in sets}
    for run in range(repeats):
        for name, folder in sets.items():
            summary = label([str(folder)], scratch / f"label-{name}-{run}")
            rates[name].append(summary["photos_per_second"])
    return {name: {"photos_per_second": round(statistics.median(r), 2), "runs": r} for name, r in rates.items()}


def start_app(port: int, app_temp: Path):
    return subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "GRADIO_TEMP_DIR": str(app_temp)})


def app_round_trips(sets: dict[str, Path], scratch: Path, repeats: int) -> dict:
    """Median `/localize` round trip of one photo of each set, the calls interleaved."""
    from app_load import free_port, wait_until_up
    from gradio_client import Client, handle_file

    port, app_temp = free_port(), Path(tempfile.mkdtemp(dir=scratch))
    app = start_app(port, app_temp)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(scratch))
        photos = {name: photos_in(folder)[1] for name, folder in sets.items()}  # a photo stored on its side
        times = {name: [] for name in sets}
        for _ in range(repeats + 1):
            for name, photo in photos.items():
                t0 = time.perf_counter()
                client.predict(handle_file(photo), api_name="/localize")
                times[name].append((time.perf_counter() - t0) * 1000)
        medians = {name: round(statistics.median(t[1:]), 1) for name, t in times.items()}  # the first is warm-up
        return {"p50_ms": medians, "ratio_phone_to_small": round(medians["phone"] / medians["small"], 2)}
    finally:
        app.terminate()
        app.wait(timeout=30)


def app_visitors(folder: Path, scratch: Path, visitors: int, seconds: float) -> dict:
    """A fresh server; its resident memory after `visitors` new sessions uploaded photos of `folder`
    for `seconds` each (at once), above its memory after one warm-up request."""
    import psutil
    from app_load import free_port, wait_until_up
    from gradio_client import Client, handle_file

    port, app_temp = free_port(), Path(tempfile.mkdtemp(dir=scratch))
    app = start_app(port, app_temp)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url)
        paths = photos_in(folder)
        Client(url, verbose=False, download_files=str(scratch)).predict(handle_file(paths[0]), api_name="/localize")
        process = psutil.Process(app.pid)
        before = process.memory_info().rss
        counts = []

        def visitor(number: int) -> None:
            client, n = Client(url, verbose=False, download_files=str(scratch)), 0
            stop = time.time() + seconds
            while time.time() < stop:
                client.predict(handle_file(paths[(number + n) % len(paths)]), api_name="/localize")
                n += 1
            counts.append(n)

        threads = [threading.Thread(target=visitor, args=(i,)) for i in range(visitors)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return {"requests": sum(counts), "requests_per_second": round(sum(counts) / wall, 2),
                "rss_mb_growth": round((process.memory_info().rss - before) / 2**20, 1)}
    finally:
        app.terminate()
        app.wait(timeout=30)


def main() -> None:
    from cam.runtime import steady_allocator

    steady_allocator()  # as the app and the CLI do at start: the figures are theirs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?")
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--app-repeats", type=int, default=15)
    parser.add_argument("--visitors", type=int, default=8)
    parser.add_argument("--visitor-seconds", type=float, default=60)
    parser.add_argument("--skip-app", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child)
    if args.folder is None:
        parser.error("FOLDER is required")

    import cam

    scratch = Path(tempfile.mkdtemp(prefix="bench-photos-"))
    try:
        phone, small = make_photos(args.folder, args.photos, scratch)
        sets = {"small": small, "phone": phone}
        model = cam.load_model("default")
        cam.localize_batch(model, photos_in(small)[:4])  # warm-up
        rates = throughput(model, sets, args.repeats)
        report = {
            "photos": f"{args.photos} of {args.folder}: {SMALL_SIDE} px and {PHONE_SIDE} px (12 MP) JPEGs",
            "runtime": model.runtime,
            "localize_batch": {**rates, "ratio_phone_to_small": round(
                rates["phone"]["photos_per_second"] / rates["small"]["photos_per_second"], 2)},
            "agreement_with_full_decode": agreement(model, phone),
            "memory": memory(sets),
            "label": label_rates(sets, scratch, max(1, args.repeats - 1)),
        }
        mem = report["memory"]
        mem["phone_peak_minus_small_peak_mb"] = round(mem["phone"]["peak_mb_above_start"]
                                                      - mem["small"]["peak_mb_above_start"], 1)
        lab = report["label"]
        lab["ratio_phone_to_small"] = round(lab["phone"]["photos_per_second"] / lab["small"]["photos_per_second"], 2)
        if not args.skip_app:
            app = {"round_trip": app_round_trips(sets, scratch, args.app_repeats)}
            app["visitors"] = {name: app_visitors(folder, scratch, args.visitors, args.visitor_seconds)
                               for name, folder in sets.items()}
            app["visitors"]["phone_minus_small_mb"] = round(app["visitors"]["phone"]["rss_mb_growth"]
                                                            - app["visitors"]["small"]["rss_mb_growth"], 1)
            report["app"] = app
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
