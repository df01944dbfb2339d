"""Shared fixtures: tiny random-weight models for logic, the bundled default model for end-to-end checks."""

from pathlib import Path

import numpy as np
import pytest

import cam

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def default_model():
    return cam.load_model("default", device="cpu")


@pytest.fixture(scope="session")
def tiny_model():
    return cam.load_model("timm:test_resnet", pretrained=False, device="cpu")


@pytest.fixture
def photo():
    """A small random-noise RGB photo-like array."""
    return np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
