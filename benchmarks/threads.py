"""`localize` called from a web server's request threads, as the app calls it; prints JSON.

    python benchmarks/threads.py [--rounds 2]

Each mode runs in a fresh process (OpenMP's thread teams are per process), on a pool of 8 reused
request threads, for the CAM and Grad-CAM on each runtime: the median time of one request at a
time, and photos/s with 8 at once. Modes: `request_threads`, `localize` run on the request thread
itself (the app before `cam.service.confine_torch_threads`); `inference_thread`, the app's way
(`cam.service.analyze` after `confine_torch_threads`: PyTorch's network passes on one inference
thread, a compiled runtime's CAM on the request thread).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "coffee.png"


def measure(mode: str, runtime: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from cam.localize import localize
    from cam.service import ModelCache, analyze, confine_torch_threads

    if mode == "inference_thread":
        confine_torch_threads()
    cache = ModelCache(runtime=runtime)

    def request(method: str) -> float:
        start = time.perf_counter()
        if mode == "inference_thread":
            analyze(cache, "default", str(PHOTO), 5, 0.2, False, 288, False, True, method)
        else:
            localize(cache.get("default"), str(PHOTO), method=method)
        return (time.perf_counter() - start) * 1000

    pool = concurrent.futures.ThreadPoolExecutor(8)
    report = {"mode": mode, "runtime": cache.get("default").runtime}
    for method in ("cam", "gradcam"):
        for _ in range(8):  # every request thread has run some
            list(pool.map(lambda _: request(method), range(8)))
        one_at_a_time = [pool.submit(request, method).result() for _ in range(40)]
        start = time.perf_counter()
        list(pool.map(lambda _: request(method), range(40)))
        report[method] = {"p50_ms_one_at_a_time": round(statistics.median(one_at_a_time), 1),
                          "photos_per_s_8_at_once": round(40 / (time.perf_counter() - start), 1)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.runtime)))
        return
    for _ in range(args.rounds):
        for runtime in ("torch", "openvino"):
            for mode in ("request_threads", "inference_thread"):
                out = subprocess.run([sys.executable, __file__, "--mode", mode, "--runtime", runtime],
                                     capture_output=True, text=True, check=True).stdout
                print(out.strip(), flush=True)


if __name__ == "__main__":
    main()
