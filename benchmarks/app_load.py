"""Round trips of the live app's /localize against Gradio's own transport cost; prints JSON.

    python benchmarks/app_load.py [--repeats 20] [--clients 8] [--requests 10] [--soak-seconds 0]
        [--runtime auto|torch|openvino]

Starts the real app (`python app.py`) on a free loopback port and, in this process, a do-nothing
Gradio app with the same inputs and outputs that returns the input photo in every image slot.
Measures the cold start, single-client latency of both (median, p95), the library's own
`localize` time, then a bounded concurrent run (clients x requests) with errors, throughput, p95
and the app's resident memory before and after; an optional soak repeats that for N seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_TEMP = Path(tempfile.gettempdir())  # where the app keeps its cam-* folders
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def percentile(values, q) -> float:
    return float(np.percentile(values, q))


def temp_usage_mb(app_temp: Path) -> float:
    """Megabytes in the app's Gradio cache (uploads and answers) and the cam-* temporary folders
    (result files, training jobs)."""
    total = 0
    for top in [app_temp, *SYSTEM_TEMP.glob("cam-*")]:
        if top.exists():
            total += sum(f.stat().st_size for f in top.rglob("*") if f.is_file())
    return round(total / 2**20, 1)


def job_temp_dirs() -> int:
    """Training jobs' private unpack folders still present (0 once every job has ended)."""
    return len(list(SYSTEM_TEMP.glob("cam-train-*")))


def do_nothing_app():
    """Same inputs and outputs as the real /localize, no work: the transport and encoding cost."""
    import gradio as gr

    def echo(image, *_):
        return image, image, [(image, "a"), (image, "b"), (image, "c"), (image, "d"), (image, "e")], [[1, "x", 0.5, "[]"]], {}

    with gr.Blocks() as demo:
        inputs = [gr.Image(type="filepath"), gr.Dropdown(["default"], value="default"), gr.Slider(1, 10, 5), gr.Slider(0, 1, 0.2),
                  gr.Checkbox(), gr.Slider(0, 1, 0.5), gr.Dropdown([288, 0]), gr.Checkbox(), gr.Checkbox()]
        outputs = [gr.Image(format="jpeg"), gr.Image(format="jpeg"), gr.Gallery(format="jpeg"), gr.Dataframe(), gr.JSON()]
        gr.Button().click(echo, inputs, outputs, api_name="localize")
    return demo


def main() -> None:
    import psutil
    from gradio_client import Client, handle_file

    import cam

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--soak-seconds", type=float, default=0)
    parser.add_argument("--cache-ttl", type=int, default=60,
                        help="seconds the app keeps result files (CAM_CACHE_TTL; the app's own default is 3600)")
    parser.add_argument("--runtime", default="auto", help="what runs the app's networks (its CAM_RUNTIME)")
    parser.add_argument("--train-from-dev", help="during the soak, run one fine-tuning job (mode full) on the "
                        "3-class set benchmarks/finetune.py builds from this ImageNet folder")
    args = parser.parse_args()

    inputs = Path(tempfile.mkdtemp(prefix="bench-inputs-"))  # the photo and the training zip; removed at the end
    photo_path = inputs / "photo_1mp.jpg"
    source = Image.open(ROOT / "examples" / "coffee.png").convert("RGB")
    source.resize((1225, 816), Image.BICUBIC).save(photo_path, quality=92)
    arguments = (handle_file(str(photo_path)), "default", 5, 0.2, False, 0.5, 288, False, True)

    downloads = tempfile.mkdtemp(prefix="bench-downloads-")  # what the clients fetch; removed at the end
    tempfile.tempdir = downloads  # gradio_client also leaves an empty temp folder per file: here, not in /tmp
    port = free_port()
    started = time.perf_counter()
    checkpoints = tempfile.mkdtemp(prefix="bench-checkpoints-")  # the soak's training job writes here
    app_temp = Path(tempfile.mkdtemp(prefix="bench-gradio-"))  # the app's own Gradio cache, measured alone
    app = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "CAM_CHECKPOINTS": checkpoints, "GRADIO_TEMP_DIR": str(app_temp),
                                "CAM_CACHE_TTL": str(args.cache_ttl), "CAM_RUNTIME": args.runtime})
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_up(url)
        client = Client(url, verbose=False, download_files=downloads)
        client.predict(*arguments, api_name="/localize")
        cold_start = time.perf_counter() - started
        temp_at_start = temp_usage_mb(app_temp)

        null_port = free_port()
        do_nothing_app().queue().launch(server_name="127.0.0.1", server_port=null_port, prevent_thread_lock=True, quiet=True)
        null_client = Client(f"http://127.0.0.1:{null_port}/", verbose=False, download_files=downloads)
        null_client.predict(*arguments, api_name="/localize")

        model = cam.load_model("default", device="cpu", runtime=args.runtime)
        times = {"app": [], "do_nothing": [], "library_localize": []}
        for _ in range(args.repeats):  # interleaved, so noise hits all three alike
            for name, call in (("app", lambda: client.predict(*arguments, api_name="/localize")),
                               ("do_nothing", lambda: null_client.predict(*arguments, api_name="/localize")),
                               ("library_localize", lambda: cam.localize(model, photo_path, topk=5))):
                t0 = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - t0) * 1000)
        single = {name: {"p50_ms": round(statistics.median(v), 1), "p95_ms": round(percentile(v, 95), 1)}
                  for name, v in times.items()}

        process = psutil.Process(app.pid)

        clients = [Client(url, verbose=False, download_files=downloads) for _ in range(args.clients)]  # one browser session each, reused

        def burst(duration: float | None) -> dict:
            latencies, errors, lock = [], [], threading.Lock()
            stop_at = time.time() + duration if duration else None

            def worker(own):
                n = 0
                while (stop_at and time.time() < stop_at) or (not stop_at and n < args.requests):
                    t0 = time.perf_counter()
                    try:
                        own.predict(*arguments, api_name="/localize")
                        with lock:
                            latencies.append((time.perf_counter() - t0) * 1000)
                    except Exception as exc:  # counted, reported
                        with lock:
                            errors.append(repr(exc)[:200])
                    n += 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            return {"requests": len(latencies) + len(errors), "errors": len(errors), "first_errors": errors[:3],
                    "throughput_rps": round(len(latencies) / wall, 2), "p50_ms": round(percentile(latencies, 50), 1),
                    "p95_ms": round(percentile(latencies, 95), 1), "rss_mb_after": round(process.memory_info().rss / 2**20, 1)}

        burst(None)  # warm-up: every session holds its last result from here on
        rss_start = process.memory_info().rss / 2**20
        concurrent = [burst(None) for _ in range(3)]  # repeated: memory must stay flat
        report = {
            "photo": "coffee.png resized to 1225x816 JPEG", "runtime": args.runtime,
            "cold_start_s": round(cold_start, 2),
            "single_client": single,
            "ratio_app_to_do_nothing_p50": round(single["app"]["p50_ms"] / single["do_nothing"]["p50_ms"], 2),
            "concurrent": {"clients": args.clients, "requests_each": args.requests, "rss_mb_after_warmup": round(rss_start, 1),
                           "runs": concurrent},
        }
        if args.soak_seconds:
            disk_before = temp_usage_mb(app_temp)
            report["job_temp_dirs_before"] = job_temp_dirs()
            training = {}
            if args.train_from_dev:
                from finetune import build_from_dev

                zip_path, _, _ = build_from_dev(Path(args.train_from_dev), Path(tempfile.mkdtemp(dir=inputs)))

                def train_job():
                    t0 = time.perf_counter()
                    try:
                        status = Client(url, verbose=False, download_files=downloads).predict(handle_file(str(zip_path)), "full", 3, 0.001, 0.2,
                                                                    api_name="/train")[0]
                        training.update(ok=True, status=status[:120])
                    except Exception as exc:
                        training.update(ok=False, error=repr(exc)[:200])
                    training["seconds"] = round(time.perf_counter() - t0, 1)

                trainer = threading.Thread(target=train_job)
                trainer.start()
            soak = burst(args.soak_seconds)
            if args.train_from_dev:
                trainer.join()
            report["soak"] = {"seconds": args.soak_seconds, **soak, "rss_mb_start": round(rss_start, 1),
                              "rss_growth_pct": round(100 * (soak["rss_mb_after"] / rss_start - 1), 1),
                              "temp_mb_at_app_start": temp_at_start, "temp_mb_before": disk_before, "temp_mb_after": temp_usage_mb(app_temp),
                              "job_temp_dirs_after": job_temp_dirs(), "training_job": training}
            time.sleep(args.cache_ttl * 1.5 + 5)  # result files expire after the TTL; the sweep runs every TTL/4
            report["soak"]["temp_mb_after_ttl"] = temp_usage_mb(app_temp)
        print(json.dumps(report, indent=2))
    finally:
        app.terminate()
        app.wait(timeout=30)
        for folder in (inputs, downloads, checkpoints, app_temp):
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
