"""WSOL metrics on a folder with images/ and boxes.csv, as defined by Choe et al., "Evaluating Weakly
Supervised Object Localization Methods Right" (CVPR 2020).

- top1_cls: the top-1 class is the label.
- top1_loc: top-1 class right and the largest region's box of its map has IoU >= 0.5 with a
  ground-truth box, at the chosen threshold.
- gt_known_loc: the same with the map of the true class, class ignored.
- max_box_acc: GT-known box accuracy (IoU >= 0.5, largest region) at the best single threshold
  over the whole set (reported with that threshold, max_box_acc_tau).
- max_box_acc_v2: the boxes of all regions, the best threshold for each IoU in (0.3, 0.5, 0.7),
  accuracies averaged.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .boxes import boxes_from_map, check_threshold, iou, region_boxes
from .data import load_image
from .methods import check_method, make_maps
from .models import CamModel
from .preprocess import check_input_size, inference_batch_size, inference_threads, preprocess
from .settings import Settings, settings_of
from .upsample import normalise_for_size, upsample_map

THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)  # the cam_curve_interval of wsolevaluation
IOU_LEVELS = (0.3, 0.5, 0.7)


@dataclass
class Sample:
    file: str
    label: int
    boxes: list[tuple[float, float, float, float]]


def read_dataset(folder) -> list[Sample]:
    """Read `folder/boxes.csv` (file,label,x0,y0,x1,y1; several rows per image allowed)."""
    folder = Path(folder)
    csv_path, images = folder / "boxes.csv", folder / "images"
    if not csv_path.is_file() or not images.is_dir():
        raise ValueError(f"{folder} must hold images/ and boxes.csv (file,label,x0,y0,x1,y1)")
    samples: dict[str, Sample] = {}
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"file", "label", "x0", "y0", "x1", "y1"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} lacks the columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                label = int(row["label"])
                box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
            except (TypeError, ValueError):
                raise ValueError(f"{csv_path}:{line}: label must be an integer and x0,y0,x1,y1 numbers") from None
            sample = samples.setdefault(row["file"], Sample(row["file"], label, []))
            if sample.label != label:
                raise ValueError(f"{csv_path}:{line}: {row['file']} has two labels")
            sample.boxes.append(box)
    if not samples:
        raise ValueError(f"{csv_path} has no rows")
    return list(samples.values())


class WsolScores:
    """Accumulates the WSOL metrics image by image from maps already at the image's size."""

    def __init__(self, threshold: float):
        self.threshold = check_threshold(threshold)
        self.hits_v1: list[np.ndarray] = []  # per image, per threshold: largest region, IoU >= 0.5
        self.hits_v2: list[np.ndarray] = []  # per image, per IoU level and threshold: all regions
        self.rows: list[dict] = []

    def add(self, file: str, label: int, truths, predicted: int, score: float,
            top1_map: np.ndarray, gt_map: np.ndarray) -> dict:
        """Score one image: the map of its predicted class and the map of its true class."""
        top1_iou = best_iou(boxes_from_map(top1_map, self.threshold), truths)
        gt_iou = best_iou(boxes_from_map(gt_map, self.threshold), truths)  # also checks the map
        gt_map = np.asarray(gt_map, dtype=np.float32)
        peak = float(gt_map.max())
        hits_v1, hits_v2 = np.zeros(len(THRESHOLDS), bool), np.zeros((len(IOU_LEVELS), len(THRESHOLDS)), bool)
        for t, tau in enumerate(THRESHOLDS):
            regions = region_boxes(gt_map, tau * peak, all_regions=True) if peak > 0 else []
            hits_v1[t] = best_iou(regions[:1], truths) >= 0.5
            overlap = best_iou(regions, truths)
            hits_v2[:, t] = [overlap >= level for level in IOU_LEVELS]
        self.hits_v1.append(hits_v1)
        self.hits_v2.append(hits_v2)
        correct = predicted == label
        row = {"file": file, "label": label, "predicted": predicted, "score": round(score, 4),
               "top1_cls": int(correct), "iou_top1": round(top1_iou, 4), "top1_loc": int(correct and top1_iou >= 0.5),
               "iou_gt_known": round(gt_iou, 4), "gt_known_loc": int(gt_iou >= 0.5)}
        self.rows.append(row)
        return row

    def metrics(self, images=None) -> dict:
        """The metrics of all images scored, or of those at the positions `images` (in the order
        they were added): a cross-validation fold's, its thresholds chosen on it alone."""
        images = range(len(self.rows)) if images is None else list(images)
        n = len(images)
        if not n:
            raise ValueError("no images were scored")
        rows = [self.rows[i] for i in images]
        accuracy_v1 = np.mean([self.hits_v1[i] for i in images], 0)
        accuracy_v2 = np.mean([self.hits_v2[i] for i in images], 0)
        return {
            "images": n,
            "top1_cls": sum(r["top1_cls"] for r in rows) / n,
            "top1_loc": sum(r["top1_loc"] for r in rows) / n,
            "gt_known_loc": sum(r["gt_known_loc"] for r in rows) / n,
            "max_box_acc": float(accuracy_v1.max()),
            "max_box_acc_tau": float(THRESHOLDS[accuracy_v1.argmax()]),
            "max_box_acc_v2": float(accuracy_v2.max(1).mean()),
            "threshold": self.threshold,
            "curve": {"thresholds": THRESHOLDS.tolist(), "iou_0.5_largest": accuracy_v1.tolist(),
                      **{f"iou_{level}_all": accuracy_v2[i].tolist() for i, level in enumerate(IOU_LEVELS)}},
        }


def evaluate(model: CamModel, folder, settings: Settings | str | None = None, batch_size: int | None = None,
             progress=None, **options) -> tuple[dict, list[dict]]:
    """`score_folder`'s metrics of all its images, and its per-image rows. Where the boxes come from
    the detector (`Settings.boxes`: auto with a checkpoint that has one, or detector),
    `detection_scores`' ap50, corloc and detector_top1_loc are added; the maps' own metrics stay."""
    from .localize import box_source

    settings = settings_of(settings, **options)
    source = box_source(model, settings.boxes)  # refused before the pass, not after
    scores, extra = score_folder(model, folder, settings, batch_size, progress)
    metrics = {**scores.metrics(), **extra, "box_source": source}
    if source != "cam":
        metrics.update(detection_scores(model, folder, replace(settings, boxes=source), batch_size))
    return metrics, scores.rows


def detection_scores(model: CamModel, folder, settings: Settings | str | None = None,
                     batch_size: int | None = None) -> dict:
    """The detector's boxes (or both's, where `settings.boxes` says so) on `folder` (images/ and
    boxes.csv; one class an image), every class
    ranked and every box kept, from CAM's pass without flip: ap50 (`average_precision`), corloc (the
    best box of the image's class hits a true box: GT-known localization with the detector's box)
    and detector_top1_loc (the top class is right, and so is its best box); a hit is IoU >= 0.5."""
    from .localize import localize_batch

    samples = read_dataset(folder)
    settings = settings_of(settings)
    settings = replace(settings, boxes=settings.boxes if settings.boxes == "both" else "detector", box_score=0.0,
                       topk=len(model.class_names), classes=None, min_score=0.0, method="cam", flip=False)
    results = localize_batch(model, [Path(folder) / "images" / s.file for s in samples], settings, batch_size)
    found, truths, top1, known = [], [], 0, 0
    for sample, result in zip(samples, results):
        found.append([(p.class_index, score, box) for p in result.predictions
                      for box, score in zip(p.boxes, p.box_scores)])
        truths.append([(sample.label, box) for box in sample.boxes])
        best = {p.class_index: p.boxes[:1] for p in result.predictions}
        hit = best_iou(best[sample.label], sample.boxes) >= 0.5
        known += hit
        top1 += hit and result.predictions[0].class_index == sample.label
    n = len(samples)
    return {"ap50": average_precision(found, truths), "corloc": known / n, "detector_top1_loc": top1 / n}


def average_precision(found: list[list[tuple]], truths: list[list[tuple]], level: float = 0.5) -> float:
    """Detection AP at IoU `level` as COCO computes it (each class's 101-point interpolated
    precision over recall, averaged over the classes with a true box): `found` per image
    [(class, score, box)], `truths` per image [(class, box)]; each true box is matched once, by the
    best-scoring boxes first."""
    classes = sorted({c for image in truths for c, _ in image})
    if not classes:
        raise ValueError("no true boxes to score")
    per_class = []
    for c in classes:
        total = sum(t[0] == c for image in truths for t in image)
        ranked = sorted(((score, i, box) for i, image in enumerate(found) for k, score, box in image if k == c),
                        key=lambda d: -d[0])
        taken: set[tuple[int, int]] = set()
        hits = []
        for _, i, box in ranked:
            overlaps = [(iou(box, t[1]), j) for j, t in enumerate(truths[i]) if t[0] == c and (i, j) not in taken]
            overlap, j = max(overlaps, default=(0.0, -1))
            hits.append(overlap >= level)
            if overlap >= level:
                taken.add((i, j))
        true_positives = np.cumsum(hits) if hits else np.zeros(0)
        recall = true_positives / total
        precision = true_positives / np.arange(1, len(hits) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(hits) else precision  # made monotone
        points = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
        per_class.append(float(np.mean([precision[p] if p < len(precision) else 0.0 for p in points])))
    return float(np.mean(per_class))


def score_folder(model: CamModel, folder, settings: Settings | str | None = None, batch_size: int | None = None,
                 progress=None, **options) -> tuple[WsolScores, dict]:
    """Score `model` on `folder` image by image, in the order of its boxes.csv; returns the
    `WsolScores` and what ran (refined, adapted, method, runtime, ms_per_image).

    `progress(done, total)` is called after each batch (`batch_size` images; default:
    `inference_batch_size`). Metrics are fractions in [0, 1]; the
    `curve` entry holds GT-known box accuracy for every threshold and IoU level (for plotting).
    Maps are made as `localize` makes them, by the same path (`cam.methods.make_maps`), from
    `settings` and keyword `options` as there (`cam.Settings`; its topk, classes, min_score and
    all_regions do not apply: the metrics fix them). On a compiled runtime PyTorch's own ops run on
    one thread meanwhile.
    """
    settings = settings_of(settings, **options)
    method = check_method(settings.method, model)
    scores = WsolScores(settings.threshold)
    size = check_input_size(settings.input_size, model)
    batch_size = batch_size or inference_batch_size(model, size)
    samples = read_dataset(folder)
    for sample in samples:
        if not 0 <= sample.label < len(model.class_names):
            raise ValueError(f"{sample.file}: label {sample.label} is not a class of this model")
    images_dir = Path(folder) / "images"
    start = time.perf_counter()
    with inference_threads(model, method):
        for first in range(0, len(samples), batch_size):
            chunk = samples[first:first + batch_size]
            arrays = [load_image(images_dir / s.file) for s in chunk]
            labels = torch.tensor([s.label for s in chunk], device=model.device)

            def pairs(z):  # the predicted and the true class of each image
                return torch.stack([z.argmax(1), labels], 1)

            batch = preprocess(model, arrays, size)
            logits, _, maps, refined, ran = make_maps(model, batch, method, pairs, settings.flip, settings.refine,
                                                      settings.adapt)
            maps = maps.cpu().numpy()
            probs = logits.softmax(1)
            top1 = probs.argmax(1)
            for sample, array, pair, predicted, score in zip(chunk, arrays, maps, top1.tolist(), probs.max(1).values.tolist()):
                top1_map, gt_map = (upsample_map(m, array.shape[:2]) for m in normalise_for_size(pair, array.shape[:2]))
                scores.add(sample.file, sample.label, sample.boxes, predicted, score, top1_map, gt_map)
            if progress:
                progress(len(scores.rows), len(samples))
    return scores, {"refined": refined,  # a guide map comes only where the model has one
                    "adapted": settings.adapt, "method": method, "runtime": ran,
                    "ms_per_image": (time.perf_counter() - start) * 1000 / len(samples)}


def best_iou(boxes, truths) -> float:
    """The highest IoU between any of `boxes` and any ground-truth box (0 when either is empty)."""
    return max((iou(b, t) for b in boxes for t in truths), default=0.0)


def write_rows(rows: list[dict], path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curve(metrics: dict, path, width: int = 720, height: int = 440) -> None:
    """Box accuracy against threshold as a PNG line chart (drawn with PIL, no plotting library)."""
    from PIL import Image, ImageDraw, ImageFont

    curve = metrics["curve"]
    font = ImageFont.load_default(size=14)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 30, width - 20, height - 50
    draw.rectangle((left, top, right, bottom), outline="black")
    for k in range(0, 11, 2):
        y = bottom - (bottom - top) * k / 10
        x = left + (right - left) * k / 10
        draw.line((left - 4, y, left, y), fill="black")
        draw.text((left - 36, y - 8), f"{k / 10:.1f}", fill="black", font=font)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x - 10, bottom + 8), f"{k / 10:.1f}", fill="black", font=font)
    draw.text(((left + right) // 2 - 80, height - 22), "threshold (fraction of map max)", fill="black", font=font)
    draw.text((left, 8), "box accuracy (GT-known)", fill="black", font=font)
    series = [("IoU 0.5, largest region", curve["iou_0.5_largest"], (200, 30, 30))] + [
        (f"IoU {level}, all regions", curve[f"iou_{level}_all"], color)
        for level, color in zip(IOU_LEVELS, [(30, 120, 200), (30, 160, 60), (150, 60, 180)])
    ]
    for i, (name, values, color) in enumerate(series):
        points = [(left + (right - left) * t, bottom - (bottom - top) * v) for t, v in zip(curve["thresholds"], values)]
        draw.line(points, fill=color, width=2)
        draw.text((right - 200, top + 8 + 18 * i), name, fill=color, font=font)
    image.save(path, format="PNG")
