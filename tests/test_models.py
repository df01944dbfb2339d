import ctypes
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

import cam
import cam.runtime
from cam.methods import class_maps, forward_features
from cam.preprocess import preprocess

EXACT = [
    "timm:test_resnet", "timm:test_efficientnet", "timm:resnet18", "timm:mobilenetv2_050", "timm:regnety_002",
    "torchvision:resnet18", "torchvision:squeezenet1_1", "torchvision:densenet121", "torchvision:mobilenet_v2",
    "torchvision:efficientnet_b0",
]
NOT_EXACT = ["timm:test_vit", "timm:test_convnext", "timm:mobilenetv3_small_050", "timm:ghostnet_050",
             "torchvision:mobilenet_v3_small", "timm:swin_tiny_patch4_window7_224"]


@pytest.mark.slow
@pytest.mark.parametrize("spec", EXACT)
def test_cam_mean_plus_bias_equals_logit(spec, photo):
    torch.manual_seed(0)
    model = cam.load_model(spec, pretrained=False, device="cpu")
    batch = preprocess(model, [photo, photo[::-1].copy()], model.input_size)
    logits, features, _ = forward_features(model, batch)
    all_classes = torch.arange(logits.shape[1]).expand(2, -1)
    maps = class_maps(model, features, all_classes)
    _, bias = model.classifier_params()
    rebuilt = maps.mean((2, 3)) + bias
    torch.testing.assert_close(rebuilt, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()))


GUIDES = {"timm:test_resnet": "layer4", "timm:test_efficientnet": "blocks.4", "torchvision:resnet18": "layer4",
          "torchvision:densenet121": "features.transition3", "torchvision:efficientnet_b0": "features.6",
          "torchvision:mobilenet_v2": "features.14"}


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(GUIDES))
def test_the_guide_is_the_input_of_the_last_strided_stage(spec, photo):
    model = cam.load_model(spec, pretrained=False, device="cpu")
    assert model.guide_layer == GUIDES[spec]
    batch = preprocess(model, [photo], (256, 256))
    _, features, guide = forward_features(model, batch, guide=True)
    assert guide.shape[0] == 1 and guide.shape[2:] == tuple(2 * n for n in features.shape[2:])


def test_a_network_without_a_finer_stage_has_no_guide():
    from torch import nn

    from cam.models import find_cam_layers

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    assert find_cam_layers(net, (32, 32)) == {"feature_layer": "1", "classifier_layer": "4", "feature_relu": False,
                                              "guide_layer": None}
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    assert find_cam_layers(net, (32, 32))["guide_layer"] == "1"  # 32x32 into the strided conv, 16x16 out


def test_flip_keeps_the_identity(tiny_model, photo):
    batch = preprocess(tiny_model, [photo], tiny_model.input_size)
    logits, features, _ = forward_features(tiny_model, batch, flip=True)
    maps = class_maps(tiny_model, features, torch.arange(logits.shape[1])[None])
    rebuilt = maps.mean((2, 3)) + tiny_model.classifier_params()[1]
    torch.testing.assert_close(rebuilt, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("spec", NOT_EXACT)
def test_heads_where_cam_is_not_exact_load_for_the_gradient_methods(spec, photo):
    model = cam.load_model(spec, pretrained=False, device="cpu")
    assert not model.cam_exact
    result = cam.localize(model, photo, topk=2)
    assert result.method == "gradcam" and result.predictions[0].cam.shape == photo.shape[:2]
    with pytest.raises(ValueError, match="can run 'auto', gradcam, gradcam\\+\\+, layercam \\(CAM is not exact"):
        cam.localize(model, photo, method="cam")


def test_transformer_tokens_become_the_patch_grid(photo):
    model = cam.load_model("timm:test_vit", pretrained=False, device="cpu")
    assert model.feature_layout == "tokens" and model.feature_layer == f"blocks.{len(model.net.blocks) - 1}.norm1"
    assert model.prefix_tokens == 1 and model.token_grid == (10, 10)
    tokens = torch.arange(2 * 101 * 3, dtype=torch.float32).reshape(2, 101, 3)
    grid = model.spatial(tokens)
    assert grid.shape == (2, 3, 10, 10) and grid[1, 2, 0, 1] == tokens[1, 2, 2]  # token 2 is patch (0, 1)
    assert not model.fixed_input  # this ViT resamples its position embedding: other sizes give other grids
    assert cam.localize(model, photo, topk=1, input_size=288, refine=False).predictions[0].small_cam.shape == (18, 18)
    model.fixed_input = True  # as a ViT with a strict image size (most pretrained ones): its own size only
    assert cam.localize(model, photo, topk=1, input_size=288).predictions[0].small_cam.shape == (10, 10)


def test_a_network_without_a_spatial_map_is_refused():
    from torch import nn

    from cam.models import find_cam_layers

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    with pytest.raises(ValueError, match="no spatial feature map.*Models that work"):
        find_cam_layers(net, (16, 16))


def test_discovery_leaves_no_hooks_and_keeps_train_flags():
    import timm
    from cam.models import find_cam_layers

    net = timm.create_model("test_resnet", pretrained=False)
    net.train()
    net.layer1.eval()
    find_cam_layers(net, (64, 64))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert net.training and not net.layer1.training and net.layer2.training


@pytest.mark.parametrize("spec, hint", [
    ("timm:resnet5", "timm:resnet50"),
    ("torchvision:resnet1", "resnet18"),
    ("resnet50", "timm:resnet50"),
    ("defualt", "default"),
])
def test_bad_spec_lists_forms_and_close_names(spec, hint):
    with pytest.raises(ValueError) as info:
        cam.load_model(spec, pretrained=False)
    message = str(info.value)
    assert "accepted forms" in message and hint in message


@pytest.mark.parametrize("device", ["gpu", "mps", "meta", f"cuda:{torch.cuda.device_count()}"])
def test_a_device_that_cannot_work_here_is_a_clear_error(device):
    with pytest.raises(ValueError, match="device") as info:
        cam.load_model("timm:test_resnet", pretrained=False, device=device)
    assert device in str(info.value)
    chosen = cam.load_model("timm:test_resnet", pretrained=False, device="cpu", runtime="torch").device
    assert chosen.type == "cpu"
    assert cam.models.check_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_spec_of_wrong_type():
    with pytest.raises(TypeError):
        cam.load_model(42)


def test_default_model_knows_imagenet(default_model):
    assert len(default_model.class_names) == 1000
    assert default_model.class_names[281] == "tabby"
    assert default_model.input_size == (224, 224)
    assert default_model.mean == (0.5, 0.5, 0.5) and default_model.interpolation == "bicubic"
    assert (default_model.feature_layer, default_model.classifier_layer) == ("bn2", "classifier")
    stem = default_model.net.conv_stem.weight  # channels-last weights: faster on CPU (README, "Speed")
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()


def test_preprocessing_matches_pillows_resize_within_one_grey_level(default_model):
    from dataclasses import replace

    from PIL import Image

    side = default_model.input_size
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (default_model.mean, default_model.std))

    def grey_levels(batch):  # back from the normalised tensor to 0-255 pixels
        return (batch[0] * std + mean).mul(255).round().permute(1, 2, 0).numpy().astype(int)

    photo = Image.open(Path(__file__).resolve().parents[1] / "examples" / "coffee.png").convert("RGB")
    for interpolation, resample in [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)]:
        model = replace(default_model, interpolation=interpolation)
        for width, height in [(1600, 1200), (3 * side[1] - 10, 3 * side[0] - 10), (side[1] // 2, side[0] // 3)]:
            big = np.asarray(photo.resize((width, height)))
            pillow = np.asarray(Image.fromarray(big).resize((side[1], side[0]), resample)).astype(int)
            difference = np.abs(grey_levels(preprocess(model, [big], side)) - pillow)
            # torch's fixed-point filter rounds a little differently from Pillow's
            assert difference.max() <= 1 and difference.mean() <= 0.05, (interpolation, width, height)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="fixes glibc's malloc only")
def test_after_steady_allocator_large_blocks_come_from_the_heap():
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    assert cam.runtime.steady_allocator() is True  # done once, by the app and the CLI at start
    mapped = libc.mallinfo2().hblkhd
    block = np.ones(4 << 20)  # 32 MB: mapped apart by glibc's default thresholds, and unmapped on free
    assert libc.mallinfo2().hblkhd == mapped and block.sum() == 4 << 20
