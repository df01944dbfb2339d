"""Detection annotations from a labelling run's log: COCO, YOLO (Ultralytics' layout) and Pascal VOC
(the devkit's layout) writers, the photos placed beside them, and readers of the YOLO and VOC
files back to boxes (for checks and tests; pycocotools reads COCO).

The log is `predictions.jsonl`: one JSON object a photo, `{"file": relative path, "width",
"height", "predictions": [{"class_index", "label", "score", "boxes": [[x0, y0, x1, y1], ...],
"box_scores" (detector boxes only)}]}`,
boxes in pixel edges (`cam.boxes`). Each writer streams the log, so memory stays flat in the
number of photos, and replaces its output in one rename, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import yaml
from PIL import Image

from .data import hard_link_or_copy, load_image, map_threads
from .review import review_order

FORMATS = ("coco", "yolo", "voc")
PLACING_THREADS = 4  # photos placed at once, each a full decode of a phone photo (~80 MB at 12 MP)
SPLITS = ("train", "val")
VOC_DEVKIT = Path("VOCdevkit", "VOC2012")


def read_log(path):
    """The records of a jsonl log, one at a time (a missing log has none)."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open() as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def coco_category_id(class_id: int) -> int:
    """COCO ids start at 1 (many detection trainers keep 0 for the background): class id + 1."""
    return class_id + 1


def flat_stem(name: str) -> str:
    """What a photo's exported files are named: its relative path without its suffix, folders joined
    by '__' (`ants/x.jpg` -> `ants__x`). Flat, so that no folder of the photo's own path (one called
    `images`, say) changes where a trainer looks for its label."""
    return PurePosixPath(name).with_suffix("").as_posix().replace("/", "__")


def split_of(name: str, val_fraction: float) -> str:
    """'val' or 'train' for a photo, by a stable hash of its relative path: the same photo lands in
    the same split in every run and on every machine, whatever else the collection holds."""
    position = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "val" if position < val_fraction else "train"


def _class_ids(classes: list[tuple[int, str]]) -> dict[int, int]:
    """The exported class id of each model class index: its position in `classes`."""
    return {index: position for position, (index, _) in enumerate(classes)}


def _annotations(record: dict, ids: dict[int, int], one_label_a_box: bool = False):
    """(class id, [x, y, w, h], score) for every box of a photo's record: the detector's box score
    where it gave the boxes, else the class's probability. A detector can name one box under two
    classes, each scored (COCO keeps both, as detectors' results do); `one_label_a_box` keeps only
    its best-scored, for the formats without scores (YOLO, VOC), whose labels would contradict."""
    found, best = [], {}  # best: with one_label_a_box, each detector box's best-scored annotation
    for p in record["predictions"]:
        detected = p.get("box_scores") is not None
        scores = p["box_scores"] if detected else [p["score"]] * len(p["boxes"])
        for (x0, y0, x1, y1), score in zip(p["boxes"], scores):
            if p["class_index"] not in ids:
                continue
            annotation = (ids[p["class_index"]], [x0, y0, x1 - x0, y1 - y0], score)
            if one_label_a_box and detected:  # unscored maps' boxes of two classes may coincide: both stay
                earlier = best.get((x0, y0, x1, y1))
                if earlier is not None and earlier[2] >= score:
                    continue
                if earlier is not None:
                    found.remove(earlier)
                best[x0, y0, x1, y1] = annotation
            found.append(annotation)
    return found


def write_coco(log, classes: list[tuple[int, str]], path) -> None:
    """`coco.json`: images (id = position in the log, from 1), categories (`classes`, the exported
    ones: (model class index, name), ids in that order from 1) and annotations whose `[x, y, w, h]`
    boxes carry a score, so the list also loads as a results file (`COCO.loadRes`). Written in two
    passes over the log, never holding it whole."""
    path, ids = Path(path), _class_ids(classes)
    with _atomic_file(path) as out:
        out.write('{"info": {"description": "boxes from class activation maps (cam label)"},\n"images": [')
        for image_id, record in enumerate(read_log(log), start=1):
            out.write(("," if image_id > 1 else "") + "\n" + json.dumps(
                {"id": image_id, "file_name": record["file"], "width": record["width"], "height": record["height"]}))
        out.write('],\n"categories": ' + json.dumps(
            [{"id": coco_category_id(i), "name": name} for i, (_, name) in enumerate(classes)]))
        out.write(',\n"annotations": [')
        annotation_id = 0
        for image_id, record in enumerate(read_log(log), start=1):
            for class_id, bbox, score in _annotations(record, ids):
                annotation_id += 1
                out.write(("," if annotation_id > 1 else "") + "\n" + json.dumps(
                    {"id": annotation_id, "image_id": image_id, "category_id": coco_category_id(class_id),
                     "bbox": bbox, "area": bbox[2] * bbox[3], "score": score, "iscrowd": 0}))
        out.write("]}\n")


def write_review(log, path) -> None:
    """review.txt: every photo of the log once, by its coco.json `file_name`, the photos whose boxes
    are most in doubt first (`cam.review.review_order`)."""
    with _atomic_file(Path(path)) as out:
        out.write("".join(f"{name}\n" for name in review_order(read_log(log))))


def write_yolo(log, classes: list[tuple[int, str]], folder, val_fraction: float) -> None:
    """`yolo/` as Ultralytics reads it: `data.yaml` (`path`, `train`, `val`, `nc`, `names`),
    `classes.txt`, and `labels/{train,val}/<flat stem>.txt` per photo with `class cx cy w h` in
    [0, 1] (empty: no box), beside the photos in `images/{train,val}/` (`place_photos`). With no
    validation photo, `val` is the training set."""
    folder, ids = Path(folder), _class_ids(classes)
    folder.mkdir(parents=True, exist_ok=True)
    splits = set()
    with _atomic_folder(folder / "labels") as root:
        for split in SPLITS:
            (root / split).mkdir()
        for record in read_log(log):
            width, height = record["width"], record["height"]
            lines = [f"{c} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}\n"
                     for c, (x, y, w, h), _ in _annotations(record, ids, one_label_a_box=True)]
            split = split_of(record["file"], val_fraction)
            splits.add(split)
            (root / split / f"{flat_stem(record['file'])}.txt").write_text("".join(lines))
    with _atomic_file(folder / "classes.txt") as out:
        out.write("".join(f"{name}\n" for _, name in classes))
    with _atomic_file(folder / "data.yaml") as out:
        out.write(yaml.safe_dump({"path": str(folder.resolve()), "train": "images/train",
                                  "val": "images/val" if "val" in splits else "images/train",
                                  "nc": len(classes), "names": {i: name for i, (_, name) in enumerate(classes)}},
                                 allow_unicode=True, sort_keys=False))


def write_voc(log, classes: list[tuple[int, str]], folder, val_fraction: float) -> None:
    """`voc/VOCdevkit/VOC2012/`, the devkit layout (torchvision's `VOCDetection(root=voc, year="2012")`):
    `Annotations/<flat stem>.xml` per photo, `ImageSets/Main/{train,val,trainval}.txt` and the
    photos in `JPEGImages/` (`place_photos`). VOC counts pixels from 1 and its corners are
    inclusive: a box over columns x0..x1-1 is xmin = x0 + 1, xmax = x1."""
    devkit, ids = Path(folder) / VOC_DEVKIT, _class_ids(classes)
    (devkit / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    names = [name for _, name in classes]
    sets: dict[str, list[str]] = {split: [] for split in SPLITS}
    with _atomic_folder(devkit / "Annotations") as root:
        for record in read_log(log):
            stem = flat_stem(record["file"])
            sets[split_of(record["file"], val_fraction)].append(stem)
            annotation = ET.Element("annotation")
            _child(annotation, "folder", "VOC2012")
            _child(annotation, "filename", f"{stem}.jpg")
            size = _child(annotation, "size")
            for tag, value in (("width", record["width"]), ("height", record["height"]), ("depth", 3)):
                _child(size, tag, value)
            _child(annotation, "segmented", 0)
            for class_id, (x, y, w, h), _ in _annotations(record, ids, one_label_a_box=True):
                obj = _child(annotation, "object")
                for tag, value in (("name", names[class_id]), ("pose", "Unspecified"), ("truncated", 0),
                                   ("difficult", 0)):
                    _child(obj, tag, value)
                box = _child(obj, "bndbox")
                for tag, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
                    _child(box, tag, value)
            ET.indent(annotation)
            ET.ElementTree(annotation).write(root / f"{stem}.xml", encoding="unicode")
    sets["trainval"] = sorted(sets["train"] + sets["val"])
    for name, stems in sets.items():
        with _atomic_file(devkit / "ImageSets" / "Main" / f"{name}.txt") as out:
            out.write("".join(f"{stem}\n" for stem in stems))


def place_photos(out, photos, formats, val_fraction: float, copy: bool = False) -> None:
    """Put the labelled photos where the readers look: `images/` beside `coco.json` (by relative
    name: COCO's `file_name`), `yolo/images/{split}/` and the VOC devkit's `JPEGImages/` (as JPEG:
    other formats are converted). `photos` holds (relative name, path, must copy) for each; a link
    to the photo's absolute path unless `copy` or the photo must be copied (one unpacked from a zip
    goes when the run ends). A photo stored on its side (an EXIF orientation, as phones write) gets
    an upright copy without the tag in every format, as labelling tools auto-orient: boxes are in
    upright pixels, and readers that ignore the tag (PIL, torchvision's VOCDetection) then agree.
    A photo is decoded once and its copies of the same bytes are hard links of one file; photos
    are placed in parallel (`map_threads`).
    Photos already in place as this run would place them are kept; others (a resumed run's sideways
    links of an earlier version, copies where this run links) are replaced."""
    out = Path(out)
    map_threads(lambda photo: _place_photo(out, *photo, formats, val_fraction, copy), photos, at_most=PLACING_THREADS)


def _place_photo(out: Path, name: str, path, must_copy: bool, formats, val_fraction: float, copy: bool) -> None:
    """`place_photos` for one photo: each file written once, then hard-linked to targets of the same bytes."""
    stem, suffix = flat_stem(name), PurePosixPath(name).suffix.lower()
    rotated = _stored_on_its_side(path)
    targets = []
    if "coco" in formats:
        targets.append((out / "images" / name, rotated))
    if "yolo" in formats:
        targets.append((out / "yolo" / "images" / split_of(name, val_fraction) / f"{stem}{suffix}", rotated))
    if "voc" in formats:
        targets.append((out / "voc" / VOC_DEVKIT / "JPEGImages" / f"{stem}.jpg",
                        rotated or suffix not in (".jpg", ".jpeg")))
    written, image = {}, None  # image format written (None: the photo's own bytes) -> the target holding it
    for target, convert in targets:
        link = not (convert or copy or must_copy)
        if _in_place(target, path, link, convert):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)  # a killed run's link: never written through
        image_format = Image.registered_extensions().get(target.suffix.lower(), "PNG") if convert else None
        if link:
            os.symlink(os.path.abspath(path), partial)
        elif image_format in written:
            hard_link_or_copy(written[image_format], partial)
        elif convert:  # upright pixels, no EXIF: the format the target's suffix names
            if image is None:
                image = Image.fromarray(load_image(path))
            image.save(partial, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
        else:
            shutil.copyfile(path, partial)
        os.replace(partial, target)
        if not link:
            written[image_format] = target


def _in_place(target: Path, path, link: bool, convert: bool) -> bool:
    """Whether `target`, placed by an earlier run, is what this one would place: a link to the photo,
    or a copy (upright where it was converted)."""
    if target.is_symlink():
        return link and os.readlink(target) == os.path.abspath(path)
    return target.is_file() and not link and not (convert and _stored_on_its_side(target))


def _stored_on_its_side(path) -> bool:
    """Whether the photo's EXIF orientation turns or mirrors it (anything but 1): its stored pixels
    are not the upright ones the boxes are in."""
    try:
        with Image.open(path) as image:
            return image.getexif().get(0x0112, 1) not in (0, 1)
    except (OSError, ValueError):
        return False


def read_yolo(folder) -> dict[str, list[tuple[int, tuple[float, float, float, float]]]]:
    """{flat stem: [(class id, (cx, cy, w, h))]} of a `yolo/` folder's labels, both splits."""
    found = {}
    for path in sorted((Path(folder) / "labels").glob("*/*.txt")):
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        found[path.stem] = [(int(row[0]), tuple(float(v) for v in row[1:5])) for row in rows]
    return found


def read_voc(folder) -> dict[str, dict]:
    """{flat stem: {"width", "height", "objects": [(name, (x0, y0, x1, y1))]}} of a `voc/` folder,
    boxes back in pixel edges (the inverse of `write_voc`)."""
    found = {}
    for path in sorted((Path(folder) / VOC_DEVKIT / "Annotations").glob("*.xml")):
        tree = ET.parse(path).getroot()
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (int(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name"), (xmin - 1, ymin - 1, xmax, ymax)))
        found[path.stem] = {"width": int(tree.findtext("size/width")), "height": int(tree.findtext("size/height")),
                            "objects": objects}
    return found


def _child(parent: ET.Element, tag: str, text=None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


class _atomic_file:
    """Open a temporary file beside `path` for writing text; on success it replaces `path` in one rename."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        fd, self.temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        os.chmod(fd, 0o644)  # mkstemp's 0600 would make the result private
        self.handle = os.fdopen(fd, "w")
        return self.handle

    def __exit__(self, kind, value, traceback):
        self.handle.close()
        if kind is None:
            os.replace(self.temp, self.path)
        else:
            os.unlink(self.temp)


class _atomic_folder:
    """A temporary folder beside `folder` to fill; on success it takes `folder`'s place (the old one
    is moved aside first and then deleted), on failure it is deleted."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def __enter__(self) -> Path:
        self.temp = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=f".{self.folder.name}."))
        self.temp.chmod(0o755)  # mkdtemp's 0700 would make the result private
        return self.temp

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            return
        old = None
        if self.folder.exists():
            old = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=f".{self.folder.name}.old."))
            os.replace(self.folder, old / "previous")
        os.replace(self.temp, self.folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
