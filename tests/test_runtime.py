"""The compiled CPU runtime (OpenVINO): the same classes, maps and boxes as PyTorch, every input size
and batch, a disk cache, safe under threads, and PyTorch where it cannot run (one input size at a
time: tests/test_fallbacks.py)."""

import logging
import sys
import threading

import numpy as np
import pytest
import torch

import cam
import cam.runtime

from .conftest import EXAMPLES

pytest.importorskip("openvino")
pytestmark = pytest.mark.slow  # the default model converted and compiled, at several sizes
THREADS = torch.get_num_threads()
PHOTOS = [EXAMPLES / name for name in ("chelsea.png", "coffee.png", "rocket.jpg")]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cam.runtime.CACHE = tmp_path_factory.mktemp("runtime-cache")
    return cam.load_model("default", device="cpu", runtime="openvino")


def _same(a, b):
    assert [p.class_index for p in a.predictions] == [p.class_index for p in b.predictions]
    assert [p.boxes for p in a.predictions] == [p.boxes for p in b.predictions]
    assert max(np.abs(p.small_cam - q.small_cam).max() for p, q in zip(a.predictions, b.predictions)) < 1e-4


@pytest.mark.parametrize("settings", [{}, {"input_size": None, "refine": False}, {"input_size": 320, "flip": True}])
def test_the_same_classes_maps_and_boxes_as_pytorch(compiled, default_model, settings):
    ours = cam.localize_batch(compiled, PHOTOS, topk=5, **settings)
    reference = cam.localize_batch(default_model, PHOTOS, topk=5, **settings)
    for a, b in zip(ours, reference):
        _same(a, b)
        assert a.runtime == a.to_dict()["runtime"] == "openvino" and b.runtime == "torch"
    assert compiled.runtime == "openvino"


def test_converted_models_are_cached_on_disk_by_weights_and_size(compiled):
    cam.localize(compiled, PHOTOS[0], input_size=256)
    assert any(p.name.endswith("_256x256.xml") and p.name.startswith(compiled.weights_digest()[:32])
               for p in cam.runtime.CACHE.iterdir())
    again = cam.load_model("default", device="cpu", runtime="openvino")
    converted = []
    original = cam.runtime._Outputs
    cam.runtime._Outputs = lambda model: converted.append(model) or original(model)
    try:
        _same(cam.localize(again, PHOTOS[0], input_size=256), cam.localize(compiled, PHOTOS[0], input_size=256))
    finally:
        cam.runtime._Outputs = original
    assert converted == []  # read from the cache, not converted again


def test_concurrent_requests_get_their_own_answers(compiled, default_model):
    expected = {str(p): cam.localize(default_model, p, topk=1).predictions[0].class_index for p in PHOTOS}
    seen, errors = {}, []

    def work(path):
        try:
            for _ in range(3):
                seen.setdefault(str(path), set()).add(cam.localize(compiled, path, topk=1).predictions[0].class_index)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in PHOTOS * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and seen == {k: {v} for k, v in expected.items()}


def test_pytorch_runs_on_one_thread_during_a_compiled_call_and_gets_its_threads_back(compiled, monkeypatch):
    seen = []
    real_runner = compiled.runner
    monkeypatch.setattr(compiled, "runner", lambda x: seen.append(torch.get_num_threads()) or real_runner(x))
    cam.localize(compiled, PHOTOS[0], topk=1)
    assert seen == [1] and torch.get_num_threads() == THREADS
    cam.localize(compiled, PHOTOS[0], topk=1, method="gradcam")  # PyTorch's own network: all its threads
    assert seen == [1] and torch.get_num_threads() == THREADS

    def failing(*args):
        raise MemoryError("out of memory")

    monkeypatch.setattr(sys.modules["cam.localize"], "photo_boxes", failing)  # after the compiled call
    with pytest.raises(MemoryError):
        cam.localize(compiled, PHOTOS[0])
    assert torch.get_num_threads() == THREADS  # also after an error


def test_only_the_calling_thread_yields_its_threads():
    entered, leave, inside = threading.Event(), threading.Event(), []

    def hold():
        with cam.runtime.torch_yields_threads():
            inside.append(torch.get_num_threads())
            entered.set()
            leave.wait(10)
        inside.append(torch.get_num_threads())

    other = threading.Thread(target=hold)
    other.start()
    entered.wait(10)
    assert torch.get_num_threads() == THREADS  # this thread keeps its own
    leave.set()
    other.join()
    assert inside == [1, THREADS]


def test_gradient_methods_run_on_pytorch(compiled):
    result = cam.localize(compiled, PHOTOS[1], topk=2, method="gradcam")
    assert result.runtime == "torch" and result.method == "gradcam"


def test_a_failing_call_runs_again_on_pytorch_and_leaves_the_runtime_in_place(compiled, caplog, monkeypatch):
    real_runner, calls = compiled.runner, []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("infer request failed")
        return real_runner(batch)

    monkeypatch.setattr(compiled, "runner", flaky)
    torch_model = cam.load_model("default", device="cpu", runtime="torch")
    with caplog.at_level(logging.WARNING, logger="cam.runtime"):
        first, second = cam.localize(compiled, PHOTOS[0], topk=2), cam.localize(compiled, PHOTOS[0], topk=2)
    assert first.runtime == "torch" and second.runtime == "openvino" and compiled.runtime == "openvino"
    assert [p.class_index for p in first.predictions] == [p.class_index for p in
                                                          cam.localize(torch_model, PHOTOS[0], topk=2).predictions]
    assert [r.getMessage() for r in caplog.records] == [
        "openvino failed on a batch of default (RuntimeError: infer request failed); this batch runs on PyTorch"]


def test_the_converted_model_cache_is_keyed_by_runtime_version_and_layers(compiled):
    import dataclasses

    runner = compiled.runner
    path = runner.cache_path((288, 288), "2025.1")
    assert path.name.startswith(runner.digest[:32]) and path.name.endswith("_288x288.xml")
    assert runner.cache_path((288, 288), "2025.2") != path  # another OpenVINO version converts again
    other = cam.runtime.OpenVinoRunner(dataclasses.replace(compiled, guide_layer=None))
    assert other.digest == runner.digest and other.cache_path((288, 288), "2025.1") != path  # other outputs too


def test_bad_runtimes_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="runtime must be one of auto, torch, openvino"):
        cam.load_model("default", runtime="tensorrt")
    monkeypatch.setattr(cam.loading, "openvino_available", lambda: False)  # as if not installed
    with pytest.raises(ValueError, match="needs the openvino and onnx packages"):
        cam.load_model("default", device="cpu", runtime="openvino")
    assert cam.load_model("default", device="cpu", runtime="auto").runtime == "torch"  # auto: PyTorch without it


def test_a_collection_labelled_on_openvino_resumes_only_on_openvino(compiled, tmp_path):
    from cam.label import LOG, label

    for name in ("chelsea.png", "coffee.png"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes((EXAMPLES / name).read_bytes())
    summary = label([tmp_path / "in"], tmp_path / "out", model="default", runtime="openvino")
    assert summary["labelled"] == 2
    assert {line.count('"runtime": "openvino"') for line in (tmp_path / "out" / LOG).read_text().splitlines()} == {1}
    with pytest.raises(ValueError, match="runtime 'openvino' \\(now 'torch'\\)"):
        label([tmp_path / "in"], tmp_path / "out", model="default", runtime="torch")
