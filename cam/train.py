"""Fine-tune a classifier on a folder-per-class dataset (zip or folder) and save a checkpoint that
`cam.load_model` reads back: then `localize` names and boxes the user's own classes."""

from __future__ import annotations

import random
import shutil
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import save_checkpoint
from .data import dataset_root, private_temp_folder, read_photos, remove_orphaned_temp_folders, scan_dataset, unpack_zip
from .loading import load_model
from .localize import box_source
from .methods import forward_features
from .models import CamModel, check_device
from .preprocess import check_input_size, inference_batch_size, preprocess
from .train_detector import DETECTOR_EPOCHS, read_coco_boxes, train_detector

DEFAULT_EPOCHS = {"head": 30, "full": 5}
DEFAULT_LR = {"head": 1e-2, "full": 1e-3}
# The side images are seen at in training (None: the model's own): 288 px, the size the app localizes
# at, in both modes (README, "Fine-tuning"); mode full starts from the classifier mode head trains,
# so it moves off mode head's result only where an epoch beats it on validation.
DEFAULT_INPUT_SIZE = {"head": 288, "full": 288}
TRANSFER_CLASSES = 5  # pretrained classes each new class starts from (`_transfer_init`)
CV_FOLDS = 5  # folds of the training photos that choose the classifier's start (`_choose_start`)


class TrainingCancelled(Exception):
    """Raised when the caller's cancel event is set; no checkpoint is written."""


def stratified_split(labels: list[int], val_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, validation): each class contributes `val_split` of its images (at least one)
    to validation, chosen by a seeded shuffle, so the split is reproducible."""
    if not 0 < val_split < 1:
        raise ValueError(f"val_split must be between 0 and 1, got {val_split}")
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        n_val = min(max(1, round(val_split * len(members))), len(members) - 1)
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def stratified_folds(labels: list[int], folds: int, seed: int) -> list[list[int]]:
    """`folds` disjoint lists of indices that together hold every image once, each class dealt
    round-robin from a seeded shuffle, so that every fold holds its share of each class (within
    one image): repeated k-fold cross-validation, one fold held out at a time."""
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= len(labels):
        raise ValueError(f"folds must be an integer between 2 and the number of images, got {folds!r}")
    rng, dealt, start = random.Random(seed), [[] for _ in range(folds)], 0
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(members)
        for j, index in enumerate(members):
            dealt[(start + j) % folds].append(index)
        start = (start + len(members)) % folds  # the next class starts where this one stopped: sizes stay even
    return [sorted(fold) for fold in dealt]


@dataclass(frozen=True)
class Recipe:
    """How a checkpoint is trained: one frozen object that `train`, the CLI and the app fill in, and
    that the checkpoint records (`resolved`). `epochs`, `lr`, `input_size` and `detector_epochs` left
    None take the mode's defaults (`DEFAULT_EPOCHS`, `DEFAULT_LR`, `DEFAULT_INPUT_SIZE`,
    `DETECTOR_EPOCHS`) when it runs; each field is checked on creation."""

    model: str = "default"  # the spec training starts from (`cam.load_model`)
    mode: str = "head"  # head: the classifier on frozen features; full: the whole network
    epochs: int | None = None
    lr: float | None = None
    val_split: float = 0.2  # each class's share held out to validate
    seed: int = 0  # the split, the folds and the shuffles
    batch_size: int = 32
    pretrained: bool = True  # timm/torchvision names: hub weights (a network) or random ones
    input_size: int | None = None  # square side images are trained at, and the checkpoint's own
    detector: bool = False  # then train a detector on the classifier's boxes of its own photos (`cam.train_detector`)
    detector_epochs: int | None = None  # None: DETECTOR_EPOCHS
    reviewed_boxes: str | None = None  # a COCO file of reviewed boxes: its photos learn from them (implies detector)
    reviewed_only: bool = False  # the detector learns from the reviewed photos alone (else the teacher's for the rest)

    def __post_init__(self):
        if self.mode not in DEFAULT_EPOCHS:
            raise ValueError(f"mode must be 'head' or 'full', got {self.mode!r}")
        for name, low, high in (("epochs", 1, 1000), ("detector_epochs", 1, 1000), ("batch_size", 1, 100_000),
                                ("seed", -2**63, 2**63 - 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not low <= value <= high):
                raise ValueError(f"{name} must be an integer between {low} and {high}, got {value!r}")
        if self.lr is not None and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))
                                    or not 0 < self.lr < 1):
            raise ValueError(f"lr must be between 0 and 1, got {self.lr!r}")
        if isinstance(self.val_split, bool) or not isinstance(self.val_split, (int, float)) \
                or not 0 < self.val_split < 1:
            raise ValueError(f"val_split must be between 0 and 1, got {self.val_split!r}")
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "pretrained", bool(self.pretrained))
        object.__setattr__(self, "reviewed_only", bool(self.reviewed_only))
        if self.reviewed_only and self.reviewed_boxes is None:
            raise ValueError("--reviewed-only (reviewed_only) needs --boxes-from (reviewed_boxes), a COCO file of "
                             "reviewed boxes")
        object.__setattr__(self, "detector", bool(self.detector) or self.reviewed_boxes is not None)
        if self.reviewed_boxes is not None:
            object.__setattr__(self, "reviewed_boxes", str(self.reviewed_boxes))

    def resolved(self) -> "Recipe":
        """The recipe with the mode's defaults in the fields left None: what a checkpoint records."""
        return replace(self, epochs=DEFAULT_EPOCHS[self.mode] if self.epochs is None else self.epochs,
                       lr=float(DEFAULT_LR[self.mode] if self.lr is None else self.lr),
                       input_size=DEFAULT_INPUT_SIZE[self.mode] if self.input_size is None else self.input_size,
                       detector_epochs=DETECTOR_EPOCHS if self.detector_epochs is None else self.detector_epochs)

    def to_dict(self) -> dict:
        """The fields, JSON-ready; the reviewed boxes' file by its name only (a checkpoint travels)."""
        return {**asdict(self), "reviewed_boxes": None if self.reviewed_boxes is None else Path(self.reviewed_boxes).name}


@dataclass
class _Run:
    """What the training steps share: the model being trained, the pretrained classifier it started
    from (`source`), the photos and their labels, the split, the input size and the recipe."""

    model: CamModel
    source: tuple[torch.Tensor, torch.Tensor]
    arrays: list
    labels: list[int]
    train_idx: list[int]
    val_idx: list[int]
    size: tuple[int, int]
    recipe: Recipe
    report: object
    cancel: threading.Event | None


def train(data, recipe: Recipe | None = None, *, out="checkpoints", device: str | None = None, progress=None,
          cancel: threading.Event | None = None, **options) -> dict:
    """Fine-tune a classifier on `data` (a .zip or a folder of class folders); return the summary.

    `recipe` (default `Recipe()`; a model spec string stands for `Recipe(model=...)`) says how;
    keyword `options` (its field names, and `model_spec` for `model`) replace its fields. mode
    'head': the backbone is frozen, its pooled features computed once and a new linear classifier
    trained on them (seconds on a CPU), its start and epochs (up to `epochs`) chosen by
    cross-validation on the training photos (`_choose_start`). mode 'full':
    the whole network is trained with augmentation from the classifier mode head trains, the
    backbone at a tenth of the learning rate, and the best validation epoch is kept. The result is
    written atomically to `out/experiment_YYYY-MM-DD_HH_MM[_N]`, the recipe recorded. Images are
    seen at the recipe's `input_size`, which becomes the checkpoint's own input size.
    `progress(dict)` receives stage, epoch, step, loss and accuracy; setting `cancel` stops the run
    without a checkpoint. With a detector, the summary also names the `boxes` auto gives and the
    reviewed photos' `reviewed_ap50` (`cam.train_detector.train_detector`). Torch's global RNG is
    never seeded here; only what takes no generator draws from it: random weights (`pretrained=False`) and mode full's dropout (`python -m cam
    train` seeds it with `--seed`); the detector's initial weights come from the recipe's seed.
    """
    if isinstance(recipe, (str, Path)):  # train(data, "timm:resnet18"), as before the recipe
        recipe, options = None, {"model": str(recipe), **options}
    if "model_spec" in options:
        options["model"] = options.pop("model_spec")
    recipe = replace(recipe or Recipe(), **options).resolved()
    check_device(device)
    started = time.perf_counter()
    report = progress or (lambda _info: None)
    remove_orphaned_temp_folders("cam-train-")
    scratch = private_temp_folder("cam-train-")
    try:
        folder, skipped = Path(data), 0
        if folder.is_file():
            report({"stage": "unpacking"})
            skipped = unpack_zip(folder, scratch / "data")
            folder = scratch / "data"
        class_names, items, skipped_scan = scan_dataset(folder)
        skipped += skipped_scan
        root = dataset_root(folder)  # named as reviewed boxes name them: below the class folders' parent
        names = [path.relative_to(root).as_posix() for path, _ in items]
        reviewed = read_coco_boxes(recipe.reviewed_boxes, names, class_names) if recipe.reviewed_boxes else None
        # its weights change: PyTorch, whatever the runtime
        model = load_model(recipe.model, pretrained=recipe.pretrained, device=device, runtime="torch")
        model.detector, model.auto_boxes = None, None  # a checkpoint's detector learned from its own classifier
        size = check_input_size(recipe.input_size, model)
        if model.classifier_layer is None:
            why = "CAM is not exact for its head" if not model.cam_exact else "it has no linear classifier to retrain"
            raise ValueError(f"fine-tuning keeps CAM exact, so it needs a model with global average pooling and one "
                             f"linear classifier; {why} in {recipe.model!r}: pick e.g. 'default' or 'timm:resnet18'")
        if recipe.detector and model.guide_layer is None:
            raise ValueError(f"the detector is built on the feature map one stride finer than the classifier's, and "
                             f"{recipe.model!r} has none: pick e.g. 'default' or 'timm:resnet18'")
        report({"stage": "loading images", "images": len(items)})
        photos = read_photos([path for path, _ in items], cover=max(size))
        labels = [label for _, label in items]
        train_idx, val_idx = stratified_split(labels, recipe.val_split, recipe.seed)
        run = _Run(model, _replace_classifier(model, len(class_names)), [photo.pixels for photo in photos], labels,
                   train_idx, val_idx, size, recipe, report, cancel)
        best = (_train_head if recipe.mode == "head" else _train_full)(run)
        model.net.load_state_dict(best["state"])
        model.class_names = class_names
        model.input_size = size  # its own size from now on: the one its classifier learned at
        detector_metrics = train_detector(model, run.arrays, labels, names, size, recipe.detector_epochs, recipe.seed,
                                          reviewed, recipe.reviewed_only, report,
                                          lambda: _check_cancel(cancel)) if recipe.detector else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metrics = _metrics(best["predictions"], [labels[i] for i in val_idx], class_names)
    if detector_metrics is not None:
        metrics["detector"] = detector_metrics
    metrics.update(best_epoch=best["epoch"], start=best["start"], cv_accuracy=best["cv_accuracy"],
                   train_images=len(train_idx), val_images=len(val_idx), skipped_files=skipped,
                   seconds=round(time.perf_counter() - started, 2))
    checkpoint = save_checkpoint(model, out, metrics, {"base_spec": recipe.model, "mode": recipe.mode,
                                                       "epochs": recipe.epochs, "lr": recipe.lr,
                                                       "train_input_size": list(size), "val_split": recipe.val_split,
                                                       "seed": recipe.seed, "recipe": recipe.to_dict()})
    summary = {"checkpoint": str(checkpoint), "val_accuracy": metrics["val_accuracy"], "metrics": metrics}
    if detector_metrics is not None:  # what auto gives, and why
        summary.update(boxes=box_source(model, "auto"), reviewed_ap50=detector_metrics.get("reviewed_ap50"))
    return summary


def _replace_classifier(model: CamModel, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap the classifier for a new zero-initialised linear layer with `num_classes` outputs;
    return the old one's (weight, bias), which `_transfer_init` starts the new one from."""
    source = tuple(t.clone() for t in model.classifier_params())
    parent_name, _, attr = model.classifier_layer.rpartition(".")
    parent = model.net.get_submodule(parent_name) if parent_name else model.net
    old = getattr(parent, attr)
    new = nn.utils.skip_init(nn.Linear, old.in_features, num_classes, device=old.weight.device)  # no RNG draw
    nn.init.zeros_(new.weight)
    nn.init.zeros_(new.bias)
    setattr(parent, attr, new)
    return source


def _classifier(model: CamModel) -> nn.Linear:
    return model.net.get_submodule(model.classifier_layer)


def _check_cancel(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise TrainingCancelled("training was cancelled")


def _inference_batches(model: CamModel, arrays, indices, size):
    """The images `indices`, preprocessed, in batches of `inference_batch_size`."""
    step = inference_batch_size(model, size)
    for start in range(0, len(indices), step):
        yield preprocess(model, [arrays[i] for i in indices[start:start + step]], size)


def _pooled_features(model: CamModel, arrays, indices, size, mirrored: bool = False) -> torch.Tensor:
    """The pooled features the classifier sees, of the images `indices` (or of their mirror images)."""
    chunks = [forward_features(model, batch.flip(-1) if mirrored else batch)[1].mean((2, 3))
              for batch in _inference_batches(model, arrays, indices, size)]
    return torch.cat(chunks).clone()  # a normal tensor: inference-mode tensors cannot enter autograd


def _prototype_init(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> None:
    """Start the classifier at the class prototypes: each row the unit direction of its class's
    mean pooled feature (centred on the mean of all), the bias cancelling the centre: a
    nearest-mean classifier, which generalises from a few dozen photos per class."""
    centre = features.mean(0)
    means = torch.stack([features[labels == c].mean(0) for c in range(head.out_features)]) - centre
    weight = nn.functional.normalize(means, dim=1) * (10 / features.norm(dim=1).mean().clamp_min(1e-6))
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(-(weight @ centre))


def _transfer_init(head: nn.Linear, source: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor,
                   labels: torch.Tensor) -> None:
    """Start each new class at the pretrained classifier's rows (`source`: weight, bias) of the
    `TRANSFER_CLASSES` classes its training photos score highest on average, weighted by those mean
    probabilities: ants start near ImageNet's "ant". Co-Tuning (You et al., NeurIPS 2020) relates
    source and target classes by the same mean probabilities."""
    weight, bias = (t.to(features.device, torch.float32) for t in source)
    probabilities = (features @ weight.T + bias).softmax(1)
    relation = torch.stack([probabilities[labels == c].mean(0) for c in range(head.out_features)])
    top = relation.topk(min(TRANSFER_CLASSES, relation.shape[1]), dim=1)
    mixture = torch.zeros_like(relation).scatter_(1, top.indices, top.values)
    mixture /= mixture.sum(1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        head.weight.copy_(mixture @ weight)
        head.bias.copy_(mixture @ bias)


def _starts(source) -> dict:
    """The classifier's possible starts, each `start(head, features, labels)`: the class prototypes
    and the pretrained classes (`_transfer_init`). Both keep one linear layer, so CAM stays exact."""
    return {"prototypes": _prototype_init,
            "pretrained classes": lambda head, features, labels: _transfer_init(head, source, features, labels)}


def _fit_head(head: nn.Linear, start, features, mirrored, labels, epochs, lr, batch_size, cancel,
              after_epoch=None) -> None:
    """Set `head` by `start`, then train it for `epochs` on `features` and their `mirrored` twins
    (AdamW, seeded order); `after_epoch(epoch, loss, accuracy)` follows the start (epoch 0, no loss)
    and each epoch."""
    start(head, features, labels)
    head.eval()
    if after_epoch is not None:
        after_epoch(0, None, None)
    x, y = torch.cat([features, mirrored]), torch.cat([labels, labels])
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(x), generator=generator)
        total, correct, loss_sum = 0, 0, 0.0
        for begin in range(0, len(order), batch_size):
            _check_cancel(cancel)
            pick = order[begin:begin + batch_size].to(x.device)
            logits = head(x[pick])
            loss = nn.functional.cross_entropy(logits, y[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += len(pick)
            correct += int((logits.argmax(1) == y[pick]).sum())
            loss_sum += float(loss.detach()) * len(pick)
        head.eval()
        if after_epoch is not None:
            after_epoch(epoch, loss_sum / total, correct / total)


def _choose_start(starts: dict, features, mirrored, labels, epochs, lr, batch_size, cancel, seed) -> dict:
    """The start and number of epochs (0 to `epochs`) whose heads classify the training photos best
    when each of k stratified folds (k = `CV_FOLDS`, or the smallest class's photo count) is held
    out from a head trained on the others: highest accuracy, then lowest loss. The validation
    photos choose nothing, so their accuracy is an honest estimate. With a class of one photo the
    prototypes are trained for `epochs`."""
    k = min(CV_FOLDS, int(torch.bincount(labels).min()))
    if k < 2:
        return {"start": "prototypes", "epochs": epochs, "cv_accuracy": None}
    folds = stratified_folds(labels.tolist(), k, seed)
    scores = {}  # (start, epoch) -> [correct, summed loss]
    for name, start in starts.items():
        for fold in folds:
            held = torch.tensor(fold, device=labels.device)
            kept = torch.tensor(sorted(set(range(len(labels))) - set(fold)), device=labels.device)
            head = nn.utils.skip_init(nn.Linear, features.shape[1], int(labels.max()) + 1, device=features.device)

            def score(epoch, *_):
                with torch.no_grad():
                    logits = head(features[held])
                    tally = scores.setdefault((name, epoch), [0, 0.0])
                    tally[0] += int((logits.argmax(1) == labels[held]).sum())
                    tally[1] += float(nn.functional.cross_entropy(logits, labels[held], reduction="sum"))

            _fit_head(head, start, features[kept], mirrored[kept], labels[kept], epochs, lr, batch_size, cancel, score)
    (name, epoch), (correct, _) = max(scores.items(), key=lambda item: (item[1][0], -item[1][1], -item[0][1]))
    return {"start": name, "epochs": epoch, "cv_accuracy": correct / len(labels)}


def _fit_classifier(run: _Run, epochs: int, lr: float, after_epoch=None) -> dict:
    """Mode head's classifier, in place: pooled features of the training photos and their mirror
    images, then the start and epochs `_choose_start` picks (up to `epochs`, at `lr`); returns that
    choice. `after_epoch(chosen, epoch, loss, accuracy)` follows each training epoch."""
    model, recipe = run.model, run.recipe
    x_train = _pooled_features(model, run.arrays, run.train_idx, run.size)
    x_mirrored = _pooled_features(model, run.arrays, run.train_idx, run.size, mirrored=True)
    y_train = torch.tensor([run.labels[i] for i in run.train_idx], device=x_train.device)
    run.report({"stage": "choosing the start"})
    starts = _starts(run.source)
    chosen = _choose_start(starts, x_train, x_mirrored, y_train, epochs, lr, recipe.batch_size, run.cancel,
                           recipe.seed)

    def each_epoch(epoch, loss, accuracy):
        if epoch and after_epoch is not None:
            after_epoch(chosen, epoch, loss, accuracy)

    _fit_head(_classifier(model), starts[chosen["start"]], x_train, x_mirrored, y_train, chosen["epochs"], lr,
              recipe.batch_size, run.cancel, each_epoch)
    return chosen


def _train_head(run: _Run) -> dict:
    """Backbone frozen: only the linear classifier learns (`_fit_classifier`); the validation
    photos report each epoch and choose nothing (README, "Fine-tuning")."""
    model = run.model
    head = _classifier(model)
    run.report({"stage": "features", "images": len(run.arrays)})
    x_val = _pooled_features(model, run.arrays, run.val_idx, run.size)
    y_val = torch.tensor([run.labels[i] for i in run.val_idx], device=x_val.device)

    def after_epoch(chosen, epoch, loss, accuracy):
        with torch.no_grad():
            val_accuracy = float((head(x_val).argmax(1) == y_val).float().mean())
        run.report({"stage": "train", "epoch": epoch, "epochs": chosen["epochs"], "loss": loss,
                    "train_accuracy": accuracy, "val_accuracy": val_accuracy})

    chosen = _fit_classifier(run, run.recipe.epochs, run.recipe.lr, after_epoch)
    with torch.no_grad():
        predictions = head(x_val).argmax(1).tolist()
    return {**chosen, "epoch": chosen["epochs"], "predictions": predictions,
            "state": {k: v.detach().clone() for k, v in model.net.state_dict().items()}}


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (60-100% of the side), horizontal flip and brightness, per image."""
    _, _, h, w = batch.shape
    out = torch.empty_like(batch)
    for i in range(batch.shape[0]):
        scale = 0.6 + 0.4 * float(torch.rand(1, generator=generator))
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        y = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        x = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = batch[i:i + 1, :, y:y + ch, x:x + cw]
        crop = nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
        if float(torch.rand(1, generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0] * (0.8 + 0.4 * float(torch.rand(1, generator=generator)))
    return out


def _train_full(run: _Run) -> dict:
    """The whole network learns, from the classifier mode head would train (`_fit_classifier`),
    the classifier at `lr`, the backbone at lr / 10; the best validation epoch is kept, the start
    (epoch 0) included."""
    model, recipe, size = run.model, run.recipe, run.size
    run.report({"stage": "features", "images": len(run.train_idx)})
    chosen = _fit_classifier(run, DEFAULT_EPOCHS["head"], DEFAULT_LR["head"])
    head = _classifier(model)
    head_ids = {id(p) for p in head.parameters()}
    backbone = [p for p in model.net.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW([{"params": backbone, "lr": recipe.lr / 10},
                                   {"params": head.parameters(), "lr": recipe.lr}], weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)
    y_all = torch.tensor(run.labels)
    best = _validate(run, None, 0)
    batch_size, epochs = recipe.batch_size, recipe.epochs
    steps = (len(run.train_idx) + batch_size - 1) // batch_size
    for epoch in range(1, epochs + 1):
        model.net.train()
        order = [run.train_idx[i] for i in torch.randperm(len(run.train_idx), generator=generator).tolist()]
        total, correct, loss_sum = 0, 0, 0.0
        for step, start in enumerate(range(0, len(order), batch_size), start=1):
            _check_cancel(run.cancel)
            pick = order[start:start + batch_size]
            x = _augment(preprocess(model, [run.arrays[i] for i in pick], size), generator)
            y = y_all[pick].to(x.device)
            logits = model.net(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += len(pick)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(pick)
            run.report({"stage": "train", "epoch": epoch, "epochs": epochs, "step": step, "steps": steps,
                        "loss": loss_sum / total, "train_accuracy": correct / total})
        best = _validate(run, best, epoch)
        run.report({"stage": "validate", "epoch": epoch, "epochs": epochs, "loss": loss_sum / total,
                    "train_accuracy": correct / total, "val_accuracy": best["last_accuracy"]})
    return {**best, "start": chosen["start"], "cv_accuracy": chosen["cv_accuracy"]}


def _validate(run: _Run, best, epoch) -> dict:
    """`_keep_best` of the whole network's logits on the validation photos."""
    model = run.model
    model.net.eval()
    with torch.no_grad():
        val_logits = torch.cat([model.net(batch)
                                for batch in _inference_batches(model, run.arrays, run.val_idx, run.size)])
    return _keep_best(model, best, epoch, val_logits, [run.labels[i] for i in run.val_idx])


def _keep_best(model, best, epoch, val_logits: torch.Tensor, truths: list[int]) -> dict:
    """Keep the weights of the best epoch so far: highest validation accuracy, then lowest
    validation loss (small validation sets often tie on accuracy)."""
    target = torch.tensor(truths, device=val_logits.device)
    predictions = val_logits.argmax(1).tolist()
    accuracy = float(np.mean([p == t for p, t in zip(predictions, truths)]))
    loss = float(nn.functional.cross_entropy(val_logits.float(), target))
    if best is None or (accuracy, -loss) > (best["accuracy"], -best["loss"]):
        best = {"accuracy": accuracy, "loss": loss, "epoch": epoch, "predictions": predictions,
                "state": {k: v.detach().clone() for k, v in model.net.state_dict().items()}}
    best["last_accuracy"] = accuracy
    return best


def _metrics(predictions: list[int], truths: list[int], class_names: list[str]) -> dict:
    n = len(class_names)
    confusion = np.zeros((n, n), dtype=int)
    for p, t in zip(predictions, truths):
        confusion[t, p] += 1
    per_class = {name: float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None
                 for i, name in enumerate(class_names)}
    return {"val_accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
            "per_class_accuracy": per_class, "confusion_matrix": confusion.tolist(), "class_names": class_names}
