"""A result with no class above the minimum score is valid: every consumer writes what it can."""

import json

import numpy as np
import pytest
import torch

import cam
from cam import render
from cam.service import views, write_downloads

from .conftest import EXAMPLES
from .test_cli import run_cli


@pytest.mark.slow
def test_the_cli_writes_an_empty_result_says_so_and_exits_0(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("localize", str(EXAMPLES / "chelsea.png"), "--out", str(out), "--min-score", "0.99",
                   "--device", "cpu", "--runtime", "torch")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "no class scored at least 0.99" in proc.stderr
    assert json.loads(proc.stdout)["predictions"] == []
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.json", "chelsea_boxes.png"]  # no map to overlay


def test_pictures_and_downloads_of_an_empty_result(tiny_model, photo, tmp_path):
    result = cam.localize(tiny_model, photo, min_score=1.0)
    assert result.predictions == []
    assert (render.heatmap_with_boxes(result) == photo).all()
    overlay, boxes, tiles, table, data = views(result, 0.5, tmp_path)
    assert tiles == [] and table == [] and data["predictions"] == []
    overlay_png, boxes_png, boxes_json, maps = write_downloads(result, tmp_path, 0.5)
    assert np.load(maps).shape == (0, *photo.shape[:2])
    assert json.loads(open(boxes_json).read())["predictions"] == []


def test_nan_scores_are_a_clear_error(photo):
    model = cam.load_model("timm:test_resnet", pretrained=False, device="cpu", runtime="torch")
    weight, _ = model.classifier_params()
    with torch.no_grad():
        weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite scores"):
        cam.localize(model, photo)
