import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cam.evaluate import WsolScores, evaluate, read_dataset

from .conftest import ROOT
from .datasets import box_dataset


def _blob(shape, box, value=1.0):
    cam = np.zeros(shape, np.float32)
    x0, y0, x1, y1 = box
    cam[y0:y1, x0:x1] = value
    return cam


def test_scores_on_hand_made_maps():
    scores = WsolScores(threshold=0.5)
    truth = [(10, 10, 30, 30)]
    exact = _blob((40, 40), (10, 10, 30, 30))
    shifted = _blob((40, 40), (20, 20, 40, 40))  # IoU 100/700 with the truth
    # 1: right class, exact map.  2: wrong class, exact GT map.  3: right class, shifted maps.
    scores.add("a", 1, truth, 1, 0.9, exact, exact)
    scores.add("b", 1, truth, 2, 0.8, shifted, exact)
    scores.add("c", 1, truth, 1, 0.7, shifted, shifted)
    metrics = scores.metrics()
    assert metrics["images"] == 3
    assert metrics["top1_cls"] == pytest.approx(2 / 3)
    assert metrics["top1_loc"] == pytest.approx(1 / 3)
    assert metrics["gt_known_loc"] == pytest.approx(2 / 3)
    assert metrics["max_box_acc"] == pytest.approx(2 / 3)
    # V2 with IoU levels 0.3, 0.5, 0.7: only the two exact GT maps ever match.
    assert metrics["max_box_acc_v2"] == pytest.approx(2 / 3)
    assert [r["gt_known_loc"] for r in scores.rows] == [1, 1, 0]


def test_max_box_acc_finds_the_best_threshold():
    # A map with a bright core (the object) on a dim wide halo: only thresholds above the halo work.
    cam = _blob((50, 50), (0, 0, 50, 50), 0.3) + _blob((50, 50), (10, 10, 30, 30), 0.7)
    scores = WsolScores(threshold=0.2)
    scores.add("a", 0, [(10, 10, 30, 30)], 0, 1.0, cam, cam)
    metrics = scores.metrics()
    assert metrics["gt_known_loc"] == 0  # at 0.2 the halo makes the box the whole map
    assert metrics["max_box_acc"] == 1.0 and 0.3 < metrics["max_box_acc_tau"] <= 1.0


def test_all_regions_count_for_v2_only():
    cam = _blob((60, 60), (0, 0, 30, 60), 1.0) + _blob((60, 60), (45, 45, 55, 55), 0.9)
    scores = WsolScores(threshold=0.5)
    scores.add("a", 0, [(45, 45, 55, 55)], 0, 1.0, cam, cam)
    metrics = scores.metrics()
    assert metrics["max_box_acc"] == 0.0  # the largest region is the wrong one
    assert metrics["max_box_acc_v2"] == 1.0  # the small region matches exactly at every IoU level


def test_read_dataset_groups_boxes_and_rejects_bad_rows(tmp_path):
    folder = box_dataset(tmp_path, ["x.png,3,0,0,10,10", "x.png,3,5,5,20,20"])
    samples = read_dataset(folder)
    assert len(samples) == 1 and samples[0].boxes == [(0, 0, 10, 10), (5, 5, 20, 20)]
    (folder / "boxes.csv").write_text("file,label,x0,y0,x1,y1\nx.png,cat,0,0,1,1\n")
    with pytest.raises(ValueError, match="label must be an integer"):
        read_dataset(folder)
    with pytest.raises(ValueError, match="images/ and boxes.csv"):
        read_dataset(tmp_path / "images")


def test_evaluate_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    folder = box_dataset(tmp_path, ["x.png,3,0,0,64,64"])
    metrics, rows = evaluate(tiny_model, folder, threshold=0.0, input_size=None)
    assert metrics["images"] == 1 and len(rows) == 1
    assert metrics["gt_known_loc"] == 1.0  # threshold 0 boxes the whole image, which is the truth
    with pytest.raises(ValueError, match="not a class"):
        evaluate(tiny_model, box_dataset(tmp_path / "b", ["x.png,5000,0,0,1,1"]) if (tmp_path / "b").mkdir() is None else None)


def test_evaluate_makes_the_maps_of_the_quality_preset(tiny_model, tmp_path, monkeypatch):
    import cam.methods as methods

    folder = box_dataset(tmp_path, ["x.png,3,0,0,64,64"])
    adapted = []
    monkeypatch.setattr(methods, "adapt_contrast", lambda maps: adapted.append(maps.shape) or maps)
    metrics, _ = evaluate(tiny_model, folder, quality="best")
    assert metrics["adapted"] is True and adapted == [(1, 2, 18, 18)]  # the predicted and the true class, 288 px
    assert evaluate(tiny_model, folder)[0]["adapted"] is False and len(adapted) == 1


@pytest.mark.slow
def test_cli_evaluate_writes_json_csv_and_plot(tmp_path):
    folder = box_dataset(tmp_path, ["x.png,285,0,0,64,64"])
    proc = subprocess.run([sys.executable, "-m", "cam", "evaluate", str(folder), "--per-image", str(tmp_path / "rows.csv"),
                           "--plot", str(tmp_path / "curve.png"), "--plain"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout)
    for key in ("images", "top1_cls", "top1_loc", "gt_known_loc", "max_box_acc", "max_box_acc_tau", "max_box_acc_v2"):
        assert 0 <= line[key] <= 1 or key == "images"
    assert (tmp_path / "rows.csv").read_text().startswith("file,label,predicted")
    assert Image.open(tmp_path / "curve.png").size == (720, 440)
