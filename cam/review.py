"""Which photos a person should review first: the ones whose boxes are most in doubt, spread over
the classes (`cam label` writes the order as review.txt; the Review tab shows photos in it).

A photo is in doubt where a box of its top class lies mostly inside another box of that class
(the part-boxing of weakly supervised detectors that BiB, Vo et al. ECCV 2022, picks its few
boxed images by), and where the classifier hesitates between its two best classes (a thin margin).
"""

from __future__ import annotations

from .boxes import covered

INSIDE = 0.8  # a box is "inside" another when this share of its area lies in it


def doubt(record: dict) -> float:
    """How much a photo's boxes are in doubt, from its record (`Result.to_dict()`, a line of
    predictions.jsonl): 1 for a box inside another of the top class, plus one minus the margin
    between the two best class probabilities. A photo with no prediction is most in doubt (2)."""
    predictions = record.get("predictions") or []
    if not predictions:
        return 2.0
    scores = sorted((p["score"] for p in predictions), reverse=True) + [0.0]
    boxes = predictions[0]["boxes"]
    nested = any(covered(a, b) >= INSIDE for i, a in enumerate(boxes) for j, b in enumerate(boxes) if i != j)
    return float(nested) + 1.0 - (scores[0] - scores[1])


def review_order(records) -> list[str]:
    """The photos' names (`record["file"]`, as in coco.json), each once, most in doubt first and
    spread over the classes: the most doubtful photo of each class in turn (classes by their top
    label, in order of their most doubtful photo), then each class's second, and so on. Ties keep
    the given order. `records` may be a generator: only a name and a number per photo are held."""
    by_class: dict[str, list[tuple[float, int, str]]] = {}
    for position, record in enumerate(records):
        predictions = record.get("predictions") or []
        top = predictions[0]["label"] if predictions else ""
        by_class.setdefault(top, []).append((-doubt(record), position, record["file"]))
    queues = sorted((sorted(members) for members in by_class.values()), key=lambda q: q[0][:2])
    order = []
    for rank in range(max((len(q) for q in queues), default=0)):
        order += [q[rank][2] for q in queues if rank < len(q)]
    return order
