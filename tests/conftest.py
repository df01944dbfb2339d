"""Shared fixtures: tiny random-weight models for logic, the bundled default model for end-to-end checks."""

from pathlib import Path

import os
import shutil
import tempfile

import numpy as np
import pytest

import cam
import cam.runtime

# Converted models of the tests (mostly random tiny networks) go to a folder of this run, not to the
# user's cache; subprocesses (CLI, app) find it through the environment.
RUNTIME_CACHE = tempfile.mkdtemp(prefix="cam-test-runtime-")
os.environ["CAM_RUNTIME_CACHE"] = RUNTIME_CACHE
cam.runtime.CACHE = Path(RUNTIME_CACHE)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# The library's logic is tested on PyTorch, the reference; tests/test_runtime.py holds the compiled
# runtime to it, and the CLI, app and collection tests run the default ("auto": OpenVINO here).
@pytest.fixture(scope="session")
def default_model():
    return cam.load_model("default", device="cpu", runtime="torch")


@pytest.fixture(scope="session")
def tiny_model():
    return cam.load_model("timm:test_resnet", pretrained=False, device="cpu", runtime="torch")


@pytest.fixture
def photo():
    """A small random-noise RGB photo-like array."""
    return np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)


@pytest.fixture(scope="session", autouse=True)
def _remove_runtime_cache():
    yield
    shutil.rmtree(RUNTIME_CACHE, ignore_errors=True)
