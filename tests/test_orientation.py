"""A phone photo stored on its side (EXIF orientation 6) is exported auto-oriented: every format
gets an upright copy without the tag, so readers that ignore EXIF agree with the upright boxes."""

import json

import numpy as np
import pytest
from PIL import Image

from cam import export
from cam.label import LOG, label

from .images import jpeg_bytes

UPRIGHT = (600, 400)  # (height, width) as the photo is seen
OBJECT = (250, 50, 350, 150)  # x0, y0, x1, y1 of the red square, in upright pixels


def _phone_photo(path):
    """A grey photo with a red square at OBJECT, stored turned a quarter left with orientation 6
    (display turned right): 600 wide, 400 high as stored."""
    upright = np.full((*UPRIGHT, 3), 128, np.uint8)
    x0, y0, x1, y1 = OBJECT
    upright[y0:y1, x0:x1] = (220, 30, 30)
    path.write_bytes(jpeg_bytes(np.ascontiguousarray(np.rot90(upright)), exif_orientation=6))
    return path


@pytest.fixture
def exported(tmp_path):
    """The formats of a log whose one photo is the phone photo, boxed at OBJECT."""
    photo = _phone_photo(tmp_path / "phone.jpg")
    out = tmp_path / "out"
    out.mkdir()
    record = {"file": "phone.jpg", "width": UPRIGHT[1], "height": UPRIGHT[0],
              "predictions": [{"class_index": 0, "label": "square", "score": 0.9, "boxes": [list(OBJECT)]}]}
    (out / LOG).write_text(json.dumps(record) + "\n")
    export.place_photos(out, [("phone.jpg", str(photo), False)], export.FORMATS, val_fraction=0.0)
    classes = [(0, "square")]
    export.write_coco(out / LOG, classes, out / "coco.json")
    export.write_yolo(out / LOG, classes, out / "yolo", 0.0)
    export.write_voc(out / LOG, classes, out / "voc", 0.0)
    return out


def _red_inside(image: Image.Image, box) -> bool:
    pixels = np.asarray(image.convert("RGB").crop(tuple(box)), dtype=float)
    return pixels[..., 0].mean() > 180 and pixels[..., 1].mean() < 80


def test_voc_detection_reads_upright_photos_that_match_the_boxes(exported):
    from torchvision.datasets import VOCDetection

    image, target = VOCDetection(str(exported / "voc"), year="2012", image_set="trainval")[0]
    size = target["annotation"]["size"]
    assert image.size == (int(size["width"]), int(size["height"])) == (UPRIGHT[1], UPRIGHT[0])
    box = target["annotation"]["object"][0]["bndbox"]
    assert _red_inside(image, (int(box["xmin"]) - 1, int(box["ymin"]) - 1, int(box["xmax"]), int(box["ymax"])))


def test_pycocotools_and_plain_pil_read_upright_photos_that_match_the_boxes(exported):
    from pycocotools.coco import COCO

    coco = COCO(str(exported / "coco.json"))
    info = coco.loadImgs(1)[0]
    image = Image.open(exported / "images" / info["file_name"])  # no exif_transpose
    assert image.size == (info["width"], info["height"]) and "Orientation" not in str(image.getexif())
    x, y, w, h = coco.loadAnns(coco.getAnnIds(imgIds=1))[0]["bbox"]
    assert _red_inside(image, (x, y, x + w, y + h))


def test_yolo_images_are_upright_copies(exported):
    (image_path,) = (exported / "yolo" / "images" / "train").iterdir()
    image = Image.open(image_path)
    assert not image_path.is_symlink() and image.size == (UPRIGHT[1], UPRIGHT[0])
    assert image.getexif().get(0x0112) is None
    ((_, (cx, cy, w, h)),) = export.read_yolo(exported / "yolo")["phone"]
    x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    assert _red_inside(image, tuple(round(v * side) for v, side in zip((x0, y0, x1, y1), image.size * 2)))


def test_label_places_upright_copies_and_links_photos_stored_upright(tiny_model, tmp_path):
    (tmp_path / "in").mkdir()
    _phone_photo(tmp_path / "in" / "phone.jpg")
    (tmp_path / "in" / "plain.jpg").write_bytes(jpeg_bytes(np.full((40, 60, 3), 90, np.uint8)))
    out = tmp_path / "out"
    label([tmp_path / "in"], out, model=tiny_model, val_fraction=0.0)
    sizes = {r["file"]: (r["width"], r["height"]) for r in export.read_log(out / LOG)}
    assert sizes == {"phone.jpg": (UPRIGHT[1], UPRIGHT[0]), "plain.jpg": (60, 40)}
    for folder in (out / "images", out / "yolo" / "images" / "train", out / "voc" / export.VOC_DEVKIT / "JPEGImages"):
        for path in folder.iterdir():
            assert Image.open(path).size == sizes[path.name], path
            assert path.is_symlink() == (path.name == "plain.jpg")  # only the rotated photo is copied


def _targets(out, name):
    """Where place_photos puts the photo `name` (stem.jpg) in each format, with val_fraction 0."""
    stem = name.rsplit(".", 1)[0]
    return [out / "images" / name, out / "yolo" / "images" / "train" / name,
            out / "voc" / export.VOC_DEVKIT / "JPEGImages" / f"{stem}.jpg"]


def test_a_resumed_run_replaces_photos_placed_the_wrong_way(tmp_path):
    """A run resumed in a folder where an earlier version linked a phone photo sideways (or copied
    one that is now linked) puts each in place as this version would: an upright copy, or a link."""
    phone, plain = _phone_photo(tmp_path / "phone.jpg"), tmp_path / "plain.jpg"
    plain.write_bytes(jpeg_bytes(np.full((40, 60, 3), 90, np.uint8)))
    out = tmp_path / "out"
    for target in _targets(out, "phone.jpg"):  # the earlier version's sideways links
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(phone)
    for target in _targets(out, "plain.jpg"):  # and its copies (--copy-images), this run links
        target.write_bytes(plain.read_bytes())
    original = phone.read_bytes()
    (out / "images" / ".phone.jpg.partial").symlink_to(phone)  # a run killed between its link and the rename
    export.place_photos(out, [("phone.jpg", str(phone), False), ("plain.jpg", str(plain), False)], export.FORMATS,
                        val_fraction=0.0)
    for target in _targets(out, "phone.jpg"):
        image = Image.open(target)
        assert not target.is_symlink() and image.size == (UPRIGHT[1], UPRIGHT[0]), target
        assert image.getexif().get(0x0112) is None
    for target in _targets(out, "plain.jpg"):
        assert target.is_symlink() and target.resolve() == plain.resolve(), target
    assert phone.read_bytes() == original  # nothing written through a link
    placed = {target: target.stat().st_mtime_ns for target in _targets(out, "phone.jpg")}
    export.place_photos(out, [("phone.jpg", str(phone), False)], export.FORMATS, val_fraction=0.0)
    assert {target: target.stat().st_mtime_ns for target in placed} == placed  # in place: kept as they are


def test_a_phone_photo_is_decoded_once_and_its_copies_are_one_file(tmp_path, monkeypatch):
    phone, decoded, load = _phone_photo(tmp_path / "phone.jpg"), [], export.load_image
    monkeypatch.setattr(export, "load_image", lambda path: decoded.append(path) or load(path))
    out = tmp_path / "out"
    export.place_photos(out, [("phone.jpg", str(phone), False)], export.FORMATS, val_fraction=0.0)
    targets = _targets(out, "phone.jpg")
    assert decoded == [str(phone)]
    assert len({target.stat().st_ino for target in targets}) == 1 and targets[0].stat().st_nlink == 3
    assert all(not t.is_symlink() and Image.open(t).size == (UPRIGHT[1], UPRIGHT[0]) for t in targets)
