"""The server's model cache: one LRU bound over every kind of model, and a lock per model being
loaded, so that a slow first load delays only the requests for that model."""

import dataclasses
import threading
import time

import pytest

import cam
import cam.service.model_cache as service
from cam.service import ModelCache
from cam.checkpoint import save_checkpoint

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
    release = threading.Event()
    for spec in ("timm:resnet18", "timm:resnet34"):  # two slow downloads: every download slot taken
        HOLD[spec] = (threading.Event(), release)
    got = []
    slow = [threading.Thread(target=lambda: got.append(cache.get("timm:resnet18"))) for _ in range(3)]
    slow.append(threading.Thread(target=cache.get, args=("timm:resnet34",)))
    for t in slow:
        t.start()
    try:
        assert all(started.wait(30) for started, _ in HOLD.values())
        for choice in (checkpoint, "default"):
            other = threading.Thread(target=cache.get, args=(choice,))
            other.start()
            other.join(30)
            assert not other.is_alive(), f"{choice}'s load waited for a hub download"
        assert len(got) == 0
    finally:
        release.set()
        for t in slow:
            t.join(30)
    assert len(got) == 3 and got[0] is got[1] is got[2]
    assert loads.count("timm:resnet18") == 1 and loads.count(checkpoint) == 1


def test_a_failed_load_is_retried_by_one_request_at_a_time(tmp_path, monkeypatch):
    tiny, loads = cam.load_model(TINY, pretrained=False, device="cpu", runtime="torch"), []
    failed, retrying, release = threading.Event(), threading.Event(), threading.Event()

    def fake_load(spec, **kwargs):
        loads.append(spec)
        assert failed.wait(60)
        if len(loads) == 1:
            raise RuntimeError("download interrupted")
        retrying.set()
        assert release.wait(60)
        return dataclasses.replace(tiny)

    monkeypatch.setattr(service, "load_model", fake_load)
    monkeypatch.setattr(service, "_check_reachable", lambda host, choice: None)
    cache, got = ModelCache(tmp_path / "c"), []

    def get():
        try:
            got.append(cache.get("timm:resnet18"))
        except RuntimeError:
            got.append(None)

    first, waiter = threading.Thread(target=get), threading.Thread(target=get)
    first.start()
    waiter.start()  # waits for the first's load, then retries it
    time.sleep(0.3)
    failed.set()
    assert retrying.wait(30)
    late = threading.Thread(target=get)
    late.start()
    time.sleep(0.5)
    assert len(loads) == 2, "a new request loaded the model beside the waiter's retry"
    release.set()
    for t in (first, waiter, late):
        t.join(30)
    assert got[0] is None and got[1] is got[2] and len(loads) == 2
