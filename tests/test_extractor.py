import pytest
import torch

import cam
from cam.extractor import FeatureExtractor


def _hook_count(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


@pytest.mark.slow
def test_no_hooks_after_calls(tiny_model, photo):
    before = _hook_count(tiny_model.net)
    for _ in range(20):
        cam.localize(tiny_model, photo, topk=3)
    assert _hook_count(tiny_model.net) == before == 0


def test_no_hooks_after_an_exception(tiny_model):
    with pytest.raises(RuntimeError):
        with FeatureExtractor(tiny_model.feature_module):
            tiny_model.net(torch.zeros(1, 5, 32, 32))  # wrong channel count raises inside forward
    assert _hook_count(tiny_model.net) == 0


def test_localize_raising_inside_forward_leaves_no_hooks(tiny_model, photo, monkeypatch):
    def broken(*_):
        raise RuntimeError("boom")

    handle = tiny_model.net.layer4[-1].register_forward_pre_hook(broken)  # after the guide's hook has fired
    try:
        with pytest.raises(RuntimeError, match="boom"):
            cam.localize(tiny_model, photo)
    finally:
        handle.remove()
    assert _hook_count(tiny_model.net) == 0
    assert not tiny_model.net.training


def test_remove_hooks_is_idempotent(tiny_model):
    extractor = FeatureExtractor(tiny_model.feature_module)
    with extractor:
        assert _hook_count(tiny_model.net) == 1
    extractor.remove_hooks()
    extractor.remove_hooks()
    assert _hook_count(tiny_model.net) == 0


def test_captured_features_are_detached(tiny_model):
    with FeatureExtractor(tiny_model.feature_module) as extractor:
        tiny_model.net(torch.randn(1, 3, 64, 64, requires_grad=True))
    assert extractor.features is not None and not extractor.features.requires_grad


def test_callers_train_flags_are_restored(tiny_model, photo):
    net = tiny_model.net
    net.train()
    net.layer1.eval()
    try:
        cam.localize(tiny_model, photo)
        assert net.training and not net.layer1.training and net.layer2.training
    finally:
        net.eval()


def test_a_deep_submodule_in_training_mode_is_run_in_eval_and_restored(tiny_model, photo):
    net = tiny_model.net
    norm = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.train()  # only this one, deep inside an otherwise evaluating network
    stats = norm.running_mean.clone()
    try:
        cam.localize(tiny_model, photo)
        assert norm.training and not net.training
        assert torch.equal(norm.running_mean, stats), "batch statistics were updated: it ran in training mode"
    finally:
        net.eval()


def test_extractor_rejects_non_modules():
    with pytest.raises(TypeError):
        FeatureExtractor("layer4")
