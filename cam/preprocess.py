"""The way into the network: the input size, the images per forward pass, and the resized,
normalised batch."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .models import CamModel
from .runtime import torch_yields_threads


def check_input_size(input_size, model: CamModel) -> tuple[int, int]:
    """The (h, w) the model sees: `input_size` squared, or the model's own size for None and for a
    transformer with a fixed patch grid (`CamModel.fixed_input`)."""
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer))
                                   or not 32 <= input_size <= 1024):
        raise ValueError(f"input_size must be an integer between 32 and 1024 (or None), got {input_size!r}")
    if input_size is None or model.fixed_input:
        return tuple(model.input_size)
    return (int(input_size), int(input_size))


def inference_batch_size(model: CamModel, size: tuple[int, int]) -> int:
    """Images per forward pass when only inferring: 16 on a GPU (32 and 64 were faster for Lite0's
    CAM on an H200; 16 bounds the gradient methods' memory on smaller GPUs); on a CPU with PyTorch at most
    250,000 input pixels (4 at 224 px, 3 at 288, 2 at 320, 1 at 384 and above): each was the fastest
    per image on 2 cores, and larger batches ran slower (README, "CLI"); on OpenVINO, whose time per
    image falls with the batch size (1 to 4, 224 to 384 px; 3 and 4 alike at 320 and 384), 4 up to
    384 px (README, "Compiled CPU runtime")."""
    if model.device.type != "cpu":
        return 16
    if model.runtime == "openvino":
        return max(1, min(4, 4 * 384 * 384 // (size[0] * size[1])))
    return max(1, 250_000 // (size[0] * size[1]))


def preprocess(model: CamModel, arrays: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """Resize each whole image (no crop) to `size` (h, w) and normalise it: a (B, 3, h, w) tensor.

    The resize is torch's antialiased one on the 8-bit pixels: the filter of Pillow's resize (which
    timm's and torchvision's eval transforms use) to within one grey level, 3-12x faster on 0.3-12 MP
    photos, as it runs vectorised on all cores (README, "Speed").
    """
    mode = "bicubic" if model.interpolation == "bicubic" else "bilinear"
    resized = []
    for a in arrays:
        own = a if a.flags.writeable and a.flags.c_contiguous else np.array(a)  # torch wants writable, positive strides
        pixels = torch.from_numpy(own).permute(2, 0, 1)[None]  # a channels-last view, the fast path
        resized.append(F.interpolate(pixels, size=size, mode=mode, antialias=True))
    x = torch.cat(resized).to(model.device).float().div_(255)
    mean = torch.tensor(model.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def inference_threads(model: CamModel, method: str):
    """The context a batch loop runs in: `torch_yields_threads` where the compiled runtime runs the
    network (CAM on a model with a runner), else nothing."""
    return torch_yields_threads() if model.runner is not None and method == "cam" else contextlib.nullcontext()
