"""Training the detector (`cam.detector.Student`) beside the classifier: the teacher's boxes
(`peak_boxes`, from the classifier's maps of each photo's class), reviewed boxes read from a COCO
file (`read_coco_boxes`), what the student learns from (`training_samples`) and its training
loop (`fit_student`); `train_detector` is the step `cam.train` runs."""

from __future__ import annotations

import copy
import json
import math
import random
import re
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import numpy as np
import torch

from .detector import Student, build_student
from .evaluate import average_precision
from .localize import localize_batch
from .methods import class_maps, forward
from .preprocess import inference_batch_size, preprocess
from .settings import Settings

DETECTOR_EPOCHS = 24  # the detector's epochs over the photos and their mirror images (`fit_student`)
# The teacher's boxes (`peak_boxes`): peaks at 0.7 of the map's maximum at least 3 cells apart, the
# paper's 20 % region shared among them; the student sees 2 x 2 mosaics in 3 of 4 steps
# (docs/experiments.md, "Detection from labels alone": chosen on 3 folds of the fruit photos).
PEAK_RADIUS, PEAK_LEVEL, REGION_LEVEL, MIN_REGION_PIXELS = 3, 0.7, 0.2, 16
MOSAIC_SHARE = 0.75
# The photos the detector learns from, at most: each holds about 0.73 MB of maps while it trains
# (guide and feature maps in half precision, at full size and as mosaic tiles, and mirrored), and
# its 24 epochs take about 0.2 s a photo on 2 cores: 400 bound that to about 0.3 GB and 2 minutes
# whatever the dataset's size (benchmarks/train_memory.py).
MAX_PHOTOS = 400
# Reviewed photos: the last training on them alone (BiB's last step; docs/experiments.md), and the
# check that chooses the boxes `auto` gives, from this many reviewed photos on, in at most so many folds.
FINE_TUNE_EPOCHS, FINE_TUNE_LR = 12, 3e-4
MIN_REVIEWED_TO_CHOOSE, CHOICE_FOLDS = 5, 5


def train_detector(model, arrays: list, labels: list[int], names: list[str], size: tuple[int, int], epochs: int,
                   seed: int, reviewed: dict | None = None, reviewed_only: bool = False,
                   report: Callable[[dict], None] = lambda _info: None, check: Callable[[], None] | None = None) -> dict:
    """Set `model.detector` (a `Student`) and `model.auto_boxes`; return what it learned from and
    how its boxes measured.

    The photos (`arrays`, their `labels` and `names`; the validation split checks the classifier,
    the detector has no validation, and a quarter more photos help it: docs/experiments.md), at
    most `MAX_PHOTOS`, a seeded share of each class: those `reviewed` does not list learn from the
    teacher's boxes (the classifier's map of the photo's class) for `epochs`; then the listed
    photos alone from their reviewed boxes (`read_coco_boxes`; no box: nothing to find there), for
    `FINE_TUNE_EPOCHS` at `FINE_TUNE_LR`, as BiB (Vo et al., ECCV 2022) ends. `reviewed_only`:
    the listed photos alone, for `epochs`. With at least `MIN_REVIEWED_TO_CHOOSE` listed photos
    (and the teacher's), `choose_boxes` scores the maps', the detector's and both boxes on them,
    cross-validated, and auto takes the best."""
    started = time.perf_counter()
    listed = [i for i in range(len(arrays)) if reviewed is not None and names[i] in reviewed]
    listed = capped(listed, [labels[i] for i in listed], MAX_PHOTOS, seed)
    others = [] if reviewed_only else [i for i in range(len(arrays)) if reviewed is None or names[i] not in reviewed]
    others = capped(others, [labels[i] for i in others], MAX_PHOTOS - len(listed), seed)

    def samples(indices, with_boxes):
        report({"stage": "reviewed boxes" if with_boxes else "teacher boxes", "images": len(indices)})
        return training_samples(model, [arrays[i] for i in indices], [labels[i] for i in indices], size,
                                [reviewed[names[i]] for i in indices] if with_boxes else None, check)

    taught = samples(others, False) if others else None
    marked = samples(listed, True) if listed else None
    first = (taught or marked)[0][0]
    student = build_student({"in_channels": [first[0].shape[0], first[1].shape[0]]}, seed).to(model.device)
    if taught is None:  # reviewed only
        fit_student(student, *marked, size, epochs, seed, background=True, check=check, report=report)
    else:
        fit_student(student, *taught, size, epochs, seed, check=check, report=report)
    measured = {}
    if taught is not None and len(listed) >= MIN_REVIEWED_TO_CHOOSE:
        measured = choose_boxes(model, student, [arrays[i] for i in listed], [labels[i] for i in listed],
                                [reviewed[names[i]] for i in listed], size, seed, report, check)
    if taught is not None and marked is not None:
        student = fine_tuned(student, marked, size, seed, check, report)
    model.detector, model.auto_boxes = student, measured.get("boxes")
    learned = "reviewed" if taught is None else "teacher and reviewed" if marked is not None else "teacher"
    kept = [sample for part in (taught, marked) if part is not None for sample in part[0]]
    return {"learned_from": learned, "images": len(others) + len(listed), "reviewed_images": len(listed),
            "boxes_per_photo": round(sum(len(s[2]) for s in kept) / len(kept), 3),  # mirror images included
            **measured, "seconds": round(time.perf_counter() - started, 2)}


def fine_tuned(student: Student, samples: tuple[list, list], size: tuple[int, int], seed: int,
               check: Callable[[], None] | None = None, report: Callable[[dict], None] | None = None) -> Student:
    """A copy of `student` trained further on reviewed photos' `samples` alone (background included):
    `FINE_TUNE_EPOCHS` at `FINE_TUNE_LR`."""
    student = copy.deepcopy(student)
    return fit_student(student, *samples, size, FINE_TUNE_EPOCHS, seed, lr=FINE_TUNE_LR, background=True,
                       check=check, report=report)


def choose_boxes(model, student: Student, arrays: list, labels: list[int], boxes: list, size: tuple[int, int],
                 seed: int, report: Callable[[dict], None], check: Callable[[], None] | None = None) -> dict:
    """COCO AP50 of the maps' box (top class), the detector's boxes and both (every class) on the
    reviewed photos (`arrays`, their `boxes` as fractions), each fold of them (at most
    `CHOICE_FOLDS`, classes dealt evenly) held out from a `fine_tuned` copy of `student` trained on
    the others; the folds' boxes are pooled and scored once. Returns {"reviewed_ap50": {source:
    AP50}, "folds": k, "boxes": the best source (ties: the maps, then both)}."""
    rng = random.Random(seed)
    order = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        order += members
    k = min(CHOICE_FOLDS, len(arrays))
    folds = [sorted(order[f::k]) for f in range(k)]
    found: dict[str, list] = {"cam": [], "detector": [], "both": []}
    truths = []
    try:
        _score_folds(model, student, arrays, labels, boxes, size, seed, folds, found, truths, report, check)
    finally:
        model.detector = None  # a fold's copy is never left on the model, also on cancel
    if not any(truths):
        return {}
    ap50 = {source: round(average_precision(found[source], truths), 4) for source in found}
    best = max(("cam", "both", "detector"), key=lambda source: ap50[source])  # max keeps the first of equals
    return {"reviewed_ap50": ap50, "folds": k, "boxes": best}


def _score_folds(model, student, arrays, labels, boxes, size, seed, folds, found, truths, report, check) -> None:
    """`choose_boxes`' folds: each held out from a `fine_tuned` copy of `student` (set on `model`),
    its photos' boxes of each source appended to `found`, their reviewed boxes to `truths`."""
    classes = len(model.class_names)
    for f, held in enumerate(folds):
        report({"stage": "choosing the boxes", "fold": f + 1, "folds": len(folds)})
        rest = [i for i in range(len(arrays)) if i not in held]
        part = training_samples(model, [arrays[i] for i in rest], [labels[i] for i in rest], size,
                                [boxes[i] for i in rest], check)
        model.detector = fine_tuned(student, part, size, seed, check)
        photos = [arrays[i] for i in held]
        for source in found:
            settings = Settings(input_size=size[0], boxes=source, box_score=0.0, topk=1 if source == "cam" else classes)
            for result in localize_batch(model, photos, settings):
                found[source].append([(p.class_index, score, box) for p in result.predictions
                                      for box, score in zip(p.boxes, p.box_scores or [p.score] * len(p.boxes))])
        for i in held:
            height, width = arrays[i].shape[:2]
            truths.append([(labels[i], (x0 * width, y0 * height, x1 * width, y1 * height))
                           for x0, y0, x1, y1 in boxes[i]])


def capped(indices: list[int], labels: list[int], limit: int, seed: int) -> list[int]:
    """At most `limit` of `indices`, sorted: each class keeps its share (rounded by largest
    remainder; at least one where `limit` allows one a class), drawn by a shuffle seeded with
    `seed`; all of them where they are few enough."""
    if len(indices) <= limit:
        return indices
    rng, members = random.Random(seed), {}
    for index, label in zip(indices, labels):
        members.setdefault(label, []).append(index)
    shares = {label: limit * len(group) / len(indices) for label, group in members.items()}
    quota = {label: int(share) for label, share in shares.items()}
    if limit >= len(members):
        quota = {label: max(1, n) for label, n in quota.items()}
    for label in sorted(shares, key=lambda label: (quota[label] - shares[label], label)):
        if sum(quota.values()) >= limit:
            break
        quota[label] += 1
    while sum(quota.values()) > limit:  # the ones of the smallest classes made it too many
        quota[max(quota, key=lambda label: (quota[label], label))] -= 1
    kept = []
    for label in sorted(members):
        group = members[label]
        rng.shuffle(group)
        kept += group[:quota[label]]
    return sorted(kept)


def read_coco_boxes(path, names: list[str], class_names: list[str]) -> dict[str, list[tuple]]:
    """Reviewed boxes from a COCO file (ours from `cam label`, or one corrected in a labelling tool),
    by dataset photo name: {name: [(x0, y0, x1, y1) as fractions of the photo's width and height]}
    (`read_coco_file`, without the sizes and classes)."""
    return {name: [box[:4] for box in boxes] for name, (_, boxes) in read_coco_file(path, names, class_names).items()}


def read_coco_file(path, names: list[str], class_names: list[str]) -> dict[str, tuple[tuple, list[tuple]]]:
    """The photos a COCO file lists, by dataset photo name, in the file's order: {name: ((height,
    width) as the file gives them, [(x0, y0, x1, y1 as fractions of them, class name)])}. A photo is
    matched as `coco_photo` says. Images without a size are skipped. A file that is not COCO, has a
    bbox other than 4 finite numbers, names a class the dataset lacks, or lists photos that match
    none of the dataset's (all or some: none is dropped without a word) is refused in one line."""
    try:
        coco = json.loads(Path(path).read_text())
        images = {int(image["id"]): (str(image["file_name"]), float(image["width"]), float(image["height"]))
                  for image in coco["images"] if float(image["width"]) > 0 and float(image["height"]) > 0}
        categories = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
        annotations = [(int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]])
                       for a in coco["annotations"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable COCO file ({type(exc).__name__}: {exc})") from None
    bad = next((bbox for _, _, bbox in annotations if len(bbox) != 4 or not all(map(math.isfinite, bbox))), None)
    if bad is not None:
        raise ValueError(f"{path}: a bbox must be 4 finite numbers [x, y, width, height], not {bad}")
    unknown = sorted(set(categories.values()) - set(class_names))
    if unknown:
        raise ValueError(f"{path} has classes the dataset lacks: {', '.join(unknown)} (its classes: "
                         f"{', '.join(class_names)})")
    labels: dict[int, set[str]] = {}
    for image_id, category, _ in annotations:
        labels.setdefault(image_id, set()).update([categories[category]] if category in categories else [])
    known, by_file = set(names), {}
    for name in names:
        by_file.setdefault(PurePosixPath(name).name, []).append(name)
    matched = {image_id: coco_photo(file_name, known, by_file, labels.get(image_id, set()))
               for image_id, (file_name, _, _) in images.items()}
    missing = [file_name for image_id, (file_name, _, _) in images.items() if matched[image_id] is None]
    if missing and len(missing) < len(images):
        raise ValueError(f"{path}: {len(missing)} of its {len(images)} photos match no photo of the dataset (e.g. "
                         f"{missing[0]!r}); name each by its path below the class folders, e.g. 'apple/1.jpg'")
    found = {name: ((images[image_id][2], images[image_id][1]), []) for image_id, name in matched.items()
             if name is not None}
    for image_id, category, (x, y, w, h) in annotations:
        name = matched.get(image_id)
        if name is None or category not in categories:
            continue
        _, width, height = images[image_id]
        if w > 0 and h > 0:
            found[name][1].append((x / width, y / height, (x + w) / width, (y + h) / height, categories[category]))
    if not found:
        raise ValueError(f"{path} lists none of the dataset's photos (its file names, e.g. "
                         f"{next(iter(images.values()), ('none',))[0]!r}, match no photo in the class folders)")
    return found


def coco_photo(file_name: str, known: set[str], by_file: dict[str, list[str]], labels: set[str]) -> str | None:
    """The dataset photo (of `known`; `by_file`: them by file name) a COCO `file_name` names, or None:
    its path or a path ending in it (`dataset/apple/1.jpg`, `images\\apple\\1.jpg`, Label Studio's
    `/data/local-files/?d=apple/1.jpg`), else its file name where that is unique in the dataset or
    among the class folders of its boxes' `labels`; tried as written, then without Label Studio's
    upload prefix (`1a2b3c4d-1.jpg`)."""
    path = str(file_name).replace("\\", "/")
    path = unquote(path.partition("?d=")[2]) or path
    parts = PurePosixPath(path).parts
    if not parts:
        return None
    for last in dict.fromkeys((parts[-1], re.sub(r"^[0-9a-f]{8}-", "", parts[-1]))):
        tried = [*parts[:-1], last]
        ends = ("/".join(tried[k:]) for k in range(len(tried)))  # the path, then ever shorter endings of it
        found = next((end for end in ends if end in known), None)
        alone = by_file.get(last, [])
        if len(alone) > 1:
            alone = [name for name in alone if PurePosixPath(name).parts[0] in labels]
        if found is not None or len(alone) == 1:
            return found or alone[0]
    return None


def peak_boxes(small: np.ndarray, size: tuple[int, int]) -> list[list[float]]:
    """The teacher's boxes of one class map (h, w) at the input's `size` (h, w): one per peak, so that
    objects side by side get a box each where the largest region would join them. A peak is a
    maximum of its (2 PEAK_RADIUS + 1)-cell window at PEAK_LEVEL of the map's maximum or above; the
    region above REGION_LEVEL of the maximum (the paper's cut, on the map upsampled to `size`) is
    shared among the peaks by nearest peak, and each peak's share within its own connected part
    is boxed (at least MIN_REGION_PIXELS)."""
    import cv2

    small = np.asarray(small, np.float32)
    peak = float(small.max())
    if not peak > 0:
        return []
    values = torch.from_numpy(small)[None, None]
    window = torch.nn.functional.max_pool2d(values, 2 * PEAK_RADIUS + 1, stride=1, padding=PEAK_RADIUS)
    rows, cols = np.nonzero(((values == window) & (values >= PEAK_LEVEL * peak))[0, 0].numpy())
    kept: list[tuple[int, int]] = []  # a plateau's cells are one peak: the first of equals within a window
    for r, c in sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: -small[rc]):
        if all(max(abs(r - r2), abs(c - c2)) > PEAK_RADIUS for r2, c2 in kept):
            kept.append((r, c))
    rows, cols = np.array([r for r, _ in kept]), np.array([c for _, c in kept])
    height, width = size
    upsampled = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = upsampled >= REGION_LEVEL * upsampled.max()
    _, parts = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    ys = np.minimum(((rows + 0.5) * height / small.shape[0]).astype(int), height - 1)
    xs = np.minimum(((cols + 0.5) * width / small.shape[1]).astype(int), width - 1)
    grid_y, grid_x = np.mgrid[0:height, 0:width]
    nearest = np.argmin((grid_y[None] - ys[:, None, None]) ** 2 + (grid_x[None] - xs[:, None, None]) ** 2, axis=0)
    boxes = []
    for k, (y, x) in enumerate(zip(ys, xs)):
        share = mask & (nearest == k) & (parts == parts[y, x])
        if share.sum() >= MIN_REGION_PIXELS:
            found_rows, found_cols = np.nonzero(share)
            boxes.append([float(found_cols.min()), float(found_rows.min()), float(found_cols.max() + 1),
                          float(found_rows.max() + 1)])
    return boxes


def mosaic_side(size: tuple[int, int]) -> int:
    """The side of a mosaic's tiles: half the input's side, rounded up to a multiple of 32 (a whole
    number of feature cells)."""
    return 32 * math.ceil(max(size) / 64)


def training_samples(model, arrays: list, labels: list[int], size: tuple[int, int], boxes: list | None = None,
                     check: Callable[[], None] | None = None) -> tuple[list, list]:
    """What the student learns from, for each photo and its mirror image: (guide, features, boxes in
    input pixels) at `size`, and the same at the mosaic tiles' side (`mosaic_side`). The boxes are
    `boxes` where given (one list per photo of (x0, y0, x1, y1) as fractions of the photo's width and
    height: reviewed boxes), else the teacher's (`peak_boxes` of the refined map of the photo's
    class, from the same forward pass)."""
    height, width = size
    tile = (mosaic_side(size),) * 2
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    shrink = torch.tensor([tile[1] / width, tile[0] / height] * 2)  # input pixels to a tile's
    full, tiles = [], []
    step = inference_batch_size(model, size)
    for start in range(0, len(arrays), step):
        if check is not None:
            check()
        chunk = arrays[start:start + step]
        batch, small_batch = preprocess(model, chunk, size), preprocess(model, chunk, tile)
        classes = torch.tensor(labels[start:start + step], device=batch.device)[:, None]
        for mirrored in (False, True):
            _, features, guide, _ = forward(model, batch.flip(-1) if mirrored else batch, guide=True)
            if boxes is None:
                maps = class_maps(model, features, classes, guide)[:, 0].cpu().numpy()
                found = [torch.tensor(peak_boxes(m, size), dtype=torch.float32).reshape(-1, 4) for m in maps]
            else:
                found = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) * scale for b in boxes[start:start + step]]
                if mirrored:
                    found = [torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1) for b in found]
            full += [(g.half().cpu(), f.half().cpu(), b) for g, f, b in zip(guide, features, found)]
            _, features, guide, _ = forward(model, small_batch.flip(-1) if mirrored else small_batch, guide=True)
            tiles += [(g.half().cpu(), f.half().cpu(), b * shrink) for g, f, b in zip(guide, features, found)]
    return full, tiles


def _mosaic(tiles: list, picks: list[list[int]], tile: int):
    """Batched 2 x 2 mosaics of the tiles `picks` (four indices each): guide and feature maps side by
    side, boxes moved to their tile: images holding several objects at half size."""
    def two_by_two(maps):  # (C, h, w) maps, in reading order, as one (C, 2h, 2w) map
        return torch.cat([torch.cat(maps[:2], 2), torch.cat(maps[2:], 2)], 1)

    guides, features, boxes = [], [], []
    for four in picks:
        quarter = [tiles[i] for i in four]
        guides.append(two_by_two([q[0] for q in quarter]))
        features.append(two_by_two([q[1] for q in quarter]))
        boxes.append(torch.cat([q[2] + torch.tensor([tile * (k % 2), tile * (k // 2)] * 2)
                                for k, q in enumerate(quarter)]))
    return torch.stack(guides), torch.stack(features), boxes


def fit_student(student: Student, full: list, tiles: list, size: tuple[int, int], epochs: int, seed: int,
                batch_size: int = 16, lr: float = 1e-3, mosaic: float = MOSAIC_SHARE, background: bool = False,
                check: Callable[[], None] | None = None, report: Callable[[dict], None] | None = None) -> Student:
    """Train `student` on `training_samples` (`full` at `size`, `tiles` for mosaics): each step is, with
    probability `mosaic`, half a batch of 2 x 2 mosaics of random tiles, else the next batch of
    photos (those without a box are left out, unless `background`: reviewed photos with nothing to
    find). AdamW with a one-cycle schedule;
    the order and the mosaics come from a generator seeded with `seed`. `check()` runs before each
    step (cancellation); `report(dict)` follows each step."""
    kept = [i for i, sample in enumerate(full) if background or len(sample[2])]
    if not kept:
        raise ValueError("none of the training photos has a box to learn from (the teacher's maps gave none, or "
                         "the reviewed boxes hold none for them)")
    tile = mosaic_side(size)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = math.ceil(len(kept) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * per_epoch, pct_start=0.1)
    device = next(student.parameters()).device
    student.train()
    for epoch in range(1, epochs + 1):
        order = [kept[i] for i in torch.randperm(len(kept), generator=generator).tolist()]
        total = 0.0
        for step, start in enumerate(range(0, len(order), batch_size), start=1):
            if check is not None:
                check()
            if float(torch.rand(1, generator=generator)) < mosaic:
                picks = torch.randint(0, len(kept), (max(1, batch_size // 2), 4), generator=generator)
                guide, features, boxes = _mosaic(tiles, [[kept[i] for i in four] for four in picks.tolist()], tile)
                shape = (2 * tile, 2 * tile)
            else:
                batch = [full[i] for i in order[start:start + batch_size]]
                guide, features = torch.stack([s[0] for s in batch]), torch.stack([s[1] for s in batch])
                boxes, shape = [s[2] for s in batch], size
            loss = student.loss(guide.to(device).float(), features.to(device).float(), [b.to(device) for b in boxes],
                                shape)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            if report is not None:
                report({"stage": "detector", "epoch": epoch, "epochs": epochs, "step": step, "steps": per_epoch,
                        "loss": total / step})
    student.eval()
    return student
