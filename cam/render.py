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


def draw_boxes(image: np.ndarray, result: Result) -> np.ndarray:
    """The image with every prediction's boxes and a caption 'label 0.93' on a filled tab."""
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = _font(min(canvas.size))
    line = max(2, min(canvas.size) // 150)
    for rank, prediction in reversed(list(enumerate(result.predictions))):
        color = PALETTE[rank % len(PALETTE)]
        text_color = (0, 0, 0) if sum(color) > 450 else (255, 255, 255)
        for x0, y0, x1, y1 in prediction.boxes:
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=color, width=line)
            caption = f"{prediction.label} {prediction.score:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
            w, h = right - left + 2 * line, bottom - top + 2 * line
            ty = y0 - h if y0 - h >= 0 else y0  # above the box, or inside it at the top edge
            tx = min(max(x0, 0), max(canvas.width - w, 0))
            draw.rectangle((tx, ty, tx + w, ty + h), fill=color)
            draw.text((tx + line - left, ty + line - top), caption, fill=text_color, font=font)
    return np.asarray(canvas)


def gallery(result: Result, opacity: float = 0.5, colormap: str = "turbo") -> list[tuple[np.ndarray, str]]:
    """One (overlay picture, caption) tile per predicted class, in rank order."""
    return [(overlay(result.image, p.cam, opacity, colormap), f"{p.label} ({p.score:.1%})") for p in result.predictions]


def save_png(array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path, format="PNG")
