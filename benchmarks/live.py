"""The Live tab's frame rate end to end, and what the server holds after tabs closed mid-stream; prints JSON.

    python benchmarks/live.py [--photo examples/chelsea.png] [--seconds 20] [--streams 3]

Starts the real app (`python app.py`) and headless Chromium, whose fake camera plays a 640x480
video of the photo panning (10 frames/s of fresh pictures). Each stream counts the live picture's
updates in the page for `--seconds` after a 2 s warm-up, then its tab is closed mid-stream. The
browser runs on the same machine as the server, so the two share its cores. Reports frames per
second, the gaps between updates, and the app's resident memory and the files it keeps (Gradio's cache, result folders) after each stream.
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
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app_load import free_port, wait_until_up  # noqa: E402


def app_files(app_temp: Path, pid: int) -> int:
    """Files in the app's Gradio cache and its own result folders (those that name `pid` as owner)."""
    owned = [p for p in Path(tempfile.gettempdir()).glob("cam-outputs-*")
             if (p / "owner.pid").is_file() and (p / "owner.pid").read_text() == str(pid)]
    return sum(1 for folder in [app_temp, *owned] if folder.exists() for f in folder.rglob("*") if f.is_file())


def main() -> None:
    import psutil
    from playwright.sync_api import sync_playwright

    from cam.data import load_image
    from tests.images import write_camera_video
    from tests.browser import BROWSER_FLAGS, chromium, fake_camera_flags, start_live

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default=str(ROOT / "examples" / "chelsea.png"))
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per stream")
    parser.add_argument("--streams", type=int, default=3, help="streams, one after another, each tab closed mid-stream")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-live-"))
    video = scratch / "camera.y4m"
    write_camera_video(video, load_image(args.photo))
    app_temp = scratch / "gradio"
    port = free_port()
    app = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "GRADIO_TEMP_DIR": str(app_temp),
                                "CAM_LIVE_SECONDS": str(int(args.seconds + 15))})
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url)
        process = psutil.Process(app.pid)
        report = {"photo": Path(args.photo).name, "camera": "640x480 Y4M, 10 frames/s", "cpus": os.cpu_count(),
                  "rss_mb_at_start": round(process.memory_info().rss / 2**20, 1),
                  "files_at_start": app_files(app_temp, app.pid), "streams": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                        args=BROWSER_FLAGS + fake_camera_flags(video))
            for _ in range(args.streams):
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(120_000)
                page.goto(url)
                start_live(page)
                page.wait_for_function("window.overlayUpdates.length >= 3")  # the model is loaded, frames flow
                time.sleep(2)
                page.evaluate("window.overlayUpdates = []")
                time.sleep(args.seconds)
                times = page.evaluate("window.overlayUpdates")
                page.close()  # mid-stream
                gaps = np.diff(times)
                report["streams"].append({
                    "updates": len(times), "fps": round((len(times) - 1) / ((times[-1] - times[0]) / 1000), 2),
                    "gap_ms_p50": round(float(np.median(gaps)), 1), "gap_ms_p95": round(float(np.percentile(gaps, 95)), 1),
                    "rss_mb_after": round(process.memory_info().rss / 2**20, 1), "files_after": app_files(app_temp, app.pid)})
            browser.close()
        report["fps_median"] = statistics.median(s["fps"] for s in report["streams"])
        print(json.dumps(report, indent=2))
    finally:
        app.terminate()
        app.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
