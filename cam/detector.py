"""The student: a detector learned from the CAM teacher's boxes on the classifier's own frozen backbone.

The teacher boxes each training photo with the map of its folder's class (the photos' labels are
the only supervision). The student is torchvision's FCOS head on a feature pyramid built from the
two maps the CAM pass already computes (the guide map one stride finer, and the feature map
entering the pooling), so classes, maps and detections come from one forward pass. The head finds
objects without naming them; each box is named by the classifier applied to the features pooled
inside it (by CAM's identity, the box's mean class map plus the bias), and scored by objectness
times that probability (docs/experiments.md, "Detection from labels alone").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

DETECTOR_FILE = "detector.safetensors"  # beside a checkpoint's model.safetensors; its config under "detector"
# The teacher's boxes (`peak_boxes`): peaks at 0.7 of the map's maximum at least 3 cells apart, the
# paper's 20 % region shared among them; the student sees 2 x 2 mosaics in 3 of 4 steps
# (docs/experiments.md, "Detection from labels alone": chosen on 3 folds of the fruit photos).
PEAK_RADIUS, PEAK_LEVEL, REGION_LEVEL, MIN_REGION_PIXELS = 3, 0.7, 0.2, 16
MOSAIC_SHARE = 0.75
BOX_CLASS_MIN = 0.05  # a box is reported for each class at least this probable inside it
DEFAULT_CONFIG = {"width": 64, "convs": 2, "score_threshold": 0.05, "nms_threshold": 0.5, "per_image": 50}


class _Channels(nn.Module):
    """FCOS's placeholder backbone: the pyramid is built outside it, FCOS only reads `out_channels`."""

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels


class Student(nn.Module):
    """FPN (the guide and feature maps, plus P6 and P7) and an FCOS head finding one class: object.

    `config`: in_channels (guide, features), width, convs (per tower), score_threshold,
    nms_threshold, per_image (boxes kept per photo). Strides 16 to 128; anchors the stride's size.
    """

    def __init__(self, config: dict):
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.fcos import FCOS, FCOSHead
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

        super().__init__()
        self.config = {**DEFAULT_CONFIG, **config}
        width, levels = int(self.config["width"]), len(self.config["in_channels"]) + 2
        self.fpn = FeaturePyramidNetwork(list(self.config["in_channels"]), width,
                                         extra_blocks=LastLevelP6P7(width, width))
        anchors = AnchorGenerator(tuple((16 * 2 ** i,) for i in range(levels)), ((1.0,),) * levels)
        self.fcos = FCOS(_Channels(width), 1, anchor_generator=anchors,
                         head=FCOSHead(width, 1, 1, num_convs=int(self.config["convs"])),
                         score_thresh=float(self.config["score_threshold"]),
                         nms_thresh=float(self.config["nms_threshold"]),
                         detections_per_img=int(self.config["per_image"]))

    def _outputs(self, guide: torch.Tensor, features: torch.Tensor, size: tuple[int, int]):
        from torchvision.models.detection.image_list import ImageList

        levels = list(self.fpn({"guide": guide, "features": features}).values())
        outputs = self.fcos.head(levels)
        images = ImageList(guide.new_empty(len(guide), 0, *size), [tuple(size)] * len(guide))
        return outputs, self.fcos.anchor_generator(images, levels), [x.shape[2] * x.shape[3] for x in levels]

    def loss(self, guide: torch.Tensor, features: torch.Tensor, boxes: list[torch.Tensor],
             size: tuple[int, int]) -> torch.Tensor:
        """FCOS's loss (focal classification, GIoU regression, centerness) for `boxes` (one (n, 4)
        tensor per image, in input pixels of `size`)."""
        targets = [{"boxes": b.reshape(-1, 4).float(), "labels": torch.zeros(len(b), dtype=torch.int64,
                                                                             device=b.device)} for b in boxes]
        outputs, anchors, counts = self._outputs(guide, features, size)
        return sum(self.fcos.compute_loss(targets, outputs, anchors, counts).values())

    @torch.no_grad()
    def forward(self, guide: torch.Tensor, features: torch.Tensor,
                size: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(boxes (n, 4) in input pixels of `size`, objectness (n,)) per image, after NMS."""
        outputs, anchors, counts = self._outputs(guide, features, size)
        split = {k: list(v.split(counts, dim=1)) for k, v in outputs.items()}
        found = self.fcos.postprocess_detections(split, [list(a.split(counts)) for a in anchors],
                                                 [tuple(size)] * len(guide))
        return [(d["boxes"], d["scores"]) for d in found]


def build_student(config: dict, seed: int = 0) -> Student:
    """A `Student` whose initial weights follow from `seed`. `fork_rng` restores torch's global generator
    afterwards but reseeds it meanwhile: a thread drawing from it during the build gets seeded numbers,
    and its draws change the student's initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Student(config)


def box_probabilities(features: torch.Tensor, boxes: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
    """Class probabilities (n, classes) of `boxes` (n, 4, input pixels of `size`) on one image's
    feature map (C, h, w): the classifier on the features averaged inside each box (bilinear, at
    least one cell), which is the box's mean class map plus the bias."""
    from torchvision.ops import roi_align

    scale = features.shape[-1] / size[1]
    pooled = roi_align(features[None].float(), [boxes.float()], output_size=3, spatial_scale=scale,
                       aligned=True).mean((2, 3))
    return (pooled @ weight.float().T + bias.float()).softmax(1)


def detections(student: Student, guide: torch.Tensor, features: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor, size: tuple[int, int]) -> list[list[tuple[int, float, list[float]]]]:
    """Per image of the batch: (class index, score, box in input pixels) for each found box and each
    class at least `BOX_CLASS_MIN` probable inside it; score = objectness x that probability. A box
    can thus stand under two classes, each scored (a ranking of hypotheses, as detectors give);
    the exports without scores keep its best (`cam.export`)."""
    found = []
    for (boxes, objectness), image_features in zip(student(guide, features, size), features):
        if len(boxes) == 0:
            found.append([])
            continue
        probabilities = box_probabilities(image_features, boxes, weight, bias, size)
        found.append([(c, float(o * p[c]), box.tolist()) for box, o, p in zip(boxes, objectness, probabilities)
                      for c in torch.nonzero(p >= BOX_CLASS_MIN).flatten().tolist()])
    return found


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
    from .methods import class_maps, forward
    from .preprocess import inference_batch_size, preprocess

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
                batch_size: int = 16, lr: float = 1e-3, mosaic: float = MOSAIC_SHARE,
                check: Callable[[], None] | None = None, report: Callable[[dict], None] | None = None) -> Student:
    """Train `student` on `training_samples` (`full` at `size`, `tiles` for mosaics): each step is, with
    probability `mosaic`, half a batch of 2 x 2 mosaics of random tiles, else the next batch of
    photos (those the teacher found nothing in are left out). AdamW with a one-cycle schedule;
    the order and the mosaics come from a generator seeded with `seed`. `check()` runs before each
    step (cancellation); `report(dict)` follows each step."""
    kept = [i for i, sample in enumerate(full) if len(sample[2])]
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
