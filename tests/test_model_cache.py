"""The server's model cache: one LRU bound over every kind of model, and a lock per model being
loaded, so that a slow first load delays only the requests for that model."""

import dataclasses
import threading

import pytest

import cam
import cam.service.model_cache as service
from cam.service import ModelCache
from cam.train import save_checkpoint

TINY = "timm:test_resnet"
HOLD: dict[str, tuple[threading.Event, threading.Event]] = {}  # spec -> (its load started, let it finish)


@pytest.fixture
def loads(monkeypatch):
    """Every spec the cache loads, in order; the hub is unreachable from tests: tiny models stand in."""
    seen, tiny = [], cam.load_model(TINY, pretrained=False, device="cpu", runtime="torch")

    def fake_load(spec, pretrained=True, device=None, runtime="auto"):
        seen.append(str(spec).rsplit("/", 1)[-1])
        hold = HOLD.get(seen[-1])
        if hold:
            hold[0].set()
            assert hold[1].wait(60)
        return dataclasses.replace(tiny)  # a model object of its own

    HOLD.clear()
    monkeypatch.setattr(service, "load_model", fake_load)
    monkeypatch.setattr(service, "_check_reachable", lambda host, choice: None)
    return seen


def _checkpoints(folder, count):
    model = cam.load_model(TINY, pretrained=False, device="cpu", runtime="torch")
    return [save_checkpoint(model, folder, {}, {}).name for _ in range(count)]


def test_checkpoints_and_hub_models_share_one_lru_bound(tmp_path, loads):
    first, second = _checkpoints(tmp_path / "c", 2)
    cache = ModelCache(tmp_path / "c", max_models=2)
    cache.get(first)
    cache.get(second)
    cache.get(first)  # now the most recently used
    cache.get("timm:resnet18")  # evicts the second checkpoint
    cache.get(first)
    cache.get(second)
    assert loads == [first, second, "timm:resnet18", second]
    with pytest.raises(ValueError, match="max_models must be at least 1"):
        ModelCache(tmp_path / "c", max_models=0)


def test_a_slow_first_load_blocks_only_the_requests_for_its_model(tmp_path, loads):
    (checkpoint,) = _checkpoints(tmp_path / "c", 1)
    cache = ModelCache(tmp_path / "c")
    started, release = threading.Event(), threading.Event()
    HOLD["timm:resnet18"] = (started, release)
    got = []
    slow = [threading.Thread(target=lambda: got.append(cache.get("timm:resnet18"))) for _ in range(3)]
    for t in slow:
        t.start()
    try:
        assert started.wait(30)
        other = threading.Thread(target=cache.get, args=(checkpoint,))
        other.start()
        other.join(30)
        assert not other.is_alive(), "a checkpoint's load waited for a hub download"
        assert len(got) == 0
    finally:
        release.set()
        for t in slow:
            t.join(30)
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert loads.count("timm:resnet18") == 1 and loads.count(checkpoint) == 1
