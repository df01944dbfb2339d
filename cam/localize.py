"""One forward pass to top-k classes, their class activation maps and boxes."""

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .boxes import Box, check_threshold, mask_boxes, scale_box
from .data import Photo, read_photos
from .extractor import FeatureExtractor, ModeGuard
from .methods import check_method, gradient_maps
from .models import CamModel
from .runtime import torch_yields_threads

# The paper's setting: the model's own input size, no augmentation, 20% of the max, largest region.
PLAIN = {"input_size": None, "flip": False, "refine": False, "adapt": False, "threshold": 0.2}
# The recommended setting, chosen on the whole dev set as one setting for all images (README,
# "Localization quality"): a 288-pixel input (9x9 maps instead of 7x7), refined by feature affinity.
RECOMMENDED = {"input_size": 288, "flip": False, "refine": True, "adapt": False, "threshold": 0.2}
# The best setting: the recommended one averaged with the mirror image, each map's contrast adapted
# (`adapt_contrast`); on OpenVINO `localize` takes 0.94x the recommended setting's time on PyTorch.
BEST = {"input_size": 288, "flip": True, "refine": True, "adapt": True, "threshold": 0.2}
PRESETS = {"plain": PLAIN, "recommended": RECOMMENDED, "best": BEST}  # `quality=`'s names
# `adapt_contrast` takes 0.3 of a map's mean to 0.02: a 20% cut then falls at (0.3 * mean) ** 0.41.
ADAPT_MEAN_FRACTION, ADAPT_LEVEL = 0.3, 0.02
MAX_TOPK = 1000
DEFAULT_TOPK = 5  # classes localized when topk is not given (fewer where the model ranks fewer)
BAND_PIXELS = 1 << 21  # upsampled maps are made in bands of 8 MB of float32, which stay in the last-level cache


@dataclass
class Prediction:
    """One of the top-k classes: its probability, its boxes (in the photo's pixels) and its map,
    kept at feature resolution (`small_cam`) and upsampled to the photo's `size` on first read of
    `cam`: the boxes are cut without it, and the CLI's JSON and the app's screen-sized pictures
    never read it."""

    class_index: int
    label: str
    score: float
    boxes: list[Box]
    small_cam: np.ndarray = field(repr=False)
    size: tuple[int, int]  # (height, width) of the image, and of `cam`

    @functools.cached_property
    def cam(self) -> np.ndarray:
        """The map at the photo's own size, float32 in [0, 1]: the map the boxes were cut from, or,
        for a photo worked on reduced (`Result.working_image`), its upsampling to the photo's size."""
        return upsample_map(self.small_cam, self.size)

    def to_dict(self) -> dict:
        return {"class_index": self.class_index, "label": self.label, "score": self.score,
                "boxes": [list(b) for b in self.boxes]}


@dataclass
class Result:
    """The top-k predictions for one photo (ranked by score) and the photo they refer to: kept at
    working size (`working_image`, `cam.data.read_photo`), at its own upright size as `image`,
    decoded again on first read. Boxes and `width`/`height` are in the photo's own pixels."""

    predictions: list[Prediction]
    working_image: np.ndarray = field(repr=False)
    model: str = ""
    threshold: float = 0.2
    all_regions: bool = False
    refined: bool = False  # maps refined by feature affinity (`refine_maps`): no longer exact CAMs
    adapted: bool = False  # each map's contrast adapted to its spread (`adapt_contrast`)
    method: str = "cam"  # which map maker ran (`cam.methods.METHODS`)
    runtime: str = "torch"  # what ran the network (`CamModel.runtime`; gradient methods: always torch)
    size: tuple[int, int] | None = None  # the photo's own (height, width); None: the working image's
    source: object = field(default=None, repr=False)  # the path or bytes the full photo is decoded from

    def __post_init__(self):
        if self.size is None:
            self.size = tuple(self.working_image.shape[:2])

    @functools.cached_property
    def image(self) -> np.ndarray:
        """The upright photo at its own size: the working image itself, or decoded again in full."""
        return Photo(self.working_image, self.size, self.source).full()

    @property
    def width(self) -> int:
        return int(self.size[1])

    @property
    def height(self) -> int:
        return int(self.size[0])

    def to_dict(self) -> dict:
        """Everything but the arrays, JSON-ready."""
        return {"model": self.model, "width": self.width, "height": self.height, "threshold": self.threshold,
                "all_regions": self.all_regions, "refined": self.refined, "adapted": self.adapted,
                "method": self.method,
                "runtime": self.runtime,
                "predictions": [p.to_dict() for p in self.predictions]}

    def with_threshold(self, threshold: float, all_regions: bool | None = None) -> "Result":
        """The same maps boxed at another threshold; no network is run."""
        threshold = check_threshold(threshold)
        all_regions = self.all_regions if all_regions is None else bool(all_regions)
        boxes = photo_boxes([p.small_cam for p in self.predictions], self.working_image.shape[:2], self.size,
                            threshold, all_regions)
        predictions = [replace(p, boxes=b) for p, b in zip(self.predictions, boxes)]
        return replace(self, predictions=predictions, threshold=threshold, all_regions=all_regions)


def localize(model: CamModel, image, topk: int | None = None, threshold: float = RECOMMENDED["threshold"],
             all_regions: bool = False, input_size: int | None = RECOMMENDED["input_size"],
             flip: bool = RECOMMENDED["flip"], refine: bool = RECOMMENDED["refine"], method: str = "auto",
             adapt: bool = RECOMMENDED["adapt"], quality: str | None = None, classes=None) -> Result:
    """Classify `image` (path, PIL image or HxWx3 uint8) and localize its top-k classes.

    One forward pass gives the logits and the feature map; the maps of all top-k classes come from
    one tensor product with the classifier weights, upsampled to the image's own size, normalised
    to [0, 1] and boxed by `threshold` (fraction of the max). `input_size` overrides the model's
    square input side; `flip` averages the maps of the image and its mirror image; `refine` spreads
    each map over the pixels whose finer features look alike (`refine_maps`; `Result.refined` says
    whether it was applied: a model without a finer stage keeps its exact CAMs). `adapt` adapts each
    map's contrast to its spread (`adapt_contrast`). `method` picks the map maker: "cam", or
    "gradcam", "gradcam++", "layercam" (one backward pass more, `cam.methods`); "auto" is CAM where
    it is exact (`CamModel.cam_exact`), Grad-CAM elsewhere. `Result.method` says which ran.
    `topk` defaults to `DEFAULT_TOPK` or the number of classes ranked, whichever is smaller.
    `quality` names a preset ("plain", "recommended", "best"; `PRESETS`) whose input size, flip,
    refine and adapt replace those arguments (README, "Localization quality"). `classes` (class
    indices or names of the model) ranks only those: the top-k among them, with their probabilities
    among all the model's classes.
    """
    return localize_batch(model, [image], topk, threshold, all_regions, input_size, flip, refine, method=method,
                          adapt=adapt, quality=quality, classes=classes)[0]


def localize_batch(model: CamModel, images, topk: int | None = None, threshold: float = RECOMMENDED["threshold"],
                   all_regions: bool = False, input_size: int | None = RECOMMENDED["input_size"],
                   flip: bool = RECOMMENDED["flip"], refine: bool = RECOMMENDED["refine"],
                   batch_size: int | None = None, method: str = "auto", adapt: bool = RECOMMENDED["adapt"],
                   quality: str | None = None, classes=None) -> list[Result]:
    """`localize` for many images, run through the network `batch_size` at a time
    (default: `inference_batch_size`). On a compiled runtime, PyTorch's own ops (resizing, maps,
    boxes) run on one thread meanwhile (`cam.runtime.torch_yields_threads`)."""
    if not isinstance(model, CamModel):
        raise TypeError(f"model must be a CamModel from cam.load_model, got {type(model).__name__}")
    input_size, flip, refine, adapt = preset_settings(quality, input_size, flip, refine, adapt)
    chosen = None if classes is None else torch.tensor(class_indices(model, classes), device=model.device)
    ranked = len(model.class_names) if chosen is None else len(chosen)
    topk = _check_topk(min(DEFAULT_TOPK, ranked) if topk is None else topk, ranked)
    method = check_method(method, model)
    threshold = check_threshold(threshold)
    size = check_input_size(input_size, model)
    batch_size = batch_size or inference_batch_size(model, size)
    with inference_threads(model, method):
        return _localize_batches(model, images, topk, threshold, all_regions, size, flip, refine, adapt, batch_size,
                                 method, chosen)


def inference_threads(model: CamModel, method: str):
    """The context a batch loop runs in: `torch_yields_threads` where the compiled runtime runs the
    network (CAM on a model with a runner), else nothing."""
    return torch_yields_threads() if model.runner is not None and method == "cam" else contextlib.nullcontext()


def preset_settings(quality: str | None, input_size, flip: bool, refine: bool, adapt: bool) -> tuple:
    """(input_size, flip, refine, adapt): those given, or with `quality` the preset's of that name."""
    if quality is None:
        return input_size, bool(flip), bool(refine), bool(adapt)
    if quality not in PRESETS:
        raise ValueError(f"quality must be one of {', '.join(PRESETS)} (or None), got {quality!r}")
    preset = PRESETS[quality]
    return preset["input_size"], preset["flip"], preset["refine"], preset["adapt"]


def class_indices(model: CamModel, classes) -> list[int]:
    """The model's class indices of `classes` (indices, or names as in `model.class_names`, any case),
    in the order given; a name or index the model lacks is a ValueError that says what it has."""
    names: dict[str, list[int]] = {}
    for i, name in enumerate(model.class_names):
        names.setdefault(name.lower(), []).append(i)
    indices = []
    for value in classes:
        if isinstance(value, str):
            found = names.get(value.strip().lower(), [])
            if not found:
                close = difflib.get_close_matches(value.strip().lower(), names, n=3)
                hint = f"; did you mean {', '.join(repr(model.class_names[names[c][0]]) for c in close)}?" if close else ""
                raise ValueError(f"{value!r} is not a class of {model.spec}{hint}")
            if len(found) > 1:
                raise ValueError(f"{value!r} names {len(found)} classes of {model.spec} ({', '.join(map(str, found))}): "
                                 "give the index of the one you mean")
            indices.append(found[0])
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(model.class_names):
            indices.append(int(value))
        else:
            raise ValueError(f"classes holds {value!r}: a class name or an index below {len(model.class_names)}")
    if not indices or len(set(indices)) != len(indices):
        raise ValueError("classes must name at least one class, each once")
    return indices


def _ranked(logits: torch.Tensor, topk: int, chosen: torch.Tensor | None) -> torch.Tensor:
    """The class indices (B, k) of the top-k logits, among the `chosen` classes only if given."""
    if chosen is None:
        return logits.topk(topk, dim=1).indices
    return chosen[logits[:, chosen].topk(topk, dim=1).indices]


def _localize_batches(model, images, topk, threshold, all_regions, size, flip, refine, adapt, batch_size,
                      method, chosen=None) -> list[Result]:
    results = []
    for start in range(0, len(images), batch_size):
        photos = read_photos(images[start:start + batch_size], cover=max(size))
        batch = preprocess(model, [photo.pixels for photo in photos], size)
        if method == "cam":
            logits, features, guide = forward_features(model, batch, flip, refine)
            indices = _ranked(logits, topk, chosen)
            small = class_maps(model, features, indices, guide)
        else:
            logits, indices, maps, guide = gradient_maps(model, batch, lambda z: _ranked(z, topk, chosen), method,
                                                         flip, refine)
            small = maps if guide is None else refine_maps(maps, guide)
        scores = logits.softmax(1).gather(1, indices)
        small = (adapt_contrast(small) if adapt else small).cpu().numpy()
        for i, photo in enumerate(photos):
            maps = normalise_for_size(small[i], photo.size)
            boxes = photo_boxes(maps, photo.pixels.shape[:2], photo.size, threshold, all_regions)
            predictions = [Prediction(int(c), model.class_names[int(c)], float(s), b, m, photo.size)
                           for c, s, b, m in zip(indices[i].tolist(), scores[i].tolist(), boxes, maps)]
            results.append(Result(predictions, photo.pixels, model.spec, threshold, bool(all_regions),
                                  guide is not None, adapt, method, model.runtime if method == "cam" else "torch",
                                  photo.size, photo.source))
    return results


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


def forward_features(model: CamModel, batch: torch.Tensor, flip: bool = False,
                     guide: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward pass: (logits, feature map entering the pooling, guide map), all (B, ...) float32.

    The guide map, the features one stride finer (`CamModel.guide_layer`), is captured only with
    `guide` (else None). With `flip` the mirrored images run in the same batch; logits and
    (mirrored back) maps are averaged, which keeps ``mean_xy(map) @ W + b == logits`` exact.
    """
    n = batch.shape[0]
    x = torch.cat([batch, batch.flip(-1)]) if flip else batch
    compiled = _run_compiled(model, x) if model.runner is not None else None
    if compiled is not None:
        logits, features, guide_map = compiled
        maps = [model.features_to_maps(features).float()]
        if guide and guide_map is not None:
            maps.append(guide_map.float())
    else:  # PyTorch, or a compiled runtime that could not convert this model
        guide_extractor = FeatureExtractor(model.guide_module, inputs=True) if guide and model.guide_layer else None
        with (ModeGuard(model.net), torch.inference_mode(), FeatureExtractor(model.feature_module) as extractor,
              guide_extractor or contextlib.nullcontext()):
            logits = model.net(x)
        maps = [model.features_to_maps(extractor.features).float()]
        if guide_extractor is not None:
            maps.append(guide_extractor.features.float())
    logits = logits.float()
    if flip:
        logits = (logits[:n] + logits[n:]) / 2
        maps = [(m[:n] + m[n:].flip(-1)) / 2 for m in maps]
    return logits, maps[0], maps[1] if len(maps) > 1 else None


def _run_compiled(model: CamModel, x: torch.Tensor):
    """The compiled runtime's (logits, features, guide); None if it cannot convert the model, after
    one log line, and PyTorch from then on (`model.runtime` becomes "torch")."""
    try:
        return model.runner(x)
    except Exception as exc:  # a converter's failure can be any error; the fallback must hold
        logging.getLogger(__name__).warning("%s cannot run %s (%s: %s); using PyTorch", model.runtime, model.spec,
                                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        model.runtime, model.runner = "torch", None
        return None


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


def upsample_map(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly upsample an (h, w) map to `size` (H, W), float32, pixel centres aligned (the
    geometry of torch's align_corners=False and cv2's INTER_LINEAR).

    Each row of the map is upsampled to the width W first (map @ cols.T, h x W); then each run of
    output rows between the same two of those rows is one product and one sum (`_band`), in bands
    of rows (`_bands`): on one thread 0.19 ms for 1 MP, against 0.37 ms for the product with the
    full (H, h) weight matrix, whose weights are mostly zeros (docs/experiments.md). The result goes
    into a numpy array: for 12 MP maps numpy's allocator made it 3x faster than a fresh torch tensor.
    """
    interpolators = _interpolators(small, size)
    out = np.empty(size, np.float32)
    target = torch.from_numpy(out)
    for start, stop in _bands(*size):
        _band(interpolators, start, stop, target[start:stop])
    return out


def boxes_of_maps(smalls, size: tuple[int, int], threshold: float, all_regions: bool = False) -> list[list[Box]]:
    """For each (h, w) map, `boxes_from_map(upsample_map(small, size), threshold, all_regions)`, bit
    for bit, without keeping the upsampled maps (most callers never read them): each is made a band
    at a time in buffers that all the maps share, and each band is thresholded while it is still in
    cache, so only a 1-byte mask reaches memory (README, "Speed").

    The cut needs a map's exact maximum first: it is read from the few blocks that can hold it
    (`_peak_blocks`), in bands that are made first and kept for the thresholding pass.
    """
    bands = _bands(*size)
    mask = np.empty(size, bool)
    buffers: list[torch.Tensor] = []  # band-sized, shared by the maps

    def buffer(slot: int) -> torch.Tensor:
        if slot == len(buffers):
            buffers.append(torch.empty((bands[0][1], size[1])))
        return buffers[slot]

    boxes = []
    for small, (top_rows, top_cols) in zip(smalls, _peak_blocks(smalls, size)):
        interpolators = _interpolators(small, size)
        kept, peak = {}, -np.inf
        for start, stop in bands:
            if start < top_rows.stop and top_rows.start < stop:
                kept[start] = _band(interpolators, start, stop, buffer(len(kept)))
                near = slice(max(top_rows.start - start, 0), top_rows.stop - start)
                peak = max(peak, float(kept[start][near, top_cols].max()))
        if peak <= 0:  # as boxes_from_map: no location (a normalised flat map is all zeros)
            boxes.append([])
            continue
        cutoff = np.float32(threshold * peak)
        for start, stop in bands:
            values = kept[start] if start in kept else _band(interpolators, start, stop, buffer(len(kept)))
            np.greater_equal(values, cutoff, out=mask[start:stop])
        boxes.append(mask_boxes(mask, all_regions))
    return boxes


def photo_boxes(smalls, working: tuple[int, int], size: tuple[int, int], threshold: float,
                all_regions: bool = False) -> list[list[Box]]:
    """`boxes_of_maps` cut at the `working` (h, w) resolution and scaled to the photo's own `size`
    (H, W): a 12 MP photo's boxes cost what a 1 MP photo's do, within a working pixel of the boxes
    cut at full size."""
    boxes = boxes_of_maps(smalls, working, threshold, all_regions)
    if tuple(working) == tuple(size):
        return boxes
    return [[scale_box(b, working, size) for b in found] for found in boxes]


def normalise_for_size(small: np.ndarray, size: tuple[int, int], margin: float = 1e-6) -> np.ndarray:
    """Rescale (..., h, w) maps so that each one's upsampling to `size` spans [0, 1]: min-max
    normalisation after upsampling, as the paper and wsolevaluation do, without a pass over the big map.

    The pixel grid rarely hits a small map's own extremes (at 227 px from 9x9 the upsampled peak
    can be 2% lower), but a bilinear map is linear along each row and column between samples, so
    its extremes lie on the pixels next to the samples; they are evaluated there. `margin` keeps
    float rounding inside [0, 1]. A flat map becomes all zeros.
    """
    small = np.asarray(small, dtype=np.float64)
    _, _, values = _values_next_to_samples(small, size)
    low, high = values.min((-2, -1), keepdims=True), values.max((-2, -1), keepdims=True)
    span = high - low
    flat = ~(span > 1e-9 * np.maximum(1.0, np.abs(high)))
    scaled = (small - low) * ((1 - 2 * margin) / np.where(flat, 1.0, span)) + margin
    return np.where(flat, 0.0, scaled).astype(np.float32)


@functools.lru_cache(maxsize=16)  # the last few photo sizes: a photo's maps share them
def _interpolation_weights(n_out: int, n_in: int) -> np.ndarray:
    """The (n_out, n_in) weights of a bilinear upsampling from n_in samples to n_out pixels along one
    axis: pixel centres aligned, the edges held constant (as `upsample_map`)."""
    position = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(0, n_in - 1)
    left = np.minimum(np.floor(position).astype(int), max(n_in - 2, 0))
    weight = position - left
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), left] = 1 - weight
    if n_in > 1:
        matrix[np.arange(n_out), left + 1] += weight
    matrix.flags.writeable = False  # shared by every call through the cache
    return matrix


@functools.lru_cache(maxsize=64)
def _sample_grid(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis of an upsampling from n_in samples to n_out pixels: the output indices on either
    side of every sample and at both ends (one pixel of slack), and their rows of the interpolation
    weights, a (len(indices), n_in) matrix."""
    source = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(-1, n_in - 1)
    edges = np.flatnonzero(np.diff(source))
    at = np.unique(np.concatenate([[0, n_out - 1], edges - 1, edges, edges + 1, edges + 2]).clip(0, n_out - 1))
    matrix = _interpolation_weights(n_out, n_in)[at]
    at.flags.writeable = matrix.flags.writeable = False  # shared by every call through the cache
    return at, matrix


def _values_next_to_samples(smalls: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., h, w) float64 maps upsampled to `size`, evaluated only on the pixels next to their
    samples (`_sample_grid`): the row indices, the column indices and the values there."""
    (y, rows), (x, cols) = (_sample_grid(n_out, n_in) for n_out, n_in in zip(size, smalls.shape[-2:]))
    return y, x, rows @ smalls @ cols.T


def _bands(height: int, width: int) -> list[tuple[int, int]]:
    """The row ranges [start, stop) an upsampling to (height, width) is made in (one below 2 MP):
    8 MB of float32 each, which stays in the last-level cache while `boxes_of_maps` thresholds it."""
    step = max(1, min(BAND_PIXELS // width, height))
    return [(start, min(start + step, height)) for start in range(0, height, step)]


def _interpolators(small: np.ndarray, size: tuple[int, int]):
    """What `_band` makes the upsampled map from: the runs of output rows and their weights
    (`_row_runs`), each row of the map upsampled to the width W (h, W), and the steps between
    consecutive ones (h, W; the last is zeros)."""
    runs = _row_runs(size[0], small.shape[0])
    with torch.inference_mode():
        across = torch.tensor(small, dtype=torch.float32) @ _float32_weights(size[1], small.shape[1]).T
        steps = torch.zeros_like(across)
        torch.sub(across[1:], across[:-1], out=steps[:-1])
    return runs, across, steps


@functools.lru_cache(maxsize=16)
def _float32_weights(n_out: int, n_in: int) -> torch.Tensor:
    """`_interpolation_weights` as a float32 tensor, converted once per photo size (only ever read)."""
    return torch.tensor(_interpolation_weights(n_out, n_in), dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _row_runs(n_out: int, n_in: int) -> tuple[tuple[tuple[int, int, int], ...], torch.Tensor]:
    """Along the rows of an upsampling from n_in to n_out: the runs [start, stop) of output rows that
    lie between the same two input rows, with the upper one's index, and each output row's weight
    of the lower one, (n_out, 1) float32 (the weights of `_interpolation_weights`)."""
    position = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).clip(0, n_in - 1)
    upper = np.minimum(np.floor(position).astype(int), max(n_in - 2, 0))
    starts = np.flatnonzero(np.r_[True, np.diff(upper) != 0])
    runs = tuple(zip(starts.tolist(), np.r_[starts[1:], n_out].tolist(), upper[starts].tolist()))
    return runs, torch.tensor(position - upper, dtype=torch.float32)[:, None]


def _band(interpolators, start: int, stop: int, out: torch.Tensor) -> np.ndarray:
    """Rows [start, stop) of the upsampled map, written into the first rows of `out`: the one
    place a band is made, so `upsample_map` and `boxes_of_maps` get the same bits. Each row is
    ``upper + weight * step``, one product and one sum, each rounded once: the bits do not depend
    on how the rows are split into runs, bands or threads."""
    (runs, weights), across, steps = interpolators
    band = out[:stop - start]
    with torch.inference_mode():
        for first, last, upper in runs:
            first, last = max(first, start), min(last, stop)
            if first < last:
                rows = band[first - start:last - start]
                torch.mul(weights[first:last], steps[upper], out=rows)
                rows.add_(across[upper])
    return band.numpy()


def _peak_blocks(smalls, size: tuple[int, int]) -> list[tuple[slice, slice]]:
    """For each (h, w) map, the rows and columns of its upsampling to `size` that hold its maximum,
    from its values next to the samples alone: between those pixels the map is bilinear, so a
    block's pixels exceed its corners only by float rounding, and only blocks whose corners come
    within 1e-6 (of the map's scale) of the top can hold the maximum."""
    smalls = np.asarray(smalls, np.float64)
    y, x, corners = _values_next_to_samples(smalls, size)
    if len(y) < 2 or len(x) < 2:
        return [(slice(0, size[0]), slice(0, size[1]))] * len(smalls)
    block_max = np.maximum(np.maximum(corners[:, :-1, :-1], corners[:, 1:, :-1]),
                           np.maximum(corners[:, :-1, 1:], corners[:, 1:, 1:]))
    top = corners.max((1, 2)) - 1e-6 * np.maximum(1.0, np.abs(smalls).max((1, 2)))
    blocks = []
    for near in block_max >= top[:, None, None]:
        near_rows, near_cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
        blocks.append((slice(int(y[near_rows[0]]), int(y[near_rows[-1] + 1]) + 1),
                       slice(int(x[near_cols[0]]), int(x[near_cols[-1] + 1]) + 1)))
    return blocks


def _check_topk(topk, num_classes: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise ValueError(f"topk must be an integer, got {topk!r}")
    if not 1 <= topk <= min(num_classes, MAX_TOPK):
        raise ValueError(f"topk must be between 1 and {min(num_classes, MAX_TOPK)}, got {topk}")
    return int(topk)


def check_input_size(input_size, model: CamModel) -> tuple[int, int]:
    """The (h, w) the model sees: `input_size` squared, or the model's own size for None and for a
    transformer with a fixed patch grid (`CamModel.fixed_input`)."""
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer))
                                   or not 32 <= input_size <= 1024):
        raise ValueError(f"input_size must be an integer between 32 and 1024 (or None), got {input_size!r}")
    if input_size is None or model.fixed_input:
        return tuple(model.input_size)
    return (int(input_size), int(input_size))
