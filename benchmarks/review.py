"""The Review tab end to end: how soon the next photo with its boxes shows after a save, and the
server's memory over many saves; prints JSON.

    python benchmarks/review.py [--photos 240] [--timed 20] [--saves 200] [--model default]
    python benchmarks/review.py --large 5000   # also: open a zip of 5,000 photos through the API

Starts the real app (`python app.py`, its checkpoints in a scratch folder) and headless Chromium
on the same machine (they share its cores). A zip of `--photos` generated 640x480 JPEGs in three
class folders is opened in the Review tab with `--model`; then "Save and next" is clicked
`--timed` times, each time measuring from the click until the status says the save is kept and
the annotator's canvas shows a new picture (the next photo, its boxes drawn on it). Then
`--saves` more saves, with the server's resident memory (RSS) read every 20. With `--large N`,
a zip of N small photos is opened through gradio_client, and the server's RSS read before and
after, and its peak during the order pass (sampled every 0.2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from app_load import free_port, wait_until_up  # noqa: E402

COLOURS = {"blue": (30, 60, 230), "green": (40, 200, 60), "red": (230, 40, 40)}

# Click "Save and next" and wait, frame by frame, until the status counts the save and the canvas
# shows another picture (the annotator draws the photo and its boxes on it).
SAVE_AND_WAIT = """async (expected) => {
  const signature = () => {
    const canvas = document.querySelector("#review_annotator canvas");
    if (!canvas || !canvas.width || !canvas.height) return "none";  // between two pictures
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0;
    for (let i = 0; i < data.length; i += 997) sum = (sum * 31 + data[i]) | 0;
    return sum + ":" + canvas.width + "x" + canvas.height;
  };
  const before = signature();
  const started = performance.now();
  document.getElementById("review_save").click();
  return await new Promise((resolve) => {
    const poll = () => {
      try {
        const status = document.querySelector("#review_status").innerText;
        const now = signature();
        const changed = now !== before && now !== "none";
        if (status.includes(expected) && changed) return resolve(performance.now() - started);
        if (performance.now() - started > 60000) return resolve(`timed out: status ${status}, canvas changed ${changed}`);
      } catch (error) {
        return resolve(`failed: ${error}`);
      }
      requestAnimationFrame(poll);
    };
    poll();
  });
}"""


def photo(colour, seed: int, size=(640, 480)) -> bytes:
    """A smooth background with one coloured rectangle (a small JPEG), different for every seed."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(rng.integers(0, 120), rng.integers(0, 120), width, dtype=np.float32)
    array = np.repeat(np.broadcast_to(ramp, (height, width))[:, :, None], 3, axis=2).astype(np.uint8)
    w, h = rng.integers(width // 5, width // 2), rng.integers(height // 5, height // 2)
    x, y = rng.integers(0, width - w), rng.integers(0, height - h)
    array[y:y + h, x:x + w] = colour
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def dataset(path: Path, photos: int, size=(640, 480)) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for number in range(photos):
            name = list(COLOURS)[number % 3]
            archive.writestr(f"{name}/{number:05d}.jpg", photo(COLOURS[name], number, size))
    return path


def save(page, saved: int, photos: int) -> float:
    """Save and wait for the next photo: the milliseconds it took."""
    took = page.evaluate(SAVE_AND_WAIT, f"{saved} of {photos} reviewed")
    if isinstance(took, str):
        raise RuntimeError(f"save {saved}: {took}")
    print(f"save {saved}: {took:.0f} ms", file=sys.stderr, flush=True)
    return took


def rss_mb(process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


@contextlib.contextmanager
def served_app(scratch: Path):
    """The real app (`python app.py`) on a free port, its checkpoints and Gradio's files in `scratch`:
    its URL and process; the tail of its log printed where the block fails; stopped after."""
    port = free_port()
    with open(scratch / "app.log", "w") as log:
        app = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_TEMP_DIR": str(scratch / "gradio"),
                                    "CAM_CHECKPOINTS": str(scratch / "checkpoints")})
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_up(url)
            yield url, app
        except BaseException:
            print((scratch / "app.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            app.terminate()
            app.wait(timeout=60)


def app_page(playwright, url: str, wait_seconds: float):
    """A headless Chromium page on the app, every wait (the page's and `expect`'s) up to `wait_seconds`."""
    from playwright.sync_api import expect

    from tests.browser import BROWSER_FLAGS, chromium

    browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=BROWSER_FLAGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(wait_seconds * 1000)
    expect.set_options(timeout=wait_seconds * 1000)
    page.goto(url)
    return page


def open_for_review(page, data: Path, model: str, photos: int) -> float:
    """Open the zip `data` of `photos` photos in the Review tab with `model`, as a person does: the
    seconds from the click on "Open for review" until the tab shows "0 of N reviewed"."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Review").click()
    page.locator("#review_zip input[type=file]").set_input_files(str(data))
    expect(page.locator("#review_zip").get_by_role("cell", name=data.name)).to_be_visible()
    page.locator("#review_model input").fill(model)
    page.locator("#review_model input").press("Enter")
    started = time.perf_counter()
    page.get_by_role("button", name="Open for review").click()
    expect(page.locator("#review_status")).to_contain_text(f"0 of {photos} reviewed")
    seconds = round(time.perf_counter() - started, 2)
    print(f"opened in {seconds} s", file=sys.stderr, flush=True)
    return seconds


def main() -> None:
    import psutil
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=240, help="photos in the reviewed zip")
    parser.add_argument("--timed", type=int, default=20, help="saves whose next photo is timed")
    parser.add_argument("--saves", type=int, default=200, help="further saves, the server's memory read every 20")
    parser.add_argument("--model", default="default")
    parser.add_argument("--large", type=int, default=0, help="also open a zip of this many small photos (API)")
    args = parser.parse_args()
    if args.photos < args.timed + args.saves + 2:
        parser.error("--photos must exceed --timed + --saves: each save shows a photo not yet reviewed")

    scratch = Path(tempfile.mkdtemp(prefix="bench-review-"))
    data = dataset(scratch / "photos.zip", args.photos)
    try:
        with served_app(scratch) as (url, app), sync_playwright() as p:
            process = psutil.Process(app.pid)
            report = {"photos": args.photos, "photo_size": "640x480 JPEG", "model": args.model,
                      "cpus": os.cpu_count(), "rss_mb_at_start": rss_mb(process)}
            page = app_page(p, url, 600)
            report["open_seconds"] = open_for_review(page, data, args.model, args.photos)
            page.wait_for_timeout(1000)
            timings = [save(page, k + 1, args.photos) for k in range(args.timed)]
            report["next_photo_ms"] = {"median": round(statistics.median(timings), 1),
                                       "p90": round(sorted(timings)[int(0.9 * (len(timings) - 1))], 1),
                                       "max": round(max(timings), 1), "all": [round(t) for t in timings]}
            memory = [(args.timed, rss_mb(process))]
            for k in range(args.timed, args.timed + args.saves):
                save(page, k + 1, args.photos)
                if (k + 1 - args.timed) % 20 == 0:
                    memory.append((k + 1, rss_mb(process)))
            report["rss_mb_by_saves"] = memory
            report["rss_growth_mb_over_saves"] = round(memory[-1][1] - memory[0][1], 1)
            page.context.browser.close()
            if args.large:
                report["large"] = open_large(url, process, scratch, args.large, args.model)
        print(json.dumps(report))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def open_large(url: str, process, scratch: Path, photos: int, model: str) -> dict:
    """Open a zip of `photos` small photos through gradio_client: seconds, and the server's RSS
    before, at its peak during the open (sampled), and after."""
    from gradio_client import Client, handle_file

    data = dataset(scratch / "large.zip", photos, size=(320, 240))
    client = Client(url, verbose=False, download_files=str(scratch / "downloads"))
    before, peak, done = rss_mb(process), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(process))
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    _, status = client.predict(handle_file(str(data)), None, model, api_name="/review_open")
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    return {"photos": photos, "photo_size": "320x240 JPEG", "open_seconds": round(seconds, 1),
            "status": status.split(".")[0], "rss_mb_before": before, "rss_mb_peak": peak[0],
            "rss_mb_after": rss_mb(process)}


if __name__ == "__main__":
    main()
