"""The CUDA path: with a GPU present, models load onto it and CAM, the gradient methods, evaluation,
labelling and training run there and agree with the CPU. Skipped without CUDA (CI has none); run
it on a GPU machine with `python -m pytest tests/test_cuda.py`."""

import json

import numpy as np
import pytest
import torch

import cam
from cam.evaluate import evaluate
from cam.label import label
from cam.methods import class_maps, forward_features
from cam.preprocess import preprocess
from cam.train import train

from .conftest import EXAMPLES
from .datasets import box_dataset, dataset_zip, square_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PHOTOS = [EXAMPLES / name for name in ("chelsea.png", "coffee.png", "grace_hopper.jpg")]


@pytest.fixture(scope="module")
def gpu_model():
    return cam.load_model("default")


def test_models_load_onto_the_gpu_and_run_on_pytorch_there(gpu_model):
    assert gpu_model.device.type == "cuda" and gpu_model.runtime == "torch"
    assert torch.backends.cudnn.allow_tf32 is True  # loading changes no process-wide flag
    seen = []
    hook = gpu_model.net.register_forward_hook(lambda *_: seen.append(torch.backends.cudnn.allow_tf32))
    try:
        cam.localize(gpu_model, PHOTOS[0])
        cam.localize(gpu_model, PHOTOS[0], method="gradcam")
    finally:
        hook.remove()
    assert seen == [False, False] and torch.backends.cudnn.allow_tf32 is True  # full float32 only while it runs
    assert all(p.device.type == "cuda" for p in gpu_model.net.parameters())
    with pytest.raises(ValueError, match="runs on the CPU"):
        cam.load_model("default", runtime="openvino")


def test_gpu_cams_average_to_the_logits(gpu_model):
    batch = preprocess(gpu_model, [cam.load_image(p) for p in PHOTOS], (288, 288))
    assert batch.device.type == "cuda"
    logits, features, _ = forward_features(gpu_model, batch)
    indices = logits.topk(5, dim=1).indices
    with torch.inference_mode():
        maps = class_maps(gpu_model, features, indices)
        bias = dict(gpu_model.net.named_modules())[gpu_model.classifier_layer].bias[indices]
    np.testing.assert_allclose((maps.mean((2, 3)) + bias).cpu(), logits.gather(1, indices).cpu(),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("quality", ["plain", "recommended", "best"])
def test_gpu_and_cpu_give_the_same_classes_maps_and_boxes(gpu_model, default_model, quality):
    on_gpu = cam.localize_batch(gpu_model, PHOTOS, topk=5, quality=quality)
    on_cpu = cam.localize_batch(default_model, PHOTOS, topk=5, quality=quality)
    for g, c in zip(on_gpu, on_cpu):
        assert [p.class_index for p in g.predictions] == [p.class_index for p in c.predictions]
        for pg, pc in zip(g.predictions, c.predictions):
            assert abs(pg.score - pc.score) < 1e-4 and pg.boxes == pc.boxes
            np.testing.assert_allclose(pg.small_cam, pc.small_cam, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_gradient_methods_on_the_gpu_match_the_cpu_and_leave_no_hooks(gpu_model, default_model, method):
    on_gpu = cam.localize(gpu_model, PHOTOS[0], topk=3, method=method)
    on_cpu = cam.localize(default_model, PHOTOS[0], topk=3, method=method)
    assert [p.class_index for p in on_gpu.predictions] == [p.class_index for p in on_cpu.predictions]
    for pg, pc in zip(on_gpu.predictions, on_cpu.predictions):
        np.testing.assert_allclose(pg.small_cam, pc.small_cam, atol=1e-4, rtol=0)
        assert pg.boxes == pc.boxes
    assert not any(m._forward_hooks or m._backward_hooks for m in gpu_model.net.modules())
    assert all(p.grad is None for p in gpu_model.net.parameters())


def test_evaluate_on_the_gpu_scores_like_the_cpu(gpu_model, default_model, tmp_path):
    folder = box_dataset(tmp_path, ["x.png,281,0,0,64,64"])
    on_gpu, rows_gpu = evaluate(gpu_model, folder, quality="best")
    on_cpu, rows_cpu = evaluate(default_model, folder, quality="best")
    assert on_gpu["max_box_acc_v2"] == on_cpu["max_box_acc_v2"]
    assert [r["predicted"] for r in rows_gpu] == [r["predicted"] for r in rows_cpu]


def test_labelling_on_the_gpu_writes_the_boxes_of_the_cpu(gpu_model, default_model, tmp_path):
    for i in range(5):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{i}.png").write_bytes(square_image((230, 40, 40), seed=i, size=96))
    label([tmp_path / "in"], tmp_path / "gpu", model=gpu_model)
    label([tmp_path / "in"], tmp_path / "cpu", model=default_model)
    gpu, cpu = (json.loads((tmp_path / out / "coco.json").read_text()) for out in ("gpu", "cpu"))
    assert [a["category_id"] for a in gpu["annotations"]] == [a["category_id"] for a in cpu["annotations"]]
    assert [a["bbox"] for a in gpu["annotations"]] == [a["bbox"] for a in cpu["annotations"]]


@pytest.mark.parametrize("mode", ["head", "full"])
def test_training_on_the_gpu_writes_a_checkpoint_that_loads_on_the_cpu(tmp_path, mode):
    zip_path = dataset_zip(tmp_path / "shapes.zip")
    torch.cuda.reset_peak_memory_stats()
    summary = train(zip_path, model_spec="timm:test_resnet", pretrained=False, mode=mode, epochs=2,
                    out=tmp_path / "checkpoints")
    assert torch.cuda.max_memory_allocated() > 0  # it trained there
    on_cpu = cam.load_model(summary["checkpoint"], device="cpu", runtime="torch")
    on_gpu = cam.load_model(summary["checkpoint"])
    photo = cam.load_image(square_image((40, 200, 60), seed=3))
    a, b = cam.localize(on_cpu, photo, topk=3), cam.localize(on_gpu, photo, topk=3)
    assert [p.class_index for p in a.predictions] == [p.class_index for p in b.predictions]
