"""The gradient-weighted maps: equal to pytorch-grad-cam's on the same layer and class, one batched
backward pass, no hooks or gradients left behind, and a clear error for unknown methods."""

import numpy as np
import pytest
import torch

import cam
from cam.preprocess import preprocess
from cam.methods import GRADIENT_METHODS, gradient_maps

PEERS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM"}


def _vit_reshape(tensor, height=10, width=10):
    """pytorch-grad-cam's reshape transform for ViT (its tutorial's): drop the class token, lay the
    patch tokens on the grid, channels first."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _peer_maps(model, batch, method, classes, layer=None, reshape=None):
    """pytorch-grad-cam's maps for one class per image (its ReLU and min-max scaling, no resize)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = getattr(pytorch_grad_cam, PEERS[method])(model=model.net, target_layers=[layer or model.feature_module],
                                                     reshape_transform=reshape)
    peer.get_target_width_height = lambda x: None  # keep feature resolution: scale_cam_image then only rescales
    try:
        return peer(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in classes])
    finally:
        peer.activations_and_grads.release()


def _scaled(maps):
    """pytorch-grad-cam's scaling without the resize: scale_cam_image (min-max per map, 1e-7 added to
    the span) once for the layer and once more after aggregating the layers."""
    for _ in range(2):
        low = maps.min(axis=(-2, -1), keepdims=True)
        maps = (maps - low) / (1e-7 + (maps - low).max(axis=(-2, -1), keepdims=True))
    return maps


# The peer's layer for each model: ResNet's map before pooling, ConvNeXt's last stage, ViT's tokens
# entering the last block's attention with the peer's reshape transform.
PEER_LAYERS = {"timm:test_resnet": (lambda net: net.layer4, None),
               "torchvision:resnet18": (lambda net: net.layer4, None),
               "timm:test_convnext": (lambda net: net.stages[-1], None),
               "timm:test_vit": (lambda net: net.blocks[-1].norm1, _vit_reshape)}


@pytest.mark.slow
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("spec", list(PEER_LAYERS))
def test_maps_equal_pytorch_grad_cam(spec, method, photo):
    torch.manual_seed(0)
    model = cam.load_model(spec, pretrained=False, device="cpu")
    layer, reshape = PEER_LAYERS[spec]
    rng = np.random.default_rng(1)
    arrays = [photo, rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)]
    batch = preprocess(model, arrays, model.input_size)
    logits, indices, maps, guide = gradient_maps(model, batch, lambda z: z.topk(3, dim=1).indices, method)
    assert guide is None and maps.shape[:2] == (2, 3) and (maps >= 0).all()
    assert torch.equal(indices, model.net(batch).topk(3, dim=1).indices)
    for rank in range(3):
        theirs = _peer_maps(model, batch, method, indices[:, rank], layer(model.net), reshape)
        ours = _scaled(maps[:, rank].numpy())
        assert np.abs(ours - theirs).max() < 1e-4, (spec, method, rank)


def test_one_backward_leaves_no_hooks_and_no_gradients(tiny_model, photo):
    net = tiny_model.net
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())
    batch = preprocess(tiny_model, [photo], tiny_model.input_size)
    calls = []
    original = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched"))
        return original(*args, **kwargs)

    torch.autograd.grad = counting
    try:
        gradient_maps(tiny_model, batch, lambda z: z.topk(5, dim=1).indices, "gradcam", flip=True)
    finally:
        torch.autograd.grad = original
    assert calls == [True]  # five classes, one batched backward pass
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == hooks
    assert all(p.grad is None for p in net.parameters())
    def refuse(_logits):
        raise ValueError("no class")

    with pytest.raises(ValueError, match="no class"):  # an error midway removes the hooks too
        gradient_maps(tiny_model, batch, refuse, "gradcam")
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules()) == hooks


@pytest.mark.slow
def test_on_a_gap_model_gradcam_is_the_relu_of_cam(default_model):
    from cam.methods import class_maps, forward_features

    batch = preprocess(default_model, [np.asarray(cam.load_image("examples/coffee.png"))], (224, 224))
    _, features, _ = forward_features(default_model, batch)
    _, indices, maps, _ = gradient_maps(default_model, batch, lambda z: z.topk(3, dim=1).indices, "gradcam")
    exact = torch.relu(class_maps(default_model, features, indices)) / (features.shape[2] * features.shape[3])
    assert torch.allclose(maps, exact, rtol=1e-3, atol=1e-5 * exact.max().item())


def test_localize_says_which_method_ran_and_refuses_unknown_ones(tiny_model, photo):
    assert cam.localize(tiny_model, photo, topk=2).method == "cam"
    result = cam.localize(tiny_model, photo, topk=2, method="layercam", refine=False)
    assert result.method == "layercam" and result.to_dict()["method"] == "layercam"
    assert result.predictions[0].cam.shape == photo.shape[:2]
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+, layercam"):
        cam.localize(tiny_model, photo, method="scorecam")


def test_concurrent_gradient_maps_on_one_model_get_their_own_answers(tiny_model):
    import threading

    rng = np.random.default_rng(3)
    photos = [rng.integers(0, 256, (60 + 10 * i, 80, 3), dtype=np.uint8) for i in range(4)]
    expected = [cam.localize(tiny_model, p, topk=2, method="gradcam++", refine=False).predictions[0].small_cam
                for p in photos]
    errors = []

    def work(i):
        try:
            for _ in range(3):
                got = cam.localize(tiny_model, photos[i], topk=2, method="gradcam++", refine=False).predictions[0]
                assert np.allclose(got.small_cam, expected[i], atol=1e-5)  # not another thread's map
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
