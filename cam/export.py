"""Detection annotations from a labelling run's log: COCO, YOLO and Pascal VOC writers, and readers
of the YOLO and VOC files back to boxes (for checks and tests; pycocotools reads COCO).

The log is `predictions.jsonl`: one JSON object a photo, `{"file": relative path, "width",
"height", "predictions": [{"class_index", "label", "score", "boxes": [[x0, y0, x1, y1], ...]}]}`,
boxes in pixel edges (`cam.boxes`). Each writer streams the log, so memory stays flat in the
number of photos, and replaces its output in one rename, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import yaml

FORMATS = ("coco", "yolo", "voc")


def read_log(path):
    """The records of a jsonl log, one at a time (a missing log has none)."""
    path = Path(path)
    if not path.is_file():
        return
    with path.open() as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def coco_category_id(class_index: int) -> int:
    """COCO ids start at 1 (many detection trainers keep 0 for the background): class index + 1."""
    return class_index + 1


def _annotations(record: dict):
    """(category id, [x, y, w, h], score) for every box of a photo's record."""
    for p in record["predictions"]:
        for x0, y0, x1, y1 in p["boxes"]:
            yield coco_category_id(p["class_index"]), [x0, y0, x1 - x0, y1 - y0], p["score"]


def write_coco(log, class_names: list[str], path) -> None:
    """`coco.json`: images (id = position in the log, from 1), categories (every class of the model)
    and annotations whose `[x, y, w, h]` boxes carry a score, so the list also loads as a results
    file (`COCO.loadRes`). Written in two passes over the log, never holding it whole."""
    path = Path(path)
    with _atomic_file(path) as out:
        out.write('{"info": {"description": "boxes from class activation maps (cam label)"},\n"images": [')
        for image_id, record in enumerate(read_log(log), start=1):
            out.write(("," if image_id > 1 else "") + "\n" + json.dumps(
                {"id": image_id, "file_name": record["file"], "width": record["width"], "height": record["height"]}))
        out.write('],\n"categories": ' + json.dumps(
            [{"id": coco_category_id(i), "name": name} for i, name in enumerate(class_names)]))
        out.write(',\n"annotations": [')
        annotation_id = 0
        for image_id, record in enumerate(read_log(log), start=1):
            for category_id, bbox, score in _annotations(record):
                annotation_id += 1
                out.write(("," if annotation_id > 1 else "") + "\n" + json.dumps(
                    {"id": annotation_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
                     "area": bbox[2] * bbox[3], "score": score, "iscrowd": 0}))
        out.write("]}\n")


def write_yolo(log, class_names: list[str], folder) -> None:
    """`yolo/`: `classes.txt` (one name a line, line number = class id), `data.yaml` naming them, and
    `labels/<relative path>.txt` per photo with `class cx cy w h` in [0, 1] (empty: no box)."""
    with _atomic_folder(folder) as root:
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in class_names))
        (root / "data.yaml").write_text(yaml.safe_dump(
            {"nc": len(class_names), "names": dict(enumerate(class_names))}, allow_unicode=True, sort_keys=False))
        for record in read_log(log):
            width, height = record["width"], record["height"]
            lines = [f"{p['class_index']} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}\n"
                     for p in record["predictions"] for x0, y0, x1, y1 in p["boxes"]]
            target = root / "labels" / _with_suffix(record["file"], ".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(lines))


def write_voc(log, folder) -> None:
    """`voc/<relative path>.xml`: one Pascal VOC annotation per photo. VOC counts pixels from 1 and
    its corners are inclusive: a box over columns x0..x1-1 is xmin = x0 + 1, xmax = x1."""
    with _atomic_folder(folder) as root:
        for record in read_log(log):
            annotation = ET.Element("annotation")
            name = PurePosixPath(record["file"])
            _child(annotation, "folder", str(name.parent) if str(name.parent) != "." else "")
            _child(annotation, "filename", name.name)
            size = _child(annotation, "size")
            for tag, value in (("width", record["width"]), ("height", record["height"]), ("depth", 3)):
                _child(size, tag, value)
            _child(annotation, "segmented", 0)
            for p in record["predictions"]:
                for x0, y0, x1, y1 in p["boxes"]:
                    obj = _child(annotation, "object")
                    for tag, value in (("name", p["label"]), ("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
                        _child(obj, tag, value)
                    box = _child(obj, "bndbox")
                    for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                        _child(box, tag, value)
            ET.indent(annotation)
            target = root / _with_suffix(record["file"], ".xml")
            target.parent.mkdir(parents=True, exist_ok=True)
            ET.ElementTree(annotation).write(target, encoding="unicode")


def read_yolo(folder) -> dict[str, list[tuple[int, tuple[float, float, float, float]]]]:
    """{label file relative to labels/, without .txt: [(class id, (cx, cy, w, h))]} of a `yolo/` folder."""
    labels = Path(folder) / "labels"
    found = {}
    for path in sorted(labels.rglob("*.txt")):
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        found[path.relative_to(labels).with_suffix("").as_posix()] = [
            (int(row[0]), tuple(float(v) for v in row[1:5])) for row in rows]
    return found


def read_voc(folder) -> dict[str, dict]:
    """{annotation relative to voc/, without .xml: {"width", "height", "objects": [(name, (x0, y0, x1, y1))]}}
    with boxes back in pixel edges (the inverse of `write_voc`)."""
    root = Path(folder)
    found = {}
    for path in sorted(root.rglob("*.xml")):
        tree = ET.parse(path).getroot()
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (int(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name"), (xmin - 1, ymin - 1, xmax, ymax)))
        found[path.relative_to(root).with_suffix("").as_posix()] = {
            "width": int(tree.findtext("size/width")), "height": int(tree.findtext("size/height")), "objects": objects}
    return found


def label_stem(name: str) -> str:
    """What a photo's YOLO and VOC files are named after: its relative path without its suffix."""
    return PurePosixPath(name).with_suffix("").as_posix()


def _with_suffix(name: str, suffix: str) -> Path:
    return Path(*PurePosixPath(label_stem(name) + suffix).parts)


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
