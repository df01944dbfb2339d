"""From a map to boxes (the CAM paper's rule) and box overlap.

A box is (x0, y0, x1, y1) in pixel edges: it covers columns x0..x1-1 and rows y0..y1-1, so its
area is (x1 - x0) * (y1 - y0). Ground-truth boxes in the same convention may be fractional.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

Box = tuple[int, int, int, int]


def check_threshold(threshold: float) -> float:
    """Return `threshold` as a float in [0, 1] or raise a ValueError naming it."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def boxes_from_map(cam: np.ndarray, threshold: float = 0.2, all_regions: bool = False) -> list[Box]:
    """Bounding boxes of the regions where `cam >= threshold * cam.max()` (8-connected).

    Returns the box of the largest region (the paper's rule), or with `all_regions` the boxes of
    every region, largest first. A map whose maximum is not positive has no box.
    """
    cam = np.asarray(cam)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a non-empty 2-D map, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    threshold = check_threshold(threshold)
    peak = float(cam.max())
    if peak <= 0:
        return []
    mask = (cam >= threshold * peak).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    if not all_regions:
        regions = regions[:1]
    boxes = []
    for i in regions:
        x, y, w, h = (int(v) for v in stats[i, :4])
        boxes.append((x, y, x + w, y + h))
    return boxes


def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) in pixel edges."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Min-max normalise a map to [0, 1]; a flat map becomes all zeros."""
    low, high = float(cam.min()), float(cam.max())
    if not high - low > 1e-12:
        return np.zeros_like(cam, dtype=np.float32)
    return ((cam - low) / (high - low)).astype(np.float32)
