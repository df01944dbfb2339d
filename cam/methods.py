"""Map makers besides CAM: the gradient-weighted family, for one forward and one batched backward pass.

With A the feature map (B, C, h, w) and g = d logit_c / d A for a class c:
- Grad-CAM (Selvaraju et al., ICCV 2017): ReLU(sum_k mean_xy(g_k) A_k);
- Grad-CAM++ (Chattopadhay et al., WACV 2018): channel weights sum_xy ReLU(g) a with
  a = g^2 / (2 g^2 + sum_xy(A) g^3) (0 where g is 0), then ReLU of the weighted sum;
- LayerCAM (Jiang et al., TIP 2021): ReLU(sum_k ReLU(g_k) A_k), weighted pixel by pixel.
These are the formulas of pytorch-grad-cam's GradCAM, GradCAMPlusPlus and LayerCAM (the tests
compare). On a GAP model the gradient is W[c] / (h w) at every pixel, so Grad-CAM is the ReLU of
CAM scaled; CAM itself stays exact and needs no backward pass (`cam.localize.class_maps`). The
feature map is the model's (`CamModel.spatial`: a transformer's patch tokens on their grid).
"""

from __future__ import annotations

import contextlib

import torch

from .extractor import FeatureExtractor, ModeGuard
from .models import CamModel

METHODS = ("cam", "gradcam", "gradcam++", "layercam")
GRADIENT_METHODS = METHODS[1:]


def check_method(method, model: CamModel) -> str:
    """The method that runs for `method`: 'auto' is CAM where it is exact (`CamModel.cam_exact`),
    Grad-CAM elsewhere; CAM on a model where it is not exact is refused."""
    runnable = METHODS if model.cam_exact else GRADIENT_METHODS
    if method == "auto":
        return runnable[0]
    if method not in runnable:
        why = " (CAM is not exact for its head)" if method == "cam" else ""
        raise ValueError(f"{model.spec!r} can run 'auto', {', '.join(runnable)}{why}; got method {method!r}")
    return method


def gradient_maps(model: CamModel, batch: torch.Tensor, choose, method: str, flip: bool = False,
                  guide: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logits (B, n), class indices (B, k), maps (B, k, h, w) >= 0, guide map or None) of `method`,
    for the classes `choose(logits)` picks (e.g. the top k).

    One forward pass keeps the feature map in the graph; the chosen classes' gradients with respect
    to it come from one backward pass batched over the k classes (`is_grads_batched`). Nothing is
    accumulated in the parameters' `.grad`. With `flip` the mirrored images run in the same batch
    and their maps, mirrored back, are averaged; so are the logits the classes are chosen by.
    """
    n = batch.shape[0]
    x = torch.cat([batch, batch.flip(-1)]) if flip else batch
    guide_extractor = FeatureExtractor(model.guide_module, inputs=True) if guide and model.guide_layer else None
    with (ModeGuard(model.net), torch.enable_grad(), FeatureExtractor(model.feature_module, detach=False) as extractor,
          guide_extractor or contextlib.nullcontext()):
        logits = model.net(x.detach().requires_grad_(True)).float()
        ranked = (logits[:n] + logits[n:]) / 2 if flip else logits
        indices = choose(ranked.detach())
        chosen = logits.gather(1, indices.repeat(2, 1) if flip else indices)  # (N, k)
        features = extractor.features
        grads = _batched_gradients(chosen, features)  # (k, N, C, h, w)
    with torch.no_grad():
        activations, grads = model.spatial(features.detach().float()), model.spatial(grads.float())
        maps = _combine(method, activations, grads).transpose(0, 1)  # (N, k, h, w)
        guide_map = guide_extractor.features.float() if guide_extractor is not None else None
        if flip:
            maps = (maps[:n] + maps[n:].flip(-1)) / 2
            if guide_map is not None:
                guide_map = (guide_map[:n] + guide_map[n:].flip(-1)) / 2
        return ranked.detach(), indices, maps, guide_map


def _batched_gradients(chosen: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """d chosen[:, j] / d features for every column j at once: (k, N, C, h, w)."""
    k = chosen.shape[1]
    one_hot = torch.eye(k, dtype=chosen.dtype, device=chosen.device)[:, None, :].expand(k, chosen.shape[0], k)
    try:
        return torch.autograd.grad(chosen, features, grad_outputs=one_hot, is_grads_batched=True)[0]
    except RuntimeError:  # an operator without a batching rule: one backward pass per class
        return torch.stack([torch.autograd.grad(chosen[:, j].sum(), features, retain_graph=j < k - 1)[0]
                            for j in range(k)])


def _combine(method: str, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(k, N, h, w) maps from activations (N, C, h, w) and per-class gradients (k, N, C, h, w)."""
    if method == "gradcam":
        weights = grads.mean((3, 4), keepdim=True)
        return torch.relu((weights * activations).sum(2))
    if method == "gradcam++":
        squared = grads.square()
        total = activations.sum((2, 3), keepdim=True)  # (N, C, 1, 1)
        alpha = squared / (2 * squared + total * squared * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        weights = (torch.relu(grads) * alpha).sum((3, 4), keepdim=True)
        return torch.relu((weights * activations).sum(2))
    if method == "layercam":
        return torch.relu((torch.relu(grads) * activations).sum(2))
    raise ValueError(f"not a gradient method: {method!r}")
