"""One forward pass to top-k classes, their class activation maps and boxes: the package's API and
its `Result`. The settings are `cam.settings.Settings`; the way in is `cam.preprocess`, the maps
come from `cam.methods`, the way out to the photo's pixels is `cam.upsample`."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .boxes import Box, check_threshold, covered, iou, scale_box
from .detector import detections
from .data import Photo, read_photos
from .methods import check_method, forward, make_maps
from .models import CamModel
from .runtime import full_float32
from .preprocess import check_input_size, inference_batch_size, inference_threads, preprocess
from .settings import Settings, settings_of
from .upsample import normalise_for_size, photo_boxes, upsample_map

MAX_TOPK = 1000
DEFAULT_TOPK = 5  # classes localized when topk is not given (fewer where the model ranks fewer)


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
    box_scores: list[float] | None = None  # the detector's score of each box (None: boxes cut from the map)
    # The detector's own (score, box)s of this class, best first, where it ran: kept so that another
    # threshold merges them again with the maps' new boxes (`Result.with_threshold`, both).
    detected: list[tuple[float, Box]] | None = field(default=None, repr=False)

    @functools.cached_property
    def cam(self) -> np.ndarray:
        """The map at the photo's own size, float32 in [0, 1]: the map the boxes were cut from, or,
        for a photo worked on reduced (`Result.working_image`), its upsampling to the photo's size."""
        return upsample_map(self.small_cam, self.size)

    def to_dict(self) -> dict:
        found = {"class_index": self.class_index, "label": self.label, "score": self.score,
                 "boxes": [list(b) for b in self.boxes]}
        if self.box_scores is not None:
            found["box_scores"] = list(self.box_scores)
        return found


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
    box_source: str = "cam"  # "cam": cut from the maps at `threshold`; "detector": the checkpoint's detector; "both"
    box_overlap: float = 0.5  # the detector boxes' overlap cut it ran with (`Settings.box_overlap`)
    box_score: float = 0.0  # the least score of a box it ran with (`Settings.box_score`)

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
                "method": self.method, "runtime": self.runtime, "box_source": self.box_source,
                "predictions": [p.to_dict() for p in self.predictions]}

    def with_threshold(self, threshold: float, all_regions: bool | None = None) -> "Result":
        """The same maps boxed at another threshold; no network is run. Both: the maps' new boxes
        merged again with the detector's kept ones; the maps' boxes alone otherwise (also where
        the detector's were shown)."""
        threshold = check_threshold(threshold)
        all_regions = self.all_regions if all_regions is None else bool(all_regions)
        boxes = photo_boxes([p.small_cam for p in self.predictions], self.working_image.shape[:2], self.size,
                            threshold, all_regions)
        if self.box_source == "both":
            predictions = [replace(p, **dict(zip(("boxes", "box_scores"), _class_boxes(
                p.score, b, p.detected or [], self.box_score, self.box_overlap))))
                for p, b in zip(self.predictions, boxes)]
            return replace(self, predictions=predictions, threshold=threshold, all_regions=all_regions)
        predictions = [replace(p, boxes=b, box_scores=None) for p, b in zip(self.predictions, boxes)]
        return replace(self, predictions=predictions, threshold=threshold, all_regions=all_regions, box_source="cam")


def localize(model: CamModel, image, settings: Settings | str | None = None, **options) -> Result:
    """Classify `image` (path, bytes, PIL image or HxWx3 uint8) and localize its top-k classes.

    One forward pass gives the logits and the feature map; the maps of all top-k classes come from
    one tensor product with the classifier weights, upsampled to the image's own size, normalised
    to [0, 1] and boxed at `threshold` (a fraction of the max). `settings` is a `cam.Settings` or a
    preset's name ("plain", "recommended": the default, "best"; `cam.PRESETS`); keyword `options`
    (its field names: topk, threshold, all_regions, input_size, flip, refine, adapt, method,
    classes, min_score, boxes, box_score, box_overlap; and `quality`, a preset's name) replace its
    fields for this call; `boxes` says where boxes come from (the maps, a checkpoint's detector, or
    both), `box_score` and `box_overlap` which detector boxes are kept. See
    `cam.settings.Settings` for what each does; `Result.method`, `.refined` and `.runtime` say what ran.
    """
    return localize_batch(model, [image], settings, **options)[0]


def localize_batch(model: CamModel, images, settings: Settings | str | None = None, batch_size: int | None = None,
                   **options) -> list[Result]:
    """`localize` for many images, run through the network `batch_size` at a time (default:
    `inference_batch_size`), their files decoded in parallel at working size (`cam.data.read_photo`).
    On a compiled runtime, PyTorch's own ops (resizing, maps, boxes) run on one thread meanwhile
    (`cam.runtime.torch_yields_threads`)."""
    if not isinstance(model, CamModel):
        raise TypeError(f"model must be a CamModel from cam.load_model, got {type(model).__name__}")
    settings = settings_of(settings, **options)
    chosen = None if settings.classes is None else torch.tensor(class_indices(model, settings.classes),
                                                                device=model.device)
    ranked = len(model.class_names) if chosen is None else len(chosen)
    topk = _check_topk(min(DEFAULT_TOPK, ranked) if settings.topk is None else settings.topk, ranked)
    method = check_method(settings.method, model)
    size = check_input_size(settings.input_size, model)
    source = box_source(model, settings.boxes)
    detect = source != "cam"
    batch_size = batch_size or inference_batch_size(model, size)
    results = []
    with inference_threads(model, method):
        for start in range(0, len(images), batch_size):
            photos = read_photos(images[start:start + batch_size], cover=max(size))
            batch = preprocess(model, [photo.pixels for photo in photos], size)
            outputs = forward(model, batch, guide=True) if detect else None  # the detector's pass, CAM's too
            logits, indices, small, refined, ran = make_maps(model, batch, method, lambda z: _ranked(z, topk, chosen),
                                                             settings.flip, settings.refine, settings.adapt, outputs)
            if not torch.isfinite(logits).all():  # else every score is NaN and the result silently empty
                raise ValueError(f"{model.spec} gave NaN or infinite scores: its weights or the input are broken")
            found = None
            if detect:
                with full_float32(model.device):  # as the backbone's pass: the GPU's boxes are the CPU's
                    found = detections(model.detector, outputs[2], outputs[1], *model.classifier_params(), size)
            scores = logits.softmax(1).gather(1, indices)
            small = small.cpu().numpy()
            for i, photo in enumerate(photos):
                kept = [j for j, s in enumerate(scores[i].tolist()) if s >= settings.min_score]
                maps = normalise_for_size(small[i][kept], photo.size)
                classes = [int(indices[i, j]) for j in kept]
                boxes, box_scores, detected = None, [None] * len(kept), [None] * len(kept)
                if source != "detector":
                    boxes = photo_boxes(maps, photo.pixels.shape[:2], photo.size, settings.threshold,
                                        settings.all_regions)
                if detect:
                    boxes, box_scores, detected = _detector_boxes(found[i], classes,
                                                                  [float(scores[i, j]) for j in kept], size,
                                                                  photo.size, settings, boxes)
                predictions = [Prediction(c, model.class_names[c], float(scores[i, j]), b, m, photo.size, bs, d)
                               for c, j, b, m, bs, d in zip(classes, kept, boxes, maps, box_scores, detected)]
                results.append(Result(predictions, photo.pixels, model.spec, settings.threshold, settings.all_regions,
                                      refined, settings.adapt, method, ran, photo.size, photo.source, source,
                                      settings.box_overlap, settings.box_score))
    return results


def box_source(model: CamModel, boxes: str) -> str:
    """Where boxes come from for the setting `boxes`: auto is, for a model with a detector, what its
    training measured best on reviewed photos (`CamModel.auto_boxes`), else both; else the maps."""
    if boxes in ("detector", "both") and model.detector is None:
        raise ValueError(f"{model.spec!r} has no detector: train one with `cam train DATA --detector`, "
                         "or take boxes from the maps (boxes='cam')")
    if boxes == "auto":
        return (model.auto_boxes or "both") if model.detector is not None else "cam"
    return boxes


SAME_BOX = 0.5  # both: a detector box at this IoU with the maps' box or more is that box again


def _detector_boxes(found, classes: list[int], probabilities: list[float], size: tuple[int, int],
                    photo_size: tuple[int, int], settings: Settings, maps_boxes: list[list[Box]] | None = None
                    ) -> tuple[list[list[Box]], list[list[float]], list[list[tuple[float, Box]]]]:
    """The boxes of each of `classes` and their scores, best first, in the photo's pixels, and the
    detector's own (score, box)s they were merged from: the detector's (`found`, in the input's
    `size`) scoring at least `settings.box_score`, merged (`_class_boxes`) after the class's maps'
    boxes (both: `maps_boxes`, scored by the class's probability where it reaches box_score)."""
    boxes, box_scores, detected = [], [], []
    for k, c in enumerate(classes):
        own = sorted(((d[1], scale_box(d[2], size, photo_size)) for d in found
                      if d[0] == c and d[1] >= settings.box_score), key=lambda d: -d[0])
        kept, scores = _class_boxes(probabilities[k], maps_boxes[k] if maps_boxes is not None else [], own,
                                    settings.box_score, settings.box_overlap)
        boxes.append(kept)
        box_scores.append(scores)
        detected.append(own)
    return boxes, box_scores, detected


def _class_boxes(probability: float, maps_boxes: list[Box], own: list[tuple[float, Box]], box_score: float,
                 box_overlap: float) -> tuple[list[Box], list[float]]:
    """One class's boxes and their scores, best first: its `maps_boxes` scored by its `probability`
    (where that reaches `box_score`), then the detector's `own` (score, box)s, best first, that do
    not repeat one of them (IoU below `SAME_BOX`) nor lie inside a better kept one by more than
    `box_overlap` of their area; a detector box inside the maps' box stays (fruits of one group)."""
    first = [(probability, b) for b in maps_boxes] if probability >= box_score else []
    kept: list[tuple[float, Box]] = []
    for score, box in own:
        if any(iou(box, b) >= SAME_BOX for _, b in first):
            continue
        if all(covered(box, b) <= box_overlap for _, b in kept):
            kept.append((score, box))
    ranked = first + kept
    return [b for _, b in ranked], [round(s, 4) for s, _ in ranked]


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


def _check_topk(topk, num_classes: int) -> int:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise ValueError(f"topk must be an integer, got {topk!r}")
    if not 1 <= topk <= min(num_classes, MAX_TOPK):
        raise ValueError(f"topk must be between 1 and {min(num_classes, MAX_TOPK)}, got {topk}")
    return int(topk)
