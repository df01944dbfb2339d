"""Library calls leave process-wide state alone: load_model neither tunes malloc nor touches TF32,
train() does not reseed torch's global RNG, and TF32 is off only while inference runs on CUDA."""

import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

import cam
import cam.runtime
from cam.checkpoint import save_checkpoint
from cam.train import train

from .conftest import ROOT
from .datasets import dataset_zip


@pytest.mark.slow
def test_load_model_leaves_malloc_alone():
    code = ("import cam, cam.runtime; cam.load_model('timm:test_resnet', pretrained=False, device='cpu', "
            "runtime='torch'); print(cam.runtime.steady_allocator.cache_info().currsize)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "0", proc.stderr  # never called: the app and the CLI call it at start


def test_tf32_is_off_only_while_inference_runs_and_comes_back_after_the_last_thread():
    cuda = torch.device("cuda")  # the flag is PyTorch's own: it can be read and set without a GPU
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        inside, leave = threading.Barrier(2), threading.Event()

        def hold():
            with cam.runtime.full_float32(cuda):
                inside.wait(10)
                leave.wait(10)

        other = threading.Thread(target=hold)
        other.start()
        inside.wait(10)
        with cam.runtime.full_float32(cuda):
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 is False  # the other thread is still inside
        leave.set()
        other.join(10)
        assert torch.backends.cudnn.allow_tf32 is True
        with cam.runtime.full_float32(torch.device("cpu")):
            assert torch.backends.cudnn.allow_tf32 is True  # a CPU run changes nothing
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.slow
def test_train_uses_its_own_generator_not_torchs_global_rng(tmp_path):
    start = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu", runtime="torch"),
                            tmp_path / "start", {}, {})
    data = dataset_zip(tmp_path / "colours.zip")
    weights, after = [], []
    for global_seed in (5, 6):
        torch.manual_seed(global_seed)
        summary = train(data, model_spec=str(start), mode="head", epochs=2, seed=3, out=tmp_path / "c", device="cpu")
        after.append(torch.rand(4))
        weights.append(load_file(f"{summary['checkpoint']}/model.safetensors"))
    assert not torch.equal(after[0], after[1]), "train() reseeded torch's global RNG"
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the result depends on `seed` alone
