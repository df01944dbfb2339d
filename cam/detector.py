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

import torch
from torch import nn

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
