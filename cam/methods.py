"""Map makers, registered by name in `MAKERS`, and the one path their small maps take (`make_maps`:
refine, adapt). CAM needs one forward pass (`cam_maps`); the gradient-weighted family one forward
and one batched backward pass.

With A the feature map (B, C, h, w) and g = d logit_c / d A for a class c:
- Grad-CAM (Selvaraju et al., ICCV 2017): ReLU(sum_k mean_xy(g_k) A_k);
- Grad-CAM++ (Chattopadhay et al., WACV 2018): channel weights sum_xy ReLU(g) a with
  a = g^2 / (2 g^2 + sum_xy(A) g^3) (0 where g is 0), then ReLU of the weighted sum;
- LayerCAM (Jiang et al., TIP 2021): ReLU(sum_k ReLU(g_k) A_k), weighted pixel by pixel.
These are the formulas of pytorch-grad-cam's GradCAM, GradCAMPlusPlus and LayerCAM (the tests
compare). On a GAP model the gradient is W[c] / (h w) at every pixel, so Grad-CAM is the ReLU of
CAM scaled; CAM itself stays exact and needs no backward pass (`class_maps`). The
feature map is the model's (`CamModel.spatial`: a transformer's patch tokens on their grid).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from .extractor import FeatureExtractor, ModeGuard
from .models import CamModel
from .runtime import full_float32, run_compiled

GRADIENT_METHODS = ("gradcam", "gradcam++", "layercam")
# `adapt_contrast` takes 0.3 of a map's mean to 0.02: a 20% cut then falls at (0.3 * mean) ** 0.41.
ADAPT_MEAN_FRACTION, ADAPT_LEVEL = 0.3, 0.02


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
    with (ModeGuard(model.net), torch.enable_grad(), full_float32(model.device),
          FeatureExtractor(model.feature_module, detach=False) as extractor, guide_extractor or contextlib.nullcontext()):
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
    """d chosen[:, j] / d features for every column j at once: (k, N, C, h, w). The batched pass
    keeps the graph (freed with it on return), so that the per-class retry can still run backward
    where the batched one failed part way."""
    k = chosen.shape[1]
    one_hot = torch.eye(k, dtype=chosen.dtype, device=chosen.device)[:, None, :].expand(k, chosen.shape[0], k)
    try:
        return torch.autograd.grad(chosen, features, grad_outputs=one_hot, is_grads_batched=True, retain_graph=True)[0]
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


def cam_maps(model: CamModel, batch: torch.Tensor, choose, flip: bool = False, guide: bool = False,
             outputs: tuple | None = None):
    """CAM: (logits, the classes `choose(logits)` picks, their raw maps, guide map or None, what ran
    the network), from one forward pass on the model's runtime, or from that pass's `outputs`
    (`forward`'s, with the guide map) where the caller has run it already."""
    logits, features, guide_map, ran = outputs if outputs is not None else forward(model, batch, flip, guide)
    indices = choose(logits)
    return logits, indices, class_maps(model, features, indices), guide_map if guide else None, ran


def _gradient_maker(method: str):
    def maker(model: CamModel, batch: torch.Tensor, choose, flip: bool = False, guide: bool = False):
        return (*gradient_maps(model, batch, choose, method, flip, guide), "torch")  # a backward pass: PyTorch

    maker.__doc__ = f"{method}: `gradient_maps`, run on PyTorch."
    return maker


MAKERS = {"cam": cam_maps, **{method: _gradient_maker(method) for method in GRADIENT_METHODS}}
METHODS = tuple(MAKERS)


def make_maps(model: CamModel, batch: torch.Tensor, method: str, choose, flip: bool = False, refine: bool = False,
              adapt: bool = False, outputs: tuple | None = None):
    """The one path from a batch to its small maps, for `localize` and `evaluate` alike: `method`'s
    maker (`MAKERS`) for the classes `choose(logits)` picks, then refined by the guide features where
    the model has them (`refine_maps`) and contrast adapted (`adapt_contrast`). The `outputs` of a
    plain `forward` pass already run on `batch` (with its guide map: the detector's) serve CAM
    without flip; any other map runs its own pass. Returns (logits, indices, maps (B, k, h, w)
    float32, whether they were refined, what ran the network)."""
    if outputs is not None and method == "cam" and not flip:
        logits, indices, maps, guide, ran = cam_maps(model, batch, choose, guide=refine, outputs=outputs)
    else:
        logits, indices, maps, guide, ran = MAKERS[method](model, batch, choose, flip=flip, guide=refine)
    if guide is not None:
        maps = refine_maps(maps, guide)
    return logits, indices, adapt_contrast(maps) if adapt else maps.float(), guide is not None, ran


def forward_features(model: CamModel, batch: torch.Tensor, flip: bool = False,
                     guide: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward pass: (logits, feature map entering the pooling, guide map), all (B, ...) float32.

    The guide map, the features one stride finer (`CamModel.guide_layer`), is captured only with
    `guide` (else None). With `flip` the mirrored images run in the same batch; logits and
    (mirrored back) maps are averaged, which keeps ``mean_xy(map) @ W + b == logits`` exact.
    """
    logits, features, guide_map, _ = forward(model, batch, flip, guide)
    return logits, features, guide_map


def forward(model: CamModel, batch: torch.Tensor, flip: bool = False, guide: bool = False):
    """`forward_features` and what ran the network: "torch", or the compiled runtime's name."""
    n = batch.shape[0]
    x = torch.cat([batch, batch.flip(-1)]) if flip else batch
    ran = model.runtime
    compiled = run_compiled(model, x)
    if compiled is not None:
        logits, features, guide_map = compiled
        maps = [model.features_to_maps(features).float()]
        if guide and guide_map is not None:
            maps.append(guide_map.float())
    else:  # PyTorch, or a compiled runtime that failed on this batch or could not convert the model
        ran = "torch"
        guide_extractor = FeatureExtractor(model.guide_module, inputs=True) if guide and model.guide_layer else None
        with (ModeGuard(model.net), torch.inference_mode(), full_float32(model.device),
              FeatureExtractor(model.feature_module) as extractor, guide_extractor or contextlib.nullcontext()):
            logits = model.net(x)
        maps = [model.features_to_maps(extractor.features).float()]
        if guide_extractor is not None:
            maps.append(guide_extractor.features.float())
    logits = logits.float()
    if flip:
        logits = (logits[:n] + logits[n:]) / 2
        maps = [(m[:n] + m[n:].flip(-1)) / 2 for m in maps]
    return logits, maps[0], maps[1] if len(maps) > 1 else None, ran


def class_maps(model: CamModel, features: torch.Tensor, indices: torch.Tensor,
               guide: torch.Tensor | None = None) -> torch.Tensor:
    """Raw CAMs (B, k, h, w) of the classes `indices` (B, k): ``W[c] . F`` at every pixel, no bias.

    Averaged over space and plus the bias, each map gives exactly its class's logit. With the
    `guide` map of `forward_features`, the maps are refined by it (`refine_maps`), no longer exact.
    """
    weight, _ = model.classifier_params()
    with torch.inference_mode():
        maps = torch.einsum("bkc,bchw->bkhw", weight.float()[indices], features)
    return maps if guide is None else refine_maps(maps, guide)


def refine_maps(maps: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Refine (B, k, h, w) maps with the (B, C, H, W) guide features one stride finer: (B, k, H, W).

    Each map is upsampled to the guide's grid, and every guide pixel takes the map's mean over all
    pixels weighted by the cosine similarity of their guide features (negatives count as 0), so
    the map spreads over the parts that look like its peak and stops at edges the 7x7 grid cannot
    see. Each result is then min-max normalised and squared, which keeps the paper's 20% threshold
    fitting (0.2 of the squared map is 0.45 of the plain one). README, "Localization quality".
    """
    _, _, height, width = guide.shape
    with torch.inference_mode():
        upsampled = F.interpolate(maps.float(), size=(height, width), mode="bilinear", align_corners=False)
        refined = []
        for values, features in zip(upsampled.flatten(2), guide.float().flatten(2)):  # one image at a time: N x N
            unit = F.normalize(features, dim=0)
            affinity = (unit.T @ unit).clamp_(min=0)
            affinity /= affinity.sum(1, keepdim=True).clamp_(min=1e-12)
            refined.append(values @ affinity.T)
        refined = torch.stack(refined)
        low, high = refined.amin(2, keepdim=True), refined.amax(2, keepdim=True)
        span = high - low
        scaled = torch.where(span > 1e-12, (refined - low) / span.clamp(min=1e-12), torch.zeros_like(refined))
        return scaled.square().view(*maps.shape[:2], height, width)


def adapt_contrast(maps: torch.Tensor) -> torch.Tensor:
    """Each (..., h, w) map min-max normalised, then raised to the power that takes 0.3 of its mean
    to 0.02 (`ADAPT_MEAN_FRACTION`, `ADAPT_LEVEL`): a 20% threshold then cuts it at
    (0.3 * mean) ** 0.41 instead of at 20% of its peak, so a map spread wide is cut higher and a
    peaked one lower. The order of its pixels is kept; a flat map becomes all zeros. On the dev set,
    with flip: MaxBoxAccV2 0.719 -> 0.740, top-1 loc 0.580 -> 0.621 (README, "Localization quality")."""
    with torch.inference_mode():
        maps = maps.float()
        low, high = maps.amin((-2, -1), keepdim=True), maps.amax((-2, -1), keepdim=True)
        span = high - low
        scaled = torch.where(span > 1e-12, (maps - low) / span.clamp(min=1e-12), torch.zeros_like(maps))
        level = (scaled.mean((-2, -1), keepdim=True) * ADAPT_MEAN_FRACTION).clamp(1e-3, 0.999)
        return scaled.pow(math.log(ADAPT_LEVEL) / level.log())
