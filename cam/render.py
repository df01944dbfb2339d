"""Pictures of a Result: heatmap overlay, boxes with captions, one gallery tile per class."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .localize import Result

COLORMAPS = {"turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO, "viridis": cv2.COLORMAP_VIRIDIS,
             "jet": cv2.COLORMAP_JET}
# One colour per rank (RGB), distinct and saturated enough to read over photos.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def heatmap(cam: np.ndarray, colormap: str = "turbo") -> np.ndarray:
    """A [0, 1] map as an HxWx3 uint8 RGB picture in a perceptual colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    gray = (np.clip(cam, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, cam: np.ndarray, opacity: float = 0.5, colormap: str = "turbo") -> np.ndarray:
    """Blend the heatmap of `cam` over `image` (same HxW); `opacity` 0 shows the photo, 1 the map."""
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity!r}")
    if cam.shape != image.shape[:2]:
        raise ValueError(f"cam shape {cam.shape} does not match the image's {image.shape[:2]}")
    return cv2.addWeighted(image, 1.0 - float(opacity), heatmap(cam, colormap), float(opacity), 0.0)


def _font(height: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(12, height // 32))


def draw_boxes(image: np.ndarray, result) -> np.ndarray:
    """The image with every prediction's boxes and a caption 'label 0.93' on a filled tab (the box's
    own score where a detector gave it, else the class's). `result` is a Result, or its predictions
    (anything with `label`, `score` and `boxes`, in rank order).

    All boxes are drawn first, the best-ranked on top; then the captions, best rank first, each at
    the first spot by its box's top-left corner (above the box, inside it, stacked downwards,
    below it) where it covers no earlier caption, so boxes that share an edge keep readable labels.
    """
    predictions = result.predictions if isinstance(result, Result) else list(result)
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = _font(min(canvas.size))
    line = max(2, min(canvas.size) // 150)
    for rank, prediction in reversed(list(enumerate(predictions))):
        for x0, y0, x1, y1 in prediction.boxes:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=PALETTE[rank % len(PALETTE)], width=line)
    placed: list[tuple[int, int, int, int]] = []
    for rank, prediction in enumerate(predictions):
        color = PALETTE[rank % len(PALETTE)]
        text_color = (0, 0, 0) if sum(color) > 450 else (255, 255, 255)
        box_scores = getattr(prediction, "box_scores", None) or [prediction.score] * len(prediction.boxes)
        for box, score in zip(prediction.boxes, box_scores):
            caption = f"{prediction.label} {score:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
            w, h = right - left + 2 * line, bottom - top + 2 * line
            tx, ty = _caption_spot(box, w, h, placed, canvas.width, canvas.height)
            placed.append((tx, ty, tx + w, ty + h))
            draw.rectangle((tx, ty, tx + w - 1, ty + h - 1), fill=color)
            draw.text((tx + line - left, ty + line - top), caption, fill=text_color, font=font)
    return np.asarray(canvas)


def _caption_spot(box, w: int, h: int, placed, width: int, height: int) -> tuple[int, int]:
    """Top-left corner for a w x h caption of `box`: the first free spot among above the box, inside
    it from the top down, and below it; the first spot that fits the image when none is free."""
    x0, y0, x1, y1 = box
    tx = min(max(x0, 0), max(width - w, 0))
    rows = [y0 - h] + list(range(y0, max(y1 - h, y0) + 1, h)) + [y1]
    fitting = [y for y in rows if 0 <= y <= height - h] or [max(min(y0, height - h), 0)]
    for ty in fitting:
        if not any(tx < px1 and px0 < tx + w and ty < py1 and py0 < ty + h for px0, py0, px1, py1 in placed):
            return tx, ty
    return tx, fitting[0]


METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM"}


def method_name(result: Result) -> str:
    """How captions name the maker of a Result's maps, e.g. 'Grad-CAM, refined' or 'CAM, refined, adapted'."""
    return (METHOD_NAMES.get(result.method, result.method) + (", refined" if result.refined else "")
            + (", adapted" if result.adapted else ""))


def top_overlay(result: Result, opacity: float = 0.5, image: np.ndarray | None = None) -> np.ndarray:
    """The top class's heatmap over `image` (default: the photo at its own size); the image itself
    when no class made the minimum score, since an empty result is a valid one."""
    image = result.image if image is None else image
    return overlay(image, result.predictions[0].cam, opacity) if result.predictions else image


def heatmap_with_boxes(result: Result, opacity: float = 0.5) -> np.ndarray:
    """The top class's heatmap over the image with every prediction's boxes drawn on it."""
    return draw_boxes(top_overlay(result, opacity), result)


def gallery(result: Result, opacity: float = 0.5, colormap: str = "turbo") -> list[tuple[np.ndarray, str]]:
    """One (overlay picture, caption) tile per predicted class, in rank order; captions name the
    method that made the maps."""
    method = method_name(result)
    return [(overlay(result.image, p.cam, opacity, colormap), f"{p.label} ({p.score:.1%}) · {method}")
            for p in result.predictions]


def save_png(array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path, format="PNG")
