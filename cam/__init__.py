"""Class Activation Maps: turn a GAP image classifier into an object localizer (Zhou et al., CVPR 2016)."""

from .boxes import boxes_from_map, iou
from .data import load_image
from .localize import Prediction, Result, localize, localize_batch
from .models import CamModel, load_model
from .settings import BEST, PLAIN, PRESETS, RECOMMENDED, Settings

__all__ = [
    "BEST", "CamModel", "PLAIN", "PRESETS", "Prediction", "RECOMMENDED", "Result", "Settings", "boxes_from_map", "iou",
    "load_image", "load_model", "localize", "localize_batch",
]
