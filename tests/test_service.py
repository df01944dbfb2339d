"""Where the app runs PyTorch: its network passes on one inference thread, a compiled runtime's CAM
on the request thread, and every other thread on one PyTorch thread (no OpenMP team of its own)."""

import dataclasses
import threading

import pytest
import torch

import cam.service as service
from cam.service import ModelCache, analyze, confine_torch_threads


def _where_localize_runs(monkeypatch, model, method: str) -> tuple[str, int]:
    seen = []

    def recording(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return "result"

    monkeypatch.setattr(service, "localize", recording)
    cache = ModelCache(runtime="torch")
    monkeypatch.setattr(cache, "get", lambda choice: model)
    assert analyze(cache, "default", None, 2, 0.2, False, 288, False, True, method) == "result"
    return seen[0]


def test_pytorch_passes_run_on_the_inference_thread_with_every_core(monkeypatch, tiny_model):
    for method in ("auto", "gradcam"):
        name, threads = _where_localize_runs(monkeypatch, tiny_model, method)
        assert name.startswith("cam-inference") and threads == service.INFERENCE_THREADS


def test_a_compiled_runtimes_cam_runs_on_the_request_thread(monkeypatch, tiny_model):
    compiled = dataclasses.replace(tiny_model, runtime="openvino", runner=object())  # never called here
    request = threading.current_thread().name
    assert _where_localize_runs(monkeypatch, compiled, "auto")[0] == request
    assert _where_localize_runs(monkeypatch, compiled, "gradcam")[0].startswith("cam-inference")  # PyTorch's


def test_errors_come_back_to_the_caller(monkeypatch, tiny_model):
    def failing(*args, **kwargs):
        raise ValueError("not an image this app can read")

    monkeypatch.setattr(service, "localize", failing)
    cache = ModelCache(runtime="torch")
    monkeypatch.setattr(cache, "get", lambda choice: tiny_model)
    with pytest.raises(ValueError, match="not an image"):
        analyze(cache, "default", None, 2, 0.2, False, 288, False, True)


def test_threads_started_after_confining_run_pytorch_on_one_thread():
    saved = torch.get_num_threads()
    try:
        confine_torch_threads()
        counts = []
        worker = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert torch.get_num_threads() == 1 and counts == [1]
    finally:
        torch.set_num_threads(saved)
