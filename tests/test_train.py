import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch
import pytest

import cam
import cam.train
from cam import data as cam_data
from cam.train import TrainingCancelled, stratified_split, train

from .conftest import ROOT
from .datasets import COLOURS, dataset_zip, square_image

TINY = "timm:test_resnet"


def _temp_dirs():
    return sorted(p for p in os.listdir(tempfile.gettempdir()) if p.startswith("cam-train-"))


@pytest.mark.slow
def test_head_training_writes_a_checkpoint_that_reloads_and_localizes(tmp_path):
    zip_path = dataset_zip(tmp_path / "shapes.zip", top="shapes/", extra={"__MACOSX/._x": b"x", "notes.txt": b"hi"})
    out = tmp_path / "checkpoints"
    seen = []
    summary = train(zip_path, model_spec=TINY, pretrained=False, mode="head", epochs=3, out=out, progress=seen.append)
    folder = out / os.path.basename(summary["checkpoint"])
    assert folder.name.startswith("experiment_") and sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert [p for p in os.listdir(out) if p.startswith(".")] == []  # no staging folder left
    config = json.loads((folder / "config.json").read_text())
    assert config["class_names"] == sorted(COLOURS) and config["arch"] == TINY
    metrics = summary["metrics"]
    assert metrics["skipped_files"] == 2 and metrics["val_images"] == 3 and metrics["train_images"] == 15
    assert np.array(metrics["confusion_matrix"]).sum() == 3
    chosen = metrics["best_epoch"]  # the epochs the training photos' own cross-validation chose, 0 to 3
    assert [s["epoch"] for s in seen if s.get("stage") == "train"] == list(range(1, chosen + 1))
    assert metrics["start"] in ("prototypes", "pretrained classes") and 0 <= metrics["cv_accuracy"] <= 1

    model = cam.load_model(str(folder), device="cpu")
    assert model.class_names == sorted(COLOURS)
    result = cam.localize(model, np.full((64, 64, 3), 120, np.uint8), topk=3)
    assert {p.label for p in result.predictions} == set(COLOURS)


@pytest.mark.slow
def test_full_training_and_unique_names(tmp_path, monkeypatch):
    sizes = []
    real_preprocess = cam.train.preprocess
    monkeypatch.setattr(cam.train, "preprocess", lambda model, arrays, size: sizes.append(size) or real_preprocess(model, arrays, size))
    zip_path = dataset_zip(tmp_path / "shapes.zip", per_class=3)
    first = train(zip_path, model_spec=TINY, pretrained=False, mode="full", epochs=1, out=tmp_path / "c", batch_size=4)
    assert set(sizes) == {(288, 288)}  # the size the app localizes at, as mode head
    sizes.clear()
    second = train(tmp_path / "shapes.zip", model_spec=TINY, pretrained=False, mode="head", epochs=1,
                   out=tmp_path / "c", input_size=96)
    assert set(sizes) == {(96, 96)}
    assert json.loads((Path(second["checkpoint"]) / "config.json").read_text())["train_input_size"] == [96, 96]
    assert first["checkpoint"] != second["checkpoint"]
    assert cam.load_model(first["checkpoint"], device="cpu").class_names == sorted(COLOURS)
    assert cam.load_model(second["checkpoint"], device="cpu").input_size == (96, 96)  # its own size: the trained one
    sizes.clear()
    train(tmp_path / "shapes.zip", model_spec=TINY, pretrained=False, mode="head", epochs=1, out=tmp_path / "c")
    assert set(sizes) == {(288, 288)}  # mode head: the size the app localizes at


def test_new_classes_start_from_the_pretrained_classes_their_photos_score_highest():
    source = (50 * torch.eye(8), torch.arange(8.0))  # 8 pretrained classes, each sure of its own feature
    features = torch.eye(8)[[2, 2, 2, 5, 5]] + 0.01 * torch.rand(5, 8)
    head = torch.nn.Linear(8, 2)
    cam.train._transfer_init(head, source, features, torch.tensor([0, 0, 0, 1, 1]))
    torch.testing.assert_close(head.weight, source[0][[2, 5]], atol=1e-3, rtol=0)  # photos of class 0 look like 2
    torch.testing.assert_close(head.bias, source[1][[2, 5]], atol=1e-3, rtol=0)
    soft = (torch.eye(8), torch.zeros(8))  # unsure: each class mixes its five most probable source classes
    cam.train._transfer_init(head, soft, features, torch.tensor([0, 0, 0, 1, 1]))
    assert ((head.weight > 1e-6).sum(1) == cam.train.TRANSFER_CLASSES).all()
    torch.testing.assert_close(head.weight.sum(1), torch.ones(2))  # a convex mixture of the rows
    assert int(head.weight[0].argmax()) == 2 and int(head.weight[1].argmax()) == 5


def test_the_start_and_epochs_are_chosen_by_folds_of_the_training_photos_alone():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 6 + [1] * 6)
    features = torch.randn(12, 4, generator=generator) + 3 * torch.nn.functional.one_hot(labels, 4)
    calls = []

    def recording(name):
        def start(head, x, y):
            calls.append((name, len(y)))
            cam.train._prototype_init(head, x, y)
        return start

    chosen = cam.train._choose_start({"a": recording("a"), "b": recording("b")}, features, features, labels,
                                     epochs=2, lr=1e-2, batch_size=4, cancel=None, seed=0)
    assert [name for name, _ in calls] == ["a"] * 5 + ["b"] * 5  # 5 folds a start
    assert sum(12 - kept for _, kept in calls[:5]) == 12  # each photo held out once, from a head trained without it
    assert chosen == {"start": "a", "epochs": 0, "cv_accuracy": 1.0}  # separable: the first start, untrained
    one = cam.train._choose_start({"a": recording("a")}, features[:7], features[:7], labels[:7], epochs=3, lr=1e-2,
                                  batch_size=4, cancel=None, seed=0)
    assert one == {"start": "prototypes", "epochs": 3, "cv_accuracy": None}  # a class of one photo: no folds


@pytest.mark.slow
def test_full_mode_starts_from_the_head_mode_classifier_and_validates_it(tmp_path, monkeypatch):
    zip_path = dataset_zip(tmp_path / "shapes.zip", per_class=3)
    torch.manual_seed(0)  # the random backbone (pretrained=False) comes from the caller's RNG: the same in both runs
    head_summary = train(zip_path, model_spec=TINY, pretrained=False, mode="head", out=tmp_path / "c", input_size=64)
    assert head_summary["metrics"]["best_epoch"] > 0  # its classifier trained on from the start
    head_mode = cam.load_model(head_summary["checkpoint"], device="cpu")
    classifier = head_mode.classifier_layer
    starts = {}
    real_keep_best = cam.train._keep_best

    def recording_keep_best(model, best, epoch, *rest):
        starts[epoch] = {k: v.clone() for k, v in model.net.get_submodule(classifier).state_dict().items()}
        return real_keep_best(model, best, epoch, *rest)

    monkeypatch.setattr(cam.train, "_keep_best", recording_keep_best)
    torch.manual_seed(0)
    summary = train(zip_path, model_spec=TINY, pretrained=False, mode="full", epochs=2, out=tmp_path / "c",
                    input_size=64)
    assert list(starts) == [0, 1, 2] and summary["metrics"]["best_epoch"] in starts
    for name, value in head_mode.net.get_submodule(classifier).state_dict().items():
        torch.testing.assert_close(starts[0][name], value)  # epoch 0: what mode head would have written
    assert not torch.equal(starts[2]["weight"], starts[0]["weight"])  # and then it learns


def test_head_mode_learns_from_the_photos_and_their_mirror_images(tmp_path, monkeypatch):
    batches = []
    real_forward = cam.train.forward_features

    def recording_forward(model, batch):
        batches.append(batch)
        return real_forward(model, batch)

    monkeypatch.setattr(cam.train, "forward_features", recording_forward)
    train(dataset_zip(tmp_path / "shapes.zip", per_class=3), model_spec=TINY, pretrained=False, mode="head",
          epochs=1, out=tmp_path / "c", input_size=64)
    validation, training, mirrored = batches  # 3 and 6 photos: one batch each
    assert (len(training), len(validation)) == (6, 3)
    assert torch.equal(mirrored, training.flip(-1))  # the training photos, left for right


def test_a_plain_folder_works_and_split_is_stratified_and_seeded(tmp_path):
    for name, colour in COLOURS.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "data" / name / f"{i}.png").write_bytes(square_image(colour, i))
    classes, items, skipped = cam_data.scan_dataset(tmp_path / "data")
    assert classes == sorted(COLOURS) and len(items) == 15 and skipped == 0
    labels = [label for _, label in items]
    train_idx, val_idx = stratified_split(labels, 0.2, seed=1)
    assert sorted([labels[i] for i in val_idx]) == [0, 1, 2]
    assert (train_idx, val_idx) == stratified_split(labels, 0.2, seed=1)


def test_cancel_leaves_no_checkpoint(tmp_path):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled):
        train(dataset_zip(tmp_path / "d.zip"), model_spec=TINY, pretrained=False, epochs=2, out=tmp_path / "c", cancel=cancel)
    assert not (tmp_path / "c").exists() or os.listdir(tmp_path / "c") == []


def test_a_device_that_is_not_here_is_refused_before_unpacking(tmp_path):
    before = _temp_dirs()
    with pytest.raises(ValueError, match="not here"):
        train(dataset_zip(tmp_path / "d.zip"), model_spec=TINY, pretrained=False, out=tmp_path / "c",
              device=f"cuda:{torch.cuda.device_count()}")
    assert _temp_dirs() == before and not (tmp_path / "c").exists()


def _zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            if isinstance(data, zipfile.ZipInfo):
                archive.writestr(data, b"target")
            else:
                archive.writestr(name, data)
    return path


def _link(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


PNG = square_image((200, 0, 0), 0)
GOOD = {f"{c}/{i}.png": PNG for c in ("a", "b") for i in range(3)}
BAD_ZIPS = {
    "escape": ({**GOOD, "../evil.png": PNG}, "outside"),
    "absolute": ({**GOOD, "/etc/evil.png": PNG}, "outside"),
    "link": ({**GOOD, "a/link.png": _link("a/link.png")}, "link"),
    "bomb": ({**GOOD, "a/huge.png": b"\0" * 50_000_000}, "bomb"),
    "nested": ({**GOOD, "a/more.zip": b"PK"}, "another archive"),
    "one class": ({f"a/{i}.png": PNG for i in range(4)}, "at least 2 class"),
    "empty class": ({**{f"a/{i}.png": PNG for i in range(4)}, "b/readme.txt": b"x"}, "at least 2 class"),
    "too few": ({**{f"a/{i}.png": PNG for i in range(4)}, "b/0.png": PNG}, "too few"),
    "no images": ({"a/x.txt": b"x", "b/y.txt": b"y"}, "at least 2 class"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_zips_are_refused_and_change_nothing(case, tmp_path):
    entries, message = BAD_ZIPS[case]
    zip_path = _zip(tmp_path / "bad.zip", entries)
    out = tmp_path / "checkpoints"
    before = _temp_dirs()
    with pytest.raises(ValueError, match=message):
        train(zip_path, model_spec=TINY, pretrained=False, epochs=1, out=out)
    assert not out.exists()
    assert _temp_dirs() == before
    assert not (tmp_path.parent / "evil.png").exists()


def test_corrupt_archive_and_too_many_files(tmp_path, monkeypatch):
    good = _zip(tmp_path / "good.zip", GOOD).read_bytes()
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(good[:-30])  # the central directory's end is cut off
    with pytest.raises(ValueError, match="not a readable zip"):
        cam_data.unpack_zip(corrupt, tmp_path / "x")
    monkeypatch.setattr(cam_data, "MAX_ARCHIVE_FILES", 5)
    with pytest.raises(ValueError, match="entries"):
        cam_data.unpack_zip(tmp_path / "good.zip", tmp_path / "y")
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_cli_train_prints_progress_and_checkpoint(tmp_path):
    zip_path = dataset_zip(tmp_path / "shapes.zip")
    proc = subprocess.run([sys.executable, "-m", "cam", "train", str(zip_path), "--model", TINY, "--epochs", "2",
                           "--out", str(tmp_path / "c"), "--no-pretrained"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.splitlines()[-1])
    assert os.path.isdir(last["checkpoint"]) and 0 <= last["val_accuracy"] <= 1
    assert "train [" in proc.stderr


@pytest.mark.slow
def test_cli_train_bad_zip_is_one_line(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    proc = subprocess.run([sys.executable, "-m", "cam", "train", str(bad), "--out", str(tmp_path / "c")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: not a readable zip")
    assert "Traceback" not in proc.stderr and not (tmp_path / "c").exists()


def _checkpoint(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    summary = train(dataset_zip(tmp_path / "d.zip"), model_spec=TINY, pretrained=False, epochs=1, out=tmp_path / "c")
    return tmp_path / "c" / os.path.basename(summary["checkpoint"])


@pytest.mark.slow
def test_hostile_checkpoints_are_refused(tmp_path):
    import pickle

    folder = _checkpoint(tmp_path)
    config = json.loads((folder / "config.json").read_text())

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (folder / "model.safetensors").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match="safetensors"):
        cam.load_model(str(folder))
    assert not (tmp_path / "pwned").exists()

    folder = _checkpoint(tmp_path / "second")
    (folder / "config.json").write_text(json.dumps({**config, "class_names": ["a", "b", "c", "d"]}))
    with pytest.raises(ValueError, match="does not match"):
        cam.load_model(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid checkpoint config"):
        cam.load_model(str(folder))
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="unknown model spec|not a checkpoint"):
        cam.load_model(str(folder))


@pytest.mark.slow
def test_hundred_thousand_tiny_files_are_refused_quickly(tmp_path):
    zip_path = tmp_path / "many.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for i in range(100_000):
            archive.writestr(f"a/{i}.png", b"")
    with pytest.raises(ValueError, match="100,000 entries"):
        cam_data.unpack_zip(zip_path, tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("counts, folds", [((120, 125), 5), ((7, 3, 30), 3), ((2, 2), 4), ((50,), 10)])
def test_stratified_folds_hold_every_image_once_and_keep_the_class_balance(counts, folds):
    from cam.train import stratified_folds

    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    for seed in range(3):
        dealt = stratified_folds(labels, folds, seed)
        assert len(dealt) == folds and sorted(i for fold in dealt for i in fold) == list(range(len(labels)))
        for k, test in enumerate(dealt):  # no photo both trained on and held out
            train = {i for j, fold in enumerate(dealt) if j != k for i in fold}
            assert not train & set(test)
        for c, n in enumerate(counts):
            per_fold = [sum(labels[i] == c for i in fold) for fold in dealt]
            assert max(per_fold) - min(per_fold) <= 1  # each class's share in every fold, within one photo
        assert max(map(len, dealt)) - min(map(len, dealt)) <= 1
    assert stratified_folds(labels, folds, 0) == stratified_folds(labels, folds, 0)  # seeded
    with pytest.raises(ValueError, match="folds must be"):
        stratified_folds(labels, 1, 0)
