"""The detector learned from the CAM teacher's boxes: it finds objects the maps merge or miss, its
checkpoint survives a round trip, `boxes=` chooses in the library and the CLI, reviewed COCO boxes
train it and a bad COCO file is refused in one line."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import cam
from cam.boxes import iou
from cam.evaluate import average_precision
from cam.train import Recipe, train
from cam.train_detector import read_coco_boxes

from .conftest import ROOT
from .images import png_bytes

TINY = "timm:test_resnet"
COLOURS = {"blue": (30, 60, 230), "red": (230, 40, 40)}
TWO_SQUARES = [(16, 40, 36), (60, 44, 36)]  # (x, y, side): two red squares 8 px apart


def _photo(squares, colour, seed: int, side: int = 128) -> np.ndarray:
    """Noise with a square of `colour` at each (x, y, side) of `squares`."""
    array = np.random.default_rng(seed).integers(0, 80, (side, side, 3), dtype=np.uint8)
    for x, y, s in squares:
        array[y:y + s, x:x + s] = colour
    return array


def _centres_inside(box, truths) -> list[int]:
    """The positions of the `truths` whose centre lies inside `box`."""
    return [i for i, (x0, y0, x1, y1) in enumerate(truths)
            if box[0] <= (x0 + x1) / 2 < box[2] and box[1] <= (y0 + y1) / 2 < box[3]]


def _one_square_dataset(path, per_class: int = 12):
    """A zip of class folders, each photo one square of its class's colour, its size and place
    seeded; returns the zip and {name: (x0, y0, x1, y1)} of each square."""
    squares = {}
    with zipfile.ZipFile(path, "w") as archive:
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(per_class):
                rng = np.random.default_rng(100 * c + i)
                side = int(rng.integers(24, 40))
                x, y = (int(v) for v in rng.integers(0, 128 - side, 2))
                archive.writestr(f"{name}/{i}.png", png_bytes(_photo([(x, y, side)], colour, 100 * c + i)))
                squares[f"{name}/{i}.png"] = (x, y, x + side, y + side)
    return path, squares


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier and its detector, trained on one-square photos (seconds)."""
    folder = tmp_path_factory.mktemp("detector")
    data, squares = _one_square_dataset(folder / "squares.zip")
    torch.manual_seed(0)  # the random backbone (pretrained=False) draws from the global generator
    summary = train(data, Recipe(model=TINY, pretrained=False, epochs=5, input_size=128, detector=True,
                                 detector_epochs=30), out=folder / "checkpoints")
    return {"summary": summary, "data": data, "squares": squares, "folder": folder}


@pytest.mark.slow  # trains a detector
def test_the_detector_finds_two_objects_where_the_map_gives_one_box(trained):
    model = cam.load_model(trained["summary"]["checkpoint"], runtime="torch")
    photo = _photo(TWO_SQUARES, COLOURS["red"], seed=7)
    truths = [(x, y, x + s, y + s) for x, y, s in TWO_SQUARES]
    detected = cam.localize(model, photo, topk=1, boxes="detector")
    top = detected.predictions[0]
    assert detected.box_source == "detector" and top.label == "red"
    assert top.box_scores and top.box_scores == sorted(top.box_scores, reverse=True) and min(top.box_scores) >= 0.3
    inside = [_centres_inside(box, truths) for box in top.boxes]
    assert all(len(found) < 2 for found in inside) and {0, 1} <= {i for found in inside for i in found}
    mapped = cam.localize(model, photo, topk=1, boxes="cam")
    assert mapped.box_source == "cam" and len(mapped.predictions[0].boxes) == 1
    assert len(_centres_inside(mapped.predictions[0].boxes[0], truths)) < 2
    assert "box_scores" in detected.to_dict()["predictions"][0] and "box_scores" not in mapped.to_dict()["predictions"][0]
    assert detected.with_threshold(0.2).box_source == "cam"  # re-cutting the maps gives the maps' boxes
    both = cam.localize(model, photo, topk=1)  # auto, with no reviewed photo to choose by: both
    first = both.predictions[0]
    assert both.box_source == "both" and first.boxes[0] == mapped.predictions[0].boxes[0]
    assert first.box_scores[0] == round(first.score, 4) and first.box_scores == sorted(first.box_scores, reverse=True)
    assert all(iou(box, first.boxes[0]) < 0.5 for box in first.boxes[1:]) and set(first.boxes[1:]) <= set(top.boxes)
    # Another threshold (the app's slider) merges the maps' new boxes with the detector's again, as
    # localize at that threshold does; the same threshold changes nothing.
    assert both.with_threshold(both.threshold).predictions[0].boxes == first.boxes
    for threshold in (0.05, 0.6):
        again, direct = both.with_threshold(threshold), cam.localize(model, photo, topk=1, threshold=threshold)
        assert again.box_source == "both" and again.threshold == threshold
        assert [(p.boxes, p.box_scores) for p in again.predictions] == [(p.boxes, p.box_scores) for p in direct.predictions]
        assert again.predictions[0].boxes[0] != first.boxes[0]  # the maps' box did move


@pytest.mark.slow  # trains a detector
def test_the_checkpoint_holds_both_and_loads_back_the_same(trained):
    folder = trained["summary"]["checkpoint"]
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["recipe"]["detector"] is True and config["detector"]["in_channels"]
    detector = config["metrics"]["detector"]
    assert detector["learned_from"] == "teacher" and detector["images"] == 24  # every photo, the validation ones too
    first, second = cam.load_model(folder, runtime="torch"), cam.load_model(folder, runtime="torch")
    for (name, a), (_, b) in zip(first.detector.state_dict().items(), second.detector.state_dict().items()):
        assert torch.equal(a, b), name
    photo = _photo(TWO_SQUARES, COLOURS["red"], seed=7)
    assert cam.localize(first, photo).to_dict() == cam.localize(second, photo).to_dict()
    without = cam.load_model(TINY, pretrained=False, runtime="torch")
    assert cam.localize(without, photo, topk=1).box_source == "cam"  # auto: the maps, where there is no detector
    with pytest.raises(ValueError, match="has no detector: train one with `cam train DATA --detector`"):
        cam.localize(without, photo, boxes="detector")
    with pytest.raises(ValueError, match="boxes must be one of auto, cam, detector, both"):
        cam.Settings(boxes="yolo")


@pytest.mark.slow  # trains a detector
def test_the_cli_chooses_the_boxes(trained, tmp_path):
    photo = tmp_path / "two.png"
    photo.write_bytes(png_bytes(_photo(TWO_SQUARES, COLOURS["red"], seed=7)))
    runs = {}
    for boxes in ("auto", "cam"):
        done = subprocess.run([sys.executable, "-m", "cam", "localize", str(photo), "--model",
                               trained["summary"]["checkpoint"], "--runtime", "torch", "--topk", "1", "--boxes", boxes],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        runs[boxes] = json.loads(done.stdout.splitlines()[-1])
    assert runs["auto"]["box_source"] == "both" and len(runs["auto"]["predictions"][0]["boxes"]) >= 2
    assert runs["cam"]["box_source"] == "cam" and len(runs["cam"]["predictions"][0]["boxes"]) == 1


@pytest.mark.slow  # trains a detector
def test_label_exports_the_detectors_scored_boxes(trained, tmp_path):
    from cam.label import label

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "two.png").write_bytes(png_bytes(_photo(TWO_SQUARES, COLOURS["red"], seed=7)))
    label([folder], tmp_path / "out", model=trained["summary"]["checkpoint"], runtime="torch", formats=["coco", "yolo"])
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    scores = [a["score"] for a in coco["annotations"]]
    assert len(scores) >= 2 and all(0.3 <= s <= 1 for s in scores)
    boxes = {tuple(a["bbox"]) for a in coco["annotations"]}
    lines = (tmp_path / "out" / "yolo" / "labels" / "train" / "two.txt").read_text().splitlines()
    assert len(lines) == len(boxes)


def test_yolo_keeps_a_box_under_two_classes_once_by_its_best_class(tmp_path):
    """A detector names one box under two classes, each scored: COCO keeps both, YOLO and VOC (no
    scores) its best; the maps' boxes alone (no scores) of two classes stay, each its own."""
    from cam import export

    box, other = [10, 20, 50, 60], [5, 5, 30, 30]
    record = {"file": "a.png", "width": 100, "height": 80, "predictions": [
        {"class_index": 0, "label": "blue", "score": 0.3, "boxes": [box, other], "box_scores": [0.4, 0.9]},
        {"class_index": 1, "label": "red", "score": 0.6, "boxes": [box], "box_scores": [0.7]}]}
    plain = {"file": "b.png", "width": 100, "height": 80, "predictions": [
        {"class_index": 0, "label": "blue", "score": 0.5, "boxes": [box]},
        {"class_index": 1, "label": "red", "score": 0.4, "boxes": [box]}]}
    ids = {0: 0, 1: 1}
    assert sorted(export._annotations(record, ids)) == [(0, [5, 5, 25, 25], 0.9), (0, [10, 20, 40, 40], 0.4),
                                                        (1, [10, 20, 40, 40], 0.7)]
    assert sorted(export._annotations(record, ids, one_label_a_box=True)) == [(0, [5, 5, 25, 25], 0.9),
                                                                              (1, [10, 20, 40, 40], 0.7)]
    assert len(export._annotations(plain, ids, one_label_a_box=True)) == 2
    log = tmp_path / "predictions.jsonl"
    log.write_text(json.dumps(record) + "\n" + json.dumps(plain) + "\n")
    export.write_yolo(log, [(0, "blue"), (1, "red")], tmp_path / "yolo", 0.0)
    labels = export.read_yolo(tmp_path / "yolo")
    assert sorted(c for c, _ in labels["a"]) == [0, 1] and len(labels["a"]) == 2  # the shared box once, as red
    assert sorted(c for c, _ in labels["b"]) == [0, 1]


@pytest.mark.slow  # trains a detector
def test_the_collection_tab_boxes_by_default_what_cam_label_does(trained, tmp_path):
    """With a detector, `cam label` boxes every class the detector finds; the Collection tab at its
    default (0 classes per photo: label's own default) does the same."""
    from cam.label import RUN, label
    from cam.service import ModelCache, label_collection

    photo = tmp_path / "two.png"
    photo.write_bytes(png_bytes(_photo(TWO_SQUARES, COLOURS["red"], seed=7)))
    checkpoint = Path(trained["summary"]["checkpoint"])
    (tmp_path / "tab").mkdir()
    label_collection(ModelCache(checkpoint.parent, runtime="torch"), checkpoint.name, [photo], tmp_path / "tab", 0)
    label([photo], tmp_path / "cli", model=checkpoint, runtime="torch")
    tab, cli = tmp_path / "tab" / "labels", tmp_path / "cli"
    assert json.loads((tab / RUN).read_text())["topk"] == json.loads((cli / RUN).read_text())["topk"] == len(COLOURS)
    assert json.loads((tab / "coco.json").read_text()) == json.loads((cli / "coco.json").read_text())


@pytest.mark.slow  # trains a detector
def test_evaluate_scores_the_detectors_boxes_or_the_maps(trained, tmp_path):
    from cam.evaluate import evaluate

    (tmp_path / "images").mkdir()
    rows = []
    for k in range(4):  # two red squares a photo: label 1 (red), both boxes true
        squares = [(8 + 4 * k, 20, 36), (72 - 4 * k, 60, 36)]
        (tmp_path / "images" / f"{k}.png").write_bytes(png_bytes(_photo(squares, COLOURS["red"], seed=50 + k)))
        rows += [f"{k}.png,1,{x},{y},{x + s},{y + s}" for x, y, s in squares]
    (tmp_path / "boxes.csv").write_text("file,label,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    model = cam.load_model(trained["summary"]["checkpoint"], runtime="torch")
    detected, rows_detected = evaluate(model, tmp_path)
    mapped, rows_mapped = evaluate(model, tmp_path, boxes="cam")
    assert detected["box_source"] == "both" and mapped["box_source"] == "cam" and "ap50" not in mapped
    assert 0 <= detected["ap50"] <= 1 and detected["detector_top1_loc"] <= detected["corloc"]
    assert rows_detected == rows_mapped and detected["top1_loc"] == mapped["top1_loc"]  # the maps' own metrics stay
    with pytest.raises(ValueError, match="has no detector"):
        evaluate(cam.load_model(TINY, pretrained=False, runtime="torch"), tmp_path, boxes="detector")


@pytest.mark.slow  # trains a detector
def test_training_from_reviewed_coco_boxes(trained, tmp_path):
    squares = trained["squares"]
    names = sorted(squares)
    coco = {"images": [{"id": i + 1, "file_name": f"dataset/{name}", "width": 128, "height": 128}
                       for i, name in enumerate(names)],
            "categories": [{"id": 1, "name": "blue"}, {"id": 2, "name": "red"}],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1 + name.startswith("red"),
                             "bbox": [squares[name][0], squares[name][1], squares[name][2] - squares[name][0],
                                      squares[name][3] - squares[name][1]]} for i, name in enumerate(names)]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    boxes = read_coco_boxes(path, names, ["blue", "red"])
    assert boxes[names[0]] == [tuple(v / 128 for v in squares[names[0]])]
    summary = train(trained["data"], Recipe(model=TINY, pretrained=False, epochs=2, input_size=128, detector_epochs=2,
                                            reviewed_boxes=str(path)), out=tmp_path / "c")
    assert summary["metrics"]["detector"] == {**summary["metrics"]["detector"], "learned_from": "reviewed",
                                              "images": 24, "boxes_per_photo": 1.0}

    for bad, message in ((json.dumps({**coco, "categories": [{"id": 1, "name": "dog"}]}), "classes the dataset lacks: dog"),
                         (json.dumps({**coco, "images": [{"id": 1, "file_name": "x.png", "width": 9, "height": 9}]}),
                          "lists none of the dataset's photos"),
                         ("{not json", "is not a readable COCO file")):
        path.write_text(bad)
        with pytest.raises(ValueError, match=message):
            read_coco_boxes(path, names, ["blue", "red"])
    done = subprocess.run([sys.executable, "-m", "cam", "train", str(trained["data"]), "--model", TINY,
                           "--no-pretrained", "--boxes-from", str(path), "--out", str(tmp_path / "c2")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is not a readable COCO file" in done.stderr and "Traceback" not in done.stderr


def test_average_precision_matches_pycocotools():
    pytest.importorskip("pycocotools")
    import contextlib
    import os

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    truths, found = [], []
    for _ in range(12):
        image_truths, image_found = [], []
        for _ in range(int(rng.integers(1, 4))):
            x, y = (float(v) for v in rng.integers(0, 80, 2))
            image_truths.append((int(rng.integers(0, 2)), (x, y, x + 30, y + 30)))
        for c, (x0, y0, x1, y1) in image_truths + [(int(rng.integers(0, 2)), (5.0, 5.0, 40.0, 40.0))]:
            shift = float(rng.normal(0, 6))
            image_found.append((c, float(rng.random()), (x0 + shift, y0, x1 + shift, y1)))
        truths.append(image_truths)
        found.append(image_found)
    gt = COCO()
    gt.dataset = {"images": [{"id": i, "width": 128, "height": 128} for i in range(len(truths))],
                  "categories": [{"id": 0}, {"id": 1}],
                  "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [b[0], b[1], 30, 30], "area": 900,
                                   "iscrowd": 0} for k, (i, (c, b)) in
                                  enumerate(((i, t) for i, image in enumerate(truths) for t in image), start=1)]}
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": i, "category_id": c, "score": s, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                         for i, image in enumerate(found) for c, s, b in image])
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all recalls, classes, all areas, 100 dets
    assert average_precision(found, truths) == pytest.approx(float(precision.mean()), abs=1e-9)


def test_the_teachers_boxes_split_the_region_between_its_peaks():
    import cv2

    from cam.boxes import boxes_from_map
    from cam.train_detector import peak_boxes

    one = np.zeros((6, 12), np.float32)
    one[2:4, 3:6] = [[0.5, 1.0, 0.5], [0.4, 0.8, 0.4]]
    upsampled = cv2.resize(one, (120, 60), interpolation=cv2.INTER_LINEAR)
    assert peak_boxes(one, (60, 120)) == [list(map(float, boxes_from_map(upsampled, 0.2)[0]))]  # one peak: the paper's box

    ridge = np.full((6, 12), 0.0, np.float32)
    ridge[2:4, 1:11] = 0.5  # one region above 20 %, two peaks 8 cells apart on it
    ridge[2:4, 2] = ridge[2:4, 9] = 1.0
    left, right = sorted(peak_boxes(ridge, (60, 120)))
    peaks_at = [int((2 + 0.5) * 10), int((9 + 0.5) * 10)]  # the peaks' pixel columns, 25 and 95
    assert left[2] == right[0] == sum(peaks_at) // 2 + 1  # split where the nearer peak changes (a tie: the first)
    whole = boxes_from_map(cv2.resize(ridge, (120, 60), interpolation=cv2.INTER_LINEAR), 0.2)[0]
    assert (left[0], left[1], right[2], right[3]) == whole and left[1:4:2] == right[1:4:2]

    ridge[2:4, 9] = 0.6  # below 0.7 of the maximum: not a peak, its part joins the other's box
    assert peak_boxes(ridge, (60, 120)) == [list(map(float, whole))]
    assert peak_boxes(np.zeros((6, 12), np.float32), (60, 120)) == []


def test_a_recipe_takes_its_modes_defaults_when_it_runs(tmp_path):
    from dataclasses import replace

    full = replace(Recipe(), mode="full").resolved()  # as train(data, mode="full") builds it
    assert (full.epochs, full.lr, full.input_size, full.detector_epochs) == (5, 1e-3, 288, 24)
    assert Recipe(reviewed_boxes="x.json").detector is True
    for bad, message in (({"val_split": 5}, "val_split must be between 0 and 1"),
                         ({"epochs": 0}, "epochs must be an integer between 1 and 1000"),
                         ({"mode": "fast"}, "mode must be 'head' or 'full'")):
        with pytest.raises(ValueError, match=message):
            Recipe(**bad)


def test_reviewed_boxes_match_a_file_name_only_where_it_is_unique(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 10, "height": 10},
                       {"id": 2, "file_name": "export/banana/2.jpg", "width": 10, "height": 10},
                       {"id": 3, "file_name": "3.jpg", "width": 0, "height": 0}],
            "categories": [{"id": 1, "name": "apple"}],
            "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [1, 2, 5, 5]} for k in (1, 2, 3)]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    names = ["apple/1.jpg", "banana/1.jpg", "banana/2.jpg", "apple/3.jpg"]
    coco["annotations"][0]["category_id"] = 2  # 1.jpg is in two classes, its box of neither: refused, not dropped
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="1 of its 2 photos match no photo of the dataset \\(e.g. '1.jpg'\\)"):
        read_coco_boxes(path, names, ["apple", "banana"])
    coco["annotations"][0]["category_id"] = 1  # its box is an apple: the apple folder's 1.jpg
    path.write_text(json.dumps(coco))
    assert read_coco_boxes(path, names, ["apple", "banana"]) == {"apple/1.jpg": [(0.1, 0.2, 0.6, 0.7)],
                                                                "banana/2.jpg": [(0.1, 0.2, 0.6, 0.7)]}
    coco["images"][0]["file_name"] = "2.jpg"  # unique in the dataset
    path.write_text(json.dumps(coco))
    assert read_coco_boxes(path, names, ["apple", "banana"]) == {"banana/2.jpg": [(0.1, 0.2, 0.6, 0.7)] * 2}


@pytest.mark.parametrize("file_name", ["images/1a2b3c4d-apple_01.jpg", "images\\1a2b3c4d-apple_01.jpg",
                                       "/data/local-files/?d=apple/apple_01.jpg",
                                       "/data/local-files/?d=photos%2Fapple%2Fapple_01.jpg"])
def test_reviewed_boxes_read_label_studios_file_names(tmp_path, file_name):
    names = ["apple/apple_01.jpg", "apple/apple_02.jpg", "pear/pear_01.jpg"]
    coco = {"images": [{"id": 1, "file_name": file_name, "width": 10, "height": 10}],
            "categories": [{"id": 0, "name": "apple"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [1, 2, 5, 5]}]}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(coco))
    assert read_coco_boxes(path, names, ["apple", "pear"]) == {"apple/apple_01.jpg": [(0.1, 0.2, 0.6, 0.7)]}


def test_reviewed_boxes_keep_a_prefix_like_label_studios_where_the_photo_has_it(tmp_path):
    names = ["apple/1a2b3c4d-apple_01.jpg", "apple/apple_01.jpg"]
    coco = {"images": [{"id": 1, "file_name": "images/1a2b3c4d-apple_01.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "apple"}], "annotations": []}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    assert read_coco_boxes(path, names, ["apple"]) == {"apple/1a2b3c4d-apple_01.jpg": []}


@pytest.mark.parametrize("bbox", [[1, 2, 3, 4, 5], [1, 2, 3], [1, float("nan"), 3, 4], [1, 2, float("inf"), 4]])
def test_a_reviewed_bbox_of_other_than_four_finite_numbers_is_refused_in_one_line(tmp_path, bbox):
    coco = {"images": [{"id": 1, "file_name": "apple/1.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "apple"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))  # NaN and Infinity as Python's json writes them
    with pytest.raises(ValueError, match=r"coco.json: a bbox must be 4 finite numbers \[x, y, width, height\], not "):
        read_coco_boxes(path, ["apple/1.jpg"], ["apple"])


def test_a_checkpoint_archive_names_no_server_folder(tmp_path):
    from cam.service.jobs import checkpoint_archive

    folder = tmp_path / "experiment_x"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"base_spec": str(tmp_path / "my_model"),
                                                   "recipe": {"model": str(tmp_path / "my_model")}}))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "detector.safetensors").write_bytes(b"detector")
    with zipfile.ZipFile(checkpoint_archive(str(folder), tmp_path)) as archive:
        assert sorted(archive.namelist()) == ["config.json", "detector.safetensors", "model.safetensors"]
        config = json.loads(archive.read("config.json"))
        assert archive.read("detector.safetensors") == b"detector"
    assert config == {"base_spec": "my_model", "recipe": {"model": "my_model"}}


def _wrapped(zip_path: Path, folder: Path) -> Path:
    """The dataset of `zip_path` again, its class folders under one top folder (`top/blue/0.png`)."""
    wrapped = folder / "wrapped.zip"
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(wrapped, "w") as archive:
        for member in source.namelist():
            archive.writestr(f"top/{member}", source.read(member))
    return wrapped


def _cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "cam", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow  # trains a detector
def test_the_faults_of_a_checkpoint_with_a_detector_through_the_cli(trained, tmp_path):
    """Retraining without --detector keeps no detector; --boxes-from reads our COCO on a dataset
    wrapped in one top folder; --plain gives the maps' box."""
    checkpoint = Path(trained["summary"]["checkpoint"])
    done = _cli("train", trained["data"], "--model", checkpoint, "--mode", "head", "--epochs", "1", "--out",
                tmp_path / "again")
    assert done.returncode == 0, done.stderr
    again = Path(json.loads(done.stdout.splitlines()[-1])["checkpoint"])
    assert not (again / "detector.safetensors").exists() and "detector" not in json.loads(
        (again / "config.json").read_text())
    assert cam.load_model(again, runtime="torch").detector is None

    squares, names = trained["squares"], sorted(trained["squares"])  # per-class numbering: no name is unique
    coco = {"images": [{"id": i + 1, "file_name": name, "width": 128, "height": 128} for i, name in enumerate(names)],
            "categories": [{"id": 1, "name": "blue"}, {"id": 2, "name": "red"}],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1 + name.startswith("red"),
                             "bbox": [*squares[name][:2], squares[name][2] - squares[name][0],
                                      squares[name][3] - squares[name][1]]} for i, name in enumerate(names)]}
    path = tmp_path / "reviewed.json"
    path.write_text(json.dumps(coco))
    done = _cli("train", _wrapped(trained["data"], tmp_path), "--model", TINY, "--no-pretrained", "--epochs", "1",
                "--input-size", "128", "--detector-epochs", "1", "--boxes-from", path, "--reviewed-only",
                "--out", tmp_path / "reviewed")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["metrics"]["detector"]["images"] == len(names)

    photo = tmp_path / "two.png"
    photo.write_bytes(png_bytes(_photo(TWO_SQUARES, COLOURS["red"], seed=7)))
    plain = _cli("localize", photo, "--model", checkpoint, "--plain", "--runtime", "torch", "--topk", "1")
    auto = _cli("localize", photo, "--model", checkpoint, "--runtime", "torch", "--topk", "1")
    assert plain.returncode == auto.returncode == 0, plain.stderr + auto.stderr
    assert json.loads(plain.stdout)["box_source"] == "cam" and json.loads(auto.stdout)["box_source"] != "cam"
    assert cam.localize(cam.load_model(checkpoint, runtime="torch"), photo, "plain").box_source == "cam"


def test_reviewed_boxes_naming_photos_the_dataset_lacks_are_refused_not_dropped(tmp_path):
    names = ["blue/0.png", "blue/1.png", "red/0.png", "red/1.png"]
    coco = {"images": [{"id": 1, "file_name": "x/blue/0.png", "width": 10, "height": 10},
                       {"id": 2, "file_name": "elsewhere/9.png", "width": 10, "height": 10}],
            "categories": [{"id": 1, "name": "blue"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}]}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"1 of its 2 photos match no photo of the dataset \(e.g. 'elsewhere/9.png'\)"):
        read_coco_boxes(path, names, ["blue", "red"])
    coco["images"].pop()
    path.write_text(json.dumps(coco))
    assert read_coco_boxes(path, names, ["blue", "red"]) == {"blue/0.png": [(0.1, 0.1, 0.6, 0.6)]}


def test_the_detector_learns_from_a_bounded_share_of_each_class():
    from cam.train_detector import capped

    labels = [0] * 60 + [1] * 30 + [2] * 10
    kept = capped(list(range(100)), labels, 20, seed=3)
    assert len(kept) == 20 and kept == sorted(kept) == capped(list(range(100)), labels, 20, seed=3)
    assert [sum(labels[i] == c for i in kept) for c in range(3)] == [12, 6, 2]
    assert capped(list(range(100)), labels, 100, seed=3) == list(range(100))
    assert capped(list(range(100)), labels, 20, seed=4) != kept
    many = [c for c in range(1500) for _ in range(3)]  # more classes than the cap: at most the cap still
    assert len(capped(list(range(len(many))), many, 1000, seed=0)) == 1000
    assert len(capped(list(range(len(many))), many, 0, seed=0)) == 0


def _arrays_and_truths(trained):
    """The squares dataset as arrays, labels, names and true boxes as fractions."""
    from cam.data import read_photos

    names = sorted(trained["squares"])
    with zipfile.ZipFile(trained["data"]) as archive:
        arrays = [photo.pixels for photo in read_photos([archive.read(n) for n in names], cover=128)]
    labels = [int(n.startswith("red")) for n in names]
    truths = {n: [tuple(v / 128 for v in trained["squares"][n])] for n in names}
    return arrays, labels, names, truths


@pytest.mark.slow  # trains detectors
def test_reviewed_photos_learn_their_boxes_and_a_photo_without_one_teaches_background(trained):
    from cam.train_detector import train_detector

    model = cam.load_model(trained["summary"]["checkpoint"], runtime="torch")
    arrays, labels, names, truths = _arrays_and_truths(trained)
    blue = [i for i, y in enumerate(labels) if y == 0]
    scores = {}  # every other blue photo listed with no box: its square taught as background, not left out
    for name, reviewed in (("boxed", truths), ("background", {n: ([] if i in blue[1::2] else truths[n])
                                                               for i, n in enumerate(names)})):
        train_detector(model, arrays, labels, names, (128, 128), 12, 0, reviewed, reviewed_only=True)
        found = cam.localize_batch(model, [arrays[i] for i in blue], boxes="detector", box_score=0.0, topk=2,
                                   input_size=128)
        scores[name] = float(np.mean([max([s for p in r.predictions for s in p.box_scores], default=0.0)
                                      for r in found]))
    assert scores["background"] < 0.8 * scores["boxed"], scores  # left out, it scored as boxed (0.52 and 0.52)

    teacher_only = train_detector(model, arrays, labels, names, (128, 128), 2, 0)
    weights = {k: v.clone() for k, v in model.detector.state_dict().items()}
    few = {n: truths[n] for n in names[:3] + names[-3:]}
    mixed = train_detector(model, arrays, labels, names, (128, 128), 2, 0, few)
    assert teacher_only["learned_from"] == "teacher" and "reviewed_ap50" not in teacher_only
    assert mixed["learned_from"] == "teacher and reviewed" and mixed["reviewed_images"] == 6
    assert mixed["images"] == teacher_only["images"] == len(names)
    assert set(mixed["reviewed_ap50"]) == {"cam", "detector", "both"} and mixed["boxes"] == model.auto_boxes
    assert any(not torch.equal(v, weights[k]) for k, v in model.detector.state_dict().items())


@pytest.mark.slow  # trains detectors
def test_auto_gives_the_maps_boxes_where_the_detector_measured_worse(trained, tmp_path):
    from cam.checkpoint import save_checkpoint
    from cam.train_detector import train_detector

    model = cam.load_model(trained["summary"]["checkpoint"], runtime="torch")
    arrays, labels, names, _ = _arrays_and_truths(trained)
    maps = cam.localize_batch(model, arrays, boxes="cam", topk=1, input_size=128)  # reviewed = the maps' own boxes
    right = [(n, r) for n, r, y in zip(names, maps, labels) if r.predictions[0].class_index == y]
    reviewed = {n: [tuple(v / 128 for v in r.predictions[0].boxes[0])] for n, r in right[:4] + right[-4:]}
    metrics = train_detector(model, arrays, labels, names, (128, 128), 2, 0, reviewed)
    assert metrics["reviewed_ap50"]["cam"] == 1.0 and metrics["folds"] == 5
    assert metrics["boxes"] == model.auto_boxes == "cam"
    photo = _photo(TWO_SQUARES, COLOURS["red"], seed=7)
    assert cam.localize(model, photo, input_size=128).box_source == "cam"
    again = cam.load_model(save_checkpoint(model, tmp_path, {}, {}), runtime="torch")
    assert again.auto_boxes == "cam" and cam.localize(again, photo).box_source == "cam"
    model.auto_boxes = "detector"
    assert cam.localize(model, photo, input_size=128).box_source == "detector"


def test_the_weights_digest_covers_the_detector():
    from cam.detector import build_student

    model = cam.load_model(TINY, pretrained=False, runtime="torch")
    alone = model.weights_digest()
    model.detector = build_student({"in_channels": [8, 16]}, seed=0)
    with_one = model.weights_digest()
    model.detector = build_student({"in_channels": [8, 16]}, seed=1)
    assert len({alone, with_one, model.weights_digest()}) == 3  # a run.json tells these checkpoints apart
