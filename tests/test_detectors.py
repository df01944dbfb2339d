"""From photos to a detector: the YOLO export in Ultralytics' layout, the VOC export in the devkit's
(read by torchvision's VOCDetection), COCO read by pycocotools, and the classes a user chooses."""

import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

import cam
from cam import Settings, export
from cam.label import LOG, label

from .conftest import ROOT
from .datasets import COLOURS, square_image


def _collection(folder: Path, count: int = 12) -> list[str]:
    """Photos in nested folders that repeat names (`a/x/0.png`, `b/x/0.png`), one folder called
    `images` (a trainer must not mistake it for its own), a JPEG among them."""
    names = []
    for i in range(count):
        name = f"{'ab'[i % 2]}/{'images' if i % 3 == 0 else 'x'}/{i // 2}.{'jpg' if i == 5 else 'png'}"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = square_image(list(COLOURS.values())[i % 3], seed=i, size=72)
        if name.endswith(".jpg"):
            Image.open(io.BytesIO(data)).convert("RGB").save(path, quality=95)
        else:
            path.write_bytes(data)
        names.append(name)
    return sorted(names)


def _ultralytics_label_path(image: Path) -> Path:
    """Where Ultralytics looks for an image's label: the last /images/ replaced by /labels/, .txt."""
    text = str(image)
    head, _, tail = text.rpartition(f"{os.sep}images{os.sep}")
    return Path(f"{head}{os.sep}labels{os.sep}{tail}").with_suffix(".txt")


@pytest.fixture(scope="module")
def labelled(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    names = _collection(root / "in")
    out = root / "out"
    label([root / "in"], out, model=tiny_model, settings=Settings(topk=2, all_regions=True), val_fraction=0.3)
    return root, out, names


def test_yolo_is_in_the_layout_ultralytics_reads(labelled, tiny_model):
    root, out, names = labelled
    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert list(data) == ["path", "train", "val", "nc", "names"]
    assert Path(data["path"]) == (out / "yolo").resolve() and data["nc"] == len(tiny_model.class_names)
    assert data["names"] == dict(enumerate(tiny_model.class_names))
    images = {split: sorted((out / "yolo" / data[split]).iterdir()) for split in ("train", "val")}
    assert data["train"] == "images/train" and data["val"] == "images/val"
    assert sorted(p.name for split in images.values() for p in split) == sorted(
        export.flat_stem(n) + Path(n).suffix for n in names)  # every photo once, names unique though folders repeat them
    for split, files in images.items():
        assert files and all(export.split_of(p.stem.replace("__", "/") + p.suffix, 0.3) == split for p in files)
        for image in files:
            assert image.is_symlink() and image.resolve() == (root / "in" / (image.stem.replace("__", "/") + image.suffix)).resolve()
            rows = [line.split() for line in _ultralytics_label_path(image).read_text().splitlines()]
            for row in rows:
                assert len(row) == 5 and 0 <= int(row[0]) < data["nc"]
                cx, cy, w, h = map(float, row[1:])
                assert -1e-6 <= cx - w / 2 and cx + w / 2 <= 1 + 1e-6 and -1e-6 <= cy - h / 2 and cy + h / 2 <= 1 + 1e-6
    records = {r["file"]: r for r in export.read_log(out / LOG)}
    for stem, rows in export.read_yolo(out / "yolo").items():
        record = records[next(n for n in names if export.flat_stem(n) == stem)]
        assert len(rows) == sum(len(p["boxes"]) for p in record["predictions"])


def test_voc_reads_in_torchvision(labelled):
    from torchvision.datasets import VOCDetection

    _, out, names = labelled
    records = {export.flat_stem(r["file"]): r for r in export.read_log(out / LOG)}
    sizes = {}
    for image_set in ("train", "val", "trainval"):
        dataset = VOCDetection(root=str(out / "voc"), year="2012", image_set=image_set)
        sizes[image_set] = len(dataset)
        for image, target in dataset:
            annotation = target["annotation"]
            record = records[Path(annotation["filename"]).stem]
            assert image.size == (record["width"], record["height"])
            objects = annotation.get("object", [])
            boxes = sorted((p["label"], tuple(b)) for p in record["predictions"] for b in p["boxes"])
            assert sorted((o["name"], (int(o["bndbox"]["xmin"]) - 1, int(o["bndbox"]["ymin"]) - 1,
                                       int(o["bndbox"]["xmax"]), int(o["bndbox"]["ymax"]))) for o in objects) == boxes
    assert sizes["train"] + sizes["val"] == sizes["trainval"] == len(names) and sizes["val"] > 0


def test_coco_reads_in_pycocotools(labelled):
    from pycocotools.coco import COCO

    _, out, names = labelled
    coco = COCO(str(out / "coco.json"))
    assert sorted(image["file_name"] for image in coco.imgs.values()) == names
    assert all(coco.loadImgs(a["image_id"]) for a in coco.anns.values())


def test_the_chosen_classes_are_the_only_ones_boxed_and_exported_in_order(tiny_model, tmp_path):
    names = _collection(tmp_path / "in", 6)
    chosen = (tiny_model.class_names[7], tiny_model.class_names[2].upper())  # any case; ids follow this order
    out = tmp_path / "out"
    label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=2, classes=chosen), val_fraction=0.5)
    records = list(export.read_log(out / LOG))
    assert len(records) == len(names)
    assert all(sorted(p["class_index"] for p in r["predictions"]) == [2, 7] for r in records)
    exported = [tiny_model.class_names[7], tiny_model.class_names[2]]
    coco = json.loads((out / "coco.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": exported[0]}, {"id": 2, "name": exported[1]}]
    ids = {a["category_id"] for a in coco["annotations"]}
    assert ids <= {1, 2} and len(coco["annotations"]) == sum(len(p["boxes"]) for r in records for p in r["predictions"])
    assert (out / "yolo" / "classes.txt").read_text().splitlines() == exported
    assert yaml.safe_load((out / "yolo" / "data.yaml").read_text())["names"] == {0: exported[0], 1: exported[1]}
    assert {c for rows in export.read_yolo(out / "yolo").values() for c, _ in rows} == {0, 1}
    assert {o[0] for a in export.read_voc(out / "voc").values() for o in a["objects"]} == set(exported)
    assert json.loads((out / "run.json").read_text())["classes"] == exported

    with pytest.raises(ValueError, match="other settings"):  # resume refuses a changed class list
        label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=1, classes=chosen[:1]), val_fraction=0.5)
    with pytest.raises(ValueError, match="other settings"):  # and a changed split
        label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=2, classes=chosen), val_fraction=0.2)
    with pytest.raises(ValueError, match="topk must be between 1 and 2"):
        label([tmp_path / "in"], tmp_path / "other", model=tiny_model, settings=Settings(topk=3, classes=chosen))
    with pytest.raises(ValueError, match="not a class"):
        label([tmp_path / "in"], tmp_path / "other", model=tiny_model, settings=Settings(classes=("no such thing",)))


def test_localize_ranks_only_the_chosen_classes(tiny_model, photo):
    everything = cam.localize(tiny_model, photo, topk=len(tiny_model.class_names))
    probability = {p.class_index: p.score for p in everything.predictions}
    for method in ("cam", "gradcam"):
        result = cam.localize(tiny_model, photo, topk=2, classes=[9, 4, 1], method=method)
        expected = sorted([9, 4, 1], key=lambda c: -probability[c])[:2]
        assert [p.class_index for p in result.predictions] == expected
        assert [p.score for p in result.predictions] == pytest.approx([probability[c] for c in expected], abs=1e-6)
    with pytest.raises(ValueError, match="topk must be between 1 and 1"):
        cam.localize(tiny_model, photo, topk=2, classes=[3])
    assert len(cam.localize(tiny_model, photo).predictions) == 5  # topk not given: 5, or fewer where fewer are ranked
    assert [p.class_index for p in cam.localize(tiny_model, photo, classes=[3]).predictions] == [3]
    for bad in ([], [3, 3], [10_000], [True]):
        with pytest.raises(ValueError):
            cam.localize(tiny_model, photo, topk=1, classes=bad)


def test_ambiguous_names_ask_for_an_index(default_model, photo):
    crane = [i for i, name in enumerate(default_model.class_names) if name == "crane"]
    assert len(crane) == 2
    with pytest.raises(ValueError, match="names 2 classes"):
        cam.localize(default_model, photo, topk=1, classes=["crane"])
    with pytest.raises(ValueError, match="did you mean 'bee'"):
        cam.localize(default_model, photo, topk=1, classes=["bees"])
    assert cam.localize(default_model, photo, topk=1, classes=[crane[1]]).predictions[0].class_index == crane[1]


def test_zipped_photos_and_copies_are_real_files(tiny_model, tmp_path):
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as archive:
        for i in range(3):
            archive.writestr(f"z/{i}.png", square_image(COLOURS["red"], seed=i))
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "a.png").write_bytes(square_image(COLOURS["blue"], seed=9))
    for copy in (False, True):
        out = tmp_path / f"out{copy}"
        label([tmp_path / "set.zip", tmp_path / "loose"], out, model=tiny_model, copy_images=copy, val_fraction=0.0)
        placed = sorted((out / "yolo" / "images" / "train").iterdir())
        assert [p.name for p in placed] == ["a.png", "z__0.png", "z__1.png", "z__2.png"]
        assert [p.is_symlink() for p in placed] == [not copy, False, False, False]  # the zip's are gone after the run
        assert all(p.read_bytes()[:4] == b"\x89PNG" for p in placed)
        voc = sorted((out / "voc" / export.VOC_DEVKIT / "JPEGImages").iterdir())
        assert [p.name for p in voc] == ["a.jpg", "z__0.jpg", "z__1.jpg", "z__2.jpg"]
        assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in voc)  # converted: VOC's JPEGImages hold JPEGs
        data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
        assert data["val"] == "images/train"  # no validation photo: Ultralytics validates on the training set


@pytest.mark.slow
def test_cli_classes_from_a_list_or_a_file(tmp_path):
    _collection(tmp_path / "in", 4)
    (tmp_path / "classes.txt").write_text("bee\nant\n")
    for value in ("bee,ant", str(tmp_path / "classes.txt")):
        out = tmp_path / f"out{len(value)}"
        done = subprocess.run([sys.executable, "-m", "cam", "label", str(tmp_path / "in"), "--out", str(out),
                               "--classes", value, "--format", "yolo", "--val-fraction", "0.5"],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (out / "yolo" / "classes.txt").read_text() == "bee\nant\n"
    done = subprocess.run([sys.executable, "-m", "cam", "label", str(tmp_path / "in"), "--out", str(tmp_path / "bad"),
                           "--classes", "bees"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "did you mean 'bee'" in done.stderr


# One epoch of Ultralytics on the export (argv: data.yaml, project folder), in a process of its own:
# importing ultralytics patches PIL's Image.open, cv2's imread and imwrite, torch.save and more for
# good, so it must never be imported into the tests' process.
ULTRALYTICS_ONE_EPOCH = """
import sys
from ultralytics import YOLO

YOLO("yolov8n.yaml").train(data=sys.argv[1], epochs=1, imgsz=64, batch=4, workers=0, device="cpu",
                           project=sys.argv[2], name="run", plots=False, amp=False, verbose=False)
"""


def _patched_by_ultralytics():
    """What importing ultralytics replaces in the process that imports it."""
    import cv2
    import torch

    return Image.open, Image.MAX_IMAGE_PIXELS, cv2.imread, cv2.imwrite, cv2.imshow, torch.save, torch.load


def test_one_epoch_of_ultralytics_trains_on_the_yolo_export(labelled, tmp_path):
    if importlib.util.find_spec("ultralytics") is None:  # found without importing it
        pytest.skip("ultralytics is not installed: it requires opencv-python, which clashes with this project's "
                    "opencv-python-headless, so requirements-dev.txt leaves it out")
    _, out, _ = labelled
    before = _patched_by_ultralytics()
    env = {**os.environ, "YOLO_CONFIG_DIR": str(tmp_path / "config")}  # its settings file: not in the user's home
    done = subprocess.run([sys.executable, "-c", ULTRALYTICS_ONE_EPOCH, str(out / "yolo" / "data.yaml"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()
    assert not [name for name in sys.modules if name.split(".")[0] == "ultralytics"]  # nothing of it here
    assert _patched_by_ultralytics() == before  # the tests after this one get the process as it was
