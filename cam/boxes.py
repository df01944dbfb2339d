"""From a map to boxes (the CAM paper's rule) and box overlap.

A box is (x0, y0, x1, y1) in pixel edges: it covers columns x0..x1-1 and rows y0..y1-1, so its
area is (x1 - x0) * (y1 - y0). Ground-truth boxes in the same convention may be fractional.
"""

from __future__ import annotations

import cv2
import numpy as np

from .settings import check_fraction

Box = tuple[int, int, int, int]


def check_threshold(threshold: float) -> float:
    """Return `threshold` as a float in [0, 1] or raise a ValueError naming it."""
    return check_fraction("threshold", threshold)


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
    return region_boxes(cam.astype(np.float32, copy=False), threshold * peak, all_regions)


def region_boxes(cam: np.ndarray, cutoff: float, all_regions: bool = False) -> list[Box]:
    """Boxes of the 8-connected regions where a float32 map is >= `cutoff`, largest first (unchecked)."""
    return mask_boxes(cam >= np.float32(cutoff), all_regions)


def mask_boxes(mask: np.ndarray, all_regions: bool = False) -> list[Box]:
    """Boxes of the 8-connected regions of a boolean mask: the largest by pixel count, or with
    `all_regions` all of them, largest first."""
    # Border tracing is far faster than labelling every pixel. RETR_CCOMP lists every region's outer
    # border (a region inside another's hole too) with its holes' borders as children, and a border
    # traced pixel by pixel has one lattice point per step, so Pick's theorem gives exact pixel
    # counts: a region is the points on or inside its outer border less those inside its holes.
    contours, hierarchy = cv2.findContours(mask.view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    sizes: dict[int, float] = {}  # outer border's index -> pixel count of its region
    for i, (contour, parent) in enumerate(zip(contours, hierarchy[0, :, 3] if contours else ())):
        area, steps = cv2.contourArea(contour), len(contour) if len(contour) > 1 else 0
        if parent < 0:
            sizes[i] = sizes.get(i, 0) + area + steps / 2 + 1
        else:
            sizes[parent] = sizes.get(parent, 0) - (area - steps / 2 + 1)
    order = sorted(sizes, key=lambda i: -sizes[i])
    boxes = []
    for i in order if all_regions else order[:1]:
        x, y, w, h = cv2.boundingRect(contours[i])
        boxes.append((int(x), int(y), int(x + w), int(y + h)))
    return boxes


def scale_box(box: Box, size: tuple[int, int], to: tuple[int, int]) -> Box:
    """A box in an image of `size` (h, w) scaled to the same image at `to` (H, W): each pixel edge
    to the nearest edge there, at least one pixel wide and tall."""
    sy, sx = to[0] / size[0], to[1] / size[1]
    x0, y0 = min(round(box[0] * sx), to[1] - 1), min(round(box[1] * sy), to[0] - 1)
    x1, y1 = min(max(round(box[2] * sx), x0 + 1), to[1]), min(max(round(box[3] * sy), y0 + 1), to[0])
    return x0, y0, x1, y1


def covered(a, b) -> float:
    """The share of box `a`'s area that lies inside box `b` (x0, y0, x1, y1); 0 for an empty `a`."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    area = (a[2] - a[0]) * (a[3] - a[1])
    return float(iw * ih / area) if iw > 0 and ih > 0 and area > 0 else 0.0


def iou(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1) in pixel edges."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
