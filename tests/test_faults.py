"""Killed runs leave checkpoints/ consistent: earlier checkpoints load, no half folder is listed."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import cam
from cam.service import ModelCache
from cam.train import train

from .conftest import ROOT
from .datasets import dataset_zip

pytestmark = pytest.mark.slow  # training processes, killed

TINY = "timm:test_resnet"


def _existing_checkpoint(tmp_path):
    summary = train(dataset_zip(tmp_path / "first.zip"), model_spec=TINY, pretrained=False, epochs=1, out=tmp_path / "c")
    return summary["checkpoint"]


def _assert_consistent(tmp_path, earlier):
    folders = sorted(os.listdir(tmp_path / "c"))
    visible = [f for f in folders if not f.startswith(".")]
    assert visible == [os.path.basename(earlier)]
    assert ModelCache(tmp_path / "c").choices() == ["default", os.path.basename(earlier)]
    assert cam.load_model(earlier, device="cpu").class_names == ["blue", "green", "red"]


def test_training_killed_mid_epoch(tmp_path):
    earlier = _existing_checkpoint(tmp_path)
    zip_path = dataset_zip(tmp_path / "big.zip", per_class=12)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cam", "train", str(zip_path), "--model", TINY, "--no-pretrained",
                             "--mode", "full", "--epochs", "500", "--out", str(tmp_path / "c")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    for line in proc.stdout:  # JSON progress lines: stop at the first training step, mid-epoch
        if '"epoch": 1' in line:
            break
    else:
        raise AssertionError("training ended before its first step was reported")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _assert_consistent(tmp_path, earlier)

    # The killed job's unpack folder is orphaned; the next job removes it.
    assert [p.name[:10] for p in scratch.iterdir()] == ["cam-train-"]
    subprocess.run([sys.executable, "-m", "cam", "train", str(zip_path), "--model", TINY, "--no-pretrained",
                    "--epochs", "1", "--out", str(tmp_path / "c")], cwd=ROOT, capture_output=True, timeout=300,
                   env={**os.environ, "TMPDIR": str(scratch)}, check=True)
    assert list(scratch.iterdir()) == []


def test_training_killed_while_saving(tmp_path):
    earlier = _existing_checkpoint(tmp_path)
    zip_path = dataset_zip(tmp_path / "second.zip")
    script = textwrap.dedent(f"""
        import os, safetensors.torch
        real = safetensors.torch.save_file
        def dies_halfway(state, path, *a, **k):
            real(state, path, *a, **k)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            os._exit(9)  # killed between the weights and the config
        safetensors.torch.save_file = dies_halfway
        from cam.train import train
        train({str(zip_path)!r}, model_spec={TINY!r}, pretrained=False, epochs=1, out={str(tmp_path / "c")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == 9
    assert any(f.startswith(".partial-") for f in os.listdir(tmp_path / "c"))  # the half checkpoint, hidden
    _assert_consistent(tmp_path, earlier)

    # The next save clears such leftovers once they are stale.
    from cam.checkpoint import STALE_PARTIAL_SECONDS

    stale = next(p for p in (tmp_path / "c").iterdir() if p.name.startswith(".partial-"))
    os.utime(stale, (time.time() - 2 * STALE_PARTIAL_SECONDS,) * 2)
    train(zip_path, model_spec=TINY, pretrained=False, epochs=1, out=tmp_path / "c")
    assert not stale.exists()


def test_an_app_process_that_exits_stops_its_training_job(tmp_path):
    # The job reports through a pipe to the app: once the app is gone, its next report fails and
    # it stops before writing a checkpoint.
    zip_path, out = dataset_zip(tmp_path / "data.zip"), tmp_path / "c"
    script = textwrap.dedent(f"""
        import sys, psutil
        from cam import service
        updates = service.training_updates({str(zip_path)!r}, "full", 100, 0.001, 0.2, out={str(out)!r})
        next(updates)  # the job is running
        print(psutil.Process().children()[0].pid, flush=True)
        sys.exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job = int(done.stdout.split()[-1])
    deadline = time.time() + 30
    while _alive(job) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(job), "the training job outlived the app"
    assert not out.exists() or [p for p in os.listdir(out) if not p.startswith(".")] == []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_typed_hub_models_are_checked_first_and_kept_in_a_small_lru(tmp_path, monkeypatch):
    import cam.service.model_cache as service

    cache = ModelCache(tmp_path / "none", max_models=2)
    with pytest.raises(ValueError, match="timm:resnet50"):  # a typo: refused with close names, nothing fetched
        cache.get("timm:resnet5")
    with pytest.raises(ValueError, match="choose 'default'"):
        cache.get("../etc")
    loads = []

    def fake_load(spec, pretrained=True, device=None, runtime="auto"):  # the hub is not reachable from tests: tiny models
        loads.append(spec)
        return cam.load_model("timm:test_resnet", pretrained=False, device="cpu")

    monkeypatch.setattr(service, "load_model", fake_load)
    monkeypatch.setattr(service, "_check_reachable", lambda host, choice: None)
    first = cache.get("timm:resnet18")
    assert cache.get(" timm:resnet18 ") is first  # loaded once
    cache.get("timm:resnet34")
    cache.get("timm:resnet18")  # now the most recently used
    cache.get("torchvision:resnet18")  # evicts timm:resnet34, the least recently used
    cache.get("timm:resnet18")
    cache.get("timm:resnet34")
    assert loads == ["timm:resnet18", "timm:resnet34", "torchvision:resnet18", "timm:resnet34"]


def test_an_unreachable_hub_is_one_clear_message_at_once(tmp_path, monkeypatch):
    import time as clock

    import cam.service.model_cache as service

    monkeypatch.setitem(service.HUB_HOSTS, "timm", "127.0.0.1")  # nothing listens on port 443 here
    started = clock.perf_counter()
    with pytest.raises(ValueError, match="needs its pretrained weights from 127.0.0.1, which this server cannot reach"):
        ModelCache(tmp_path / "none").get("timm:resnet18")
    assert clock.perf_counter() - started < 5


def test_a_checkpoint_written_again_under_its_name_is_loaded_afresh(tmp_path):
    import shutil

    from cam.checkpoint import save_checkpoint

    cache = ModelCache(tmp_path / "c")
    model = cam.load_model(TINY, pretrained=False, device="cpu")
    first = save_checkpoint(model, tmp_path / "c", {}, {})
    assert cache.get(first.name).class_names == model.class_names
    shutil.rmtree(first)
    model.class_names = [f"kind {i}" for i in range(len(model.class_names))]
    second = save_checkpoint(model, tmp_path / "elsewhere", {}, {})
    os.utime(second / "model.safetensors", ns=(1, 1))  # another modification time than the first's
    second.rename(first)  # the same name as the deleted one, as a new training in the same minute
    assert cache.get(first.name).class_names[0] == "kind 0"


def test_the_model_cache_loads_on_the_runtime_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_RUNTIME", "torch")  # how a server's operator picks it
    assert ModelCache(tmp_path / "c").get("default").runtime == "torch"
    with pytest.raises(ValueError, match="runtime must be one of auto, torch, openvino"):
        ModelCache(tmp_path / "c", runtime="fastest")
