"""Checkpoints: one folder holding what rebuilds a fine-tuned model (config.json: architecture, class
names, preprocessing, the recipe and the measured figures; model.safetensors: the classifier's
weights; detector.safetensors: the detector's, where it has one). Written atomically, read without
pickle. Above `cam.models` and `cam.detector`, so that neither needs the other."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

from torch import nn

from .detector import Student
from .models import CamModel, build_architecture, wrap

DETECTOR_FILE = "detector.safetensors"  # beside model.safetensors; its config under "detector" in config.json
STALE_PARTIAL_SECONDS = 3600  # a half-written checkpoint of a killed run is deleted after this


def save_checkpoint(model: CamModel, out, metrics: dict, extra: dict) -> Path:
    """Write model.safetensors + config.json (+ detector.safetensors) under a hidden temporary name, then rename it to
    `experiment_YYYY-MM-DD_HH_MM` (with _2, _3... if taken): readers never see half a checkpoint."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.now()
    for stale in out.glob(".partial-*"):  # left by a run killed while saving; never listed or loaded
        if time.time() - stale.stat().st_mtime > STALE_PARTIAL_SECONDS:
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.net.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"))
        config = {"arch": model.arch, "class_names": model.class_names, "preprocessing": model.preprocessing(),
                  "metrics": metrics, "date": now.isoformat(timespec="seconds"), **extra}
        written = [staging / "model.safetensors", staging / "config.json"]
        if model.detector is not None:
            detector = {k: v.detach().cpu().contiguous().clone() for k, v in model.detector.state_dict().items()}
            save_file(detector, str(staging / DETECTOR_FILE))
            config["detector"] = model.detector.config
            config["boxes"] = model.auto_boxes
            written.append(staging / DETECTOR_FILE)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        for fd_path in written:
            with open(fd_path, "rb") as handle:
                os.fsync(handle.fileno())
        base = f"experiment_{now:%Y-%m-%d_%H_%M}"
        for n in range(1, 1000):
            target = out / (base if n == 1 else f"{base}_{n}")
            if target.exists():
                continue
            try:
                os.rename(staging, target)  # atomic; fails if another run took the name meanwhile
                return target
            except OSError:
                continue
        raise ValueError(f"no free checkpoint name under {out}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_checkpoint(folder: Path) -> CamModel:
    """Load a checkpoint folder written by `cam.train`: config.json plus model.safetensors.

    Weights are read with safetensors (no pickle, no code runs); shapes must match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{folder} is not a checkpoint: it needs config.json and model.safetensors")
    try:
        config = json.loads(config_path.read_text())
        arch, class_names = config["arch"], list(config["class_names"])
        pre = config["preprocessing"]
        preprocessing = {
            "input_size": tuple(int(v) for v in pre["input_size"]),
            "mean": tuple(float(v) for v in pre["mean"]),
            "std": tuple(float(v) for v in pre["std"]),
            "interpolation": str(pre["interpolation"]),
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{config_path} is not a valid checkpoint config ({type(exc).__name__}: {exc})") from exc
    if len(class_names) < 2 or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"{config_path}: class_names must list at least two names")
    net = build_architecture(arch, len(class_names))
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights_path} is not a readable safetensors file ({exc})") from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ValueError(f"{weights_path} does not match {arch} with {len(class_names)} classes: {' '.join(first)}") from exc
    info = {k: config[k] for k in ("metrics", "date", "base_spec", "recipe") if k in config}
    model = wrap(net, str(folder), arch, class_names, preprocessing, info)
    if "detector" in config:
        model.detector = _load_detector(folder, config["detector"])
        model.auto_boxes = config.get("boxes") if config.get("boxes") in ("cam", "detector", "both") else None
    return model


def _load_detector(folder: Path, config) -> nn.Module:
    """The checkpoint's detector (`cam.detector.Student`) from its config and detector.safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / DETECTOR_FILE
    try:
        student = Student(dict(config))
        student.load_state_dict(load_file(str(path)), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{folder}: its detector does not load ({first})") from exc
    return student.eval()
