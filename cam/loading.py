"""`load_model`: the one way to a `CamModel`, from any spec: a bundled or hub model's name
(`cam.models`) or a checkpoint folder (`cam.checkpoint`), onto a device and a runtime."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .models import DEFAULT_SPEC, CamModel, check_device, named_model
from .runtime import OpenVinoRunner, check_runtime, openvino_available


def load_model(spec: str = DEFAULT_SPEC, pretrained: bool = True, device: str | torch.device | None = None,
               runtime: str = "auto") -> CamModel:
    """Build a `CamModel` from a spec ('default', 'timm:NAME', 'torchvision:NAME' or a checkpoint folder).

    `pretrained` only concerns timm and torchvision names (hub weights need a network); the bundled
    models and checkpoints always carry their weights. `device` defaults to CUDA when present
    (`check_device`). `runtime` runs CAM's forward passes: "torch", "openvino" (OpenVINO's compiled
    CPU runtime, float32) or "auto" (OpenVINO on a CPU where it is installed, else PyTorch);
    `model.runtime` says which. Gradient methods and training always run on PyTorch. Loading
    changes no process-wide setting: inference on CUDA turns TF32 off only while it runs
    (`cam.runtime.full_float32`), and malloc's tuning (`cam.runtime.steady_allocator`) is the
    app's and the CLI's, at start.
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"spec must be a string or path, got {type(spec).__name__}")
    check_runtime(runtime)
    device = check_device(device)
    if runtime == "openvino" and (device.type != "cpu" or not openvino_available()):
        raise ValueError("runtime 'openvino' runs on the CPU and needs the openvino and onnx packages "
                         "(pip install openvino onnx)"
                         if device.type == "cpu" else f"runtime 'openvino' runs on the CPU, not on {device}")
    text = str(spec).strip()
    model = named_model(text, pretrained)
    if model is None:
        model = load_checkpoint(Path(text))
    # Channels-last weights: on 2 CPU cores 4-20% faster forward passes one photo at a time and
    # 20-45% in batches for Lite0, ResNet-50, DenseNet-121, MobileNetV2 and RegNetY (README, "Speed").
    model.net.to(device=device, memory_format=torch.channels_last)
    model.net.eval()
    if model.detector is not None:
        model.detector.to(device).eval()
    if runtime == "openvino" or (runtime == "auto" and device.type == "cpu" and openvino_available()):
        model.runtime, model.runner = "openvino", OpenVinoRunner(model)
    return model
