"""Class Activation Maps: turn a GAP image classifier into an object localizer (Zhou et al., CVPR 2016)."""

from .boxes import boxes_from_map, iou
from .data import load_image
from .localize import Prediction, Result, localize, localize_batch
from .loading import load_model
from .models import CamModel
from .settings import BEST, PLAIN, PRESETS, RECOMMENDED, Settings
from .train import Recipe

__all__ = [
    "BEST", "CamModel", "PLAIN", "PRESETS", "Prediction", "RECOMMENDED", "Recipe", "Result", "Settings",
    "boxes_from_map", "iou", "load_image", "load_model", "localize", "localize_batch",
]
