"""Fallbacks that hold: a gradient method whose batched backward fails retries class by class, and a
compiled runtime that cannot convert one input size runs that size on PyTorch, and only that size."""

import logging
import threading

import pytest
import torch

import cam
import cam.runtime


class _NoBatchedBackward(torch.autograd.Function):
    """The identity, whose backward branches on its gradient's values: vmap (the batched backward)
    refuses such data-dependent control flow, a plain backward runs it. `passes` records the shape
    of each gradient that went through."""

    passes: list[tuple] = []

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        bool(grad.abs().sum() >= 0)  # raises under vmap
        _NoBatchedBackward.passes.append(tuple(grad.shape))
        return grad


@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_the_per_class_retry_gives_the_batched_paths_maps(tiny_model, photo, method):
    expected = cam.localize(tiny_model, photo, topk=3, method=method, refine=False)
    classifier = tiny_model.net.get_submodule(tiny_model.classifier_layer)
    hook = classifier.register_forward_pre_hook(lambda module, args: (_NoBatchedBackward.apply(args[0]),))
    _NoBatchedBackward.passes.clear()
    try:
        retried = cam.localize(tiny_model, photo, topk=3, method=method, refine=False)
    finally:
        hook.remove()
    passes = _NoBatchedBackward.passes  # the batched backward failed: one plain pass per class, of the one photo
    assert len(passes) == 3 and all(shape[0] == 1 for shape in passes), passes
    assert [p.class_index for p in retried.predictions] == [p.class_index for p in expected.predictions]
    for a, b in zip(retried.predictions, expected.predictions):
        assert torch.allclose(torch.from_numpy(a.small_cam), torch.from_numpy(b.small_cam), atol=1e-5)


@pytest.fixture
def openvino_model(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setattr(cam.runtime, "CACHE", tmp_path / "cache")
    return cam.load_model("timm:test_resnet", pretrained=False, device="cpu", runtime="openvino")


@pytest.mark.slow
def test_a_size_that_cannot_convert_runs_on_pytorch_and_other_sizes_stay_compiled(openvino_model, photo, caplog,
                                                                                 monkeypatch):
    real, exported = cam.runtime.export_onnx, []

    def export(model, size, path):
        exported.append(size)
        if size == (256, 256):
            raise RuntimeError("cannot convert this operator\nsecond line")
        return real(model, size, path)

    monkeypatch.setattr(cam.runtime, "export_onnx", export)
    results = []
    with caplog.at_level(logging.WARNING, logger="cam.runtime"):
        threads = [threading.Thread(target=lambda: results.append(cam.localize(openvino_model, photo, input_size=256)))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        other = cam.localize(openvino_model, photo, input_size=224)
        again = cam.localize(openvino_model, photo, input_size=256)
    assert [r.runtime for r in results] == ["torch"] * 3 and again.runtime == "torch"
    assert other.runtime == "openvino" and openvino_model.runtime == "openvino"  # the model keeps its runtime
    assert exported == [(256, 256), (224, 224)]  # one try per size
    assert [r.getMessage() for r in caplog.records] == [
        "openvino cannot convert timm:test_resnet at 256x256 (RuntimeError: cannot convert this operator); "
        "that input size runs on PyTorch"]


@pytest.mark.slow
def test_requests_for_a_compiled_size_do_not_wait_for_another_sizes_conversion(openvino_model, photo, monkeypatch):
    cam.localize(openvino_model, photo, input_size=224)  # compiled
    real, started, release = cam.runtime.export_onnx, threading.Event(), threading.Event()

    def slow_export(model, size, path):
        started.set()
        assert release.wait(60)
        return real(model, size, path)

    monkeypatch.setattr(cam.runtime, "export_onnx", slow_export)
    converting = threading.Thread(target=cam.localize, args=(openvino_model, photo), kwargs={"input_size": 320})
    converting.start()
    try:
        assert started.wait(60)
        served = []
        server = threading.Thread(target=lambda: served.append(cam.localize(openvino_model, photo, input_size=224)))
        server.start()
        server.join(30)
        assert served and served[0].runtime == "openvino", "a compiled size waited for a conversion"
    finally:
        release.set()
        converting.join()


@pytest.mark.slow
def test_a_cache_that_cannot_be_written_keeps_the_compiled_runtime(openvino_model, photo, caplog, monkeypatch):
    import openvino

    def refuse(*args, **kwargs):
        raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(openvino, "save_model", refuse)
    with caplog.at_level(logging.WARNING, logger="cam.runtime"):
        result = cam.localize(openvino_model, photo, input_size=224)
    assert result.runtime == "openvino" and openvino_model.runtime == "openvino"
    assert any("cannot cache the converted model" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_sizes_converted_at_once_all_run_on_openvino(openvino_model, photo, caplog):
    sizes = (224, 256, 288)
    barrier, results = threading.Barrier(len(sizes)), {}

    def localize(size):
        barrier.wait()
        results[size] = cam.localize(openvino_model, photo, input_size=size).runtime

    with caplog.at_level(logging.WARNING, logger="cam.runtime"):
        threads = [threading.Thread(target=localize, args=(size,)) for size in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {size: "openvino" for size in sizes}  # torch.onnx.export is not thread-safe
    assert not caplog.records


@pytest.mark.slow
def test_a_cached_model_that_cannot_be_read_is_converted_again(openvino_model, photo, caplog):
    import openvino

    path = openvino_model.runner.cache_path((224, 224), openvino.__version__)
    path.parent.mkdir(parents=True)
    path.write_text("<not an IR")
    with caplog.at_level(logging.WARNING, logger="cam.runtime"):
        result = cam.localize(openvino_model, photo, input_size=224)
    assert result.runtime == "openvino"
    assert openvino.Core().read_model(path) is not None  # replaced by a readable one
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot read the cached model {path}; converting it again"]
