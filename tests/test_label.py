"""Photo collections: `cam label` and `cam.label.label` write COCO, YOLO and VOC that read back to the
logged boxes, keep paths relative to their input roots, log bad files, resume after SIGKILL and
give the same files on the Ray engine."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from cam import Settings, export
from cam.label import ERRORS, LOG, collect, label
from cam.checkpoint import save_checkpoint

from .conftest import ROOT
from .datasets import COLOURS, square_image
from .images import hostile_files

OUTPUTS = ["coco.json", "errors.jsonl", "images", "predictions.jsonl", "review.txt", "run.json", "voc", "yolo"]  # images: COCO's


def _photos(folder: Path, count: int, size: int = 64) -> list[Path]:
    """`count` generated photos (a coloured square on noise) under `folder`, in two subfolders."""
    paths = []
    for i in range(count):
        path = folder / ("left" if i % 2 else "right") / f"photo_{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(square_image(list(COLOURS.values())[i % 3], seed=i, size=size))
        paths.append(path)
    return paths


def _files(folder: Path) -> dict[str, bytes]:
    """Every visible file under `folder` by relative path, with its bytes (the folder's own absolute
    path, which YOLO's data.yaml names, as OUT)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes().replace(str(folder.resolve()).encode(), b"OUT")
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny random model as a checkpoint folder: a spec that a subprocess or a Ray actor loads offline."""
    import cam

    model = cam.load_model("timm:test_resnet", pretrained=False, device="cpu")
    return str(save_checkpoint(model, tmp_path_factory.mktemp("checkpoints"), {}, {}))


def test_formats_read_back_to_the_logged_boxes(tiny_model, tmp_path):
    from pycocotools.coco import COCO

    _photos(tmp_path / "in", 6, size=80)
    out = tmp_path / "out"
    summary = label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=3, all_regions=True))
    assert summary["photos"] == summary["labelled"] == summary["new"] == 6 and summary["errors"] == 0
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    records = list(export.read_log(out / LOG))
    assert [r["file"] for r in records] == sorted(r["file"] for r in records)
    assert {r["file"].split("/")[0] for r in records} == {"left", "right"}
    coco_names = [image["file_name"] for image in json.loads((out / "coco.json").read_text())["images"]]
    review = (out / "review.txt").read_text().splitlines()
    assert len(review) == len(set(review)) == 6 and set(review) == set(coco_names)
    boxes = [(r["file"], p["class_index"], tuple(b)) for r in records for p in r["predictions"] for b in p["boxes"]]
    assert len(boxes) >= 18

    coco = COCO(str(out / "coco.json"))
    assert len(coco.getImgIds()) == 6 and len(coco.getCatIds()) == len(tiny_model.class_names)
    assert coco.loadCats(export.coco_category_id(4))[0]["name"] == tiny_model.class_names[4]
    from_coco = sorted((coco.imgs[a["image_id"]]["file_name"], a["category_id"] - 1,
                        (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]))
                       for a in coco.dataset["annotations"])
    assert from_coco == sorted(boxes)
    assert all(coco.imgs[i]["width"] == 80 and coco.imgs[i]["height"] == 80 for i in coco.getImgIds())
    results = coco.loadRes(coco.dataset["annotations"])  # the annotations, as they are, are a results file
    assert len(results.anns) == len(boxes)

    file_of = {export.flat_stem(r["file"]): r["file"] for r in records}
    yolo = export.read_yolo(out / "yolo")
    from_yolo = sorted((file_of[name], c, tuple(round(v) for v in ((cx - w / 2) * 80, (cy - h / 2) * 80,
                                                                   (cx + w / 2) * 80, (cy + h / 2) * 80)))
                       for name, rows in yolo.items() for c, (cx, cy, w, h) in rows)
    assert from_yolo == sorted(boxes)
    assert (out / "yolo" / "classes.txt").read_text().splitlines() == tiny_model.class_names
    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert data["nc"] == len(tiny_model.class_names) and data["names"][3] == tiny_model.class_names[3]

    voc = export.read_voc(out / "voc")
    names = {c: name for c, name in enumerate(tiny_model.class_names)}
    from_voc = sorted((file_of[stem], box) for stem, annotation in voc.items() for _, box in annotation["objects"])
    assert from_voc == sorted((f, b) for f, _, b in boxes)
    assert {o[0] for a in voc.values() for o in a["objects"]} <= set(names.values())
    assert all((a["width"], a["height"]) == (80, 80) for a in voc.values())


def test_min_score_drops_predictions_and_a_photo_without_boxes_keeps_empty_files(tiny_model, tmp_path):
    _photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=2, min_score=1.0))
    assert all(r["predictions"] == [] for r in export.read_log(out / LOG))
    assert all(rows == [] for rows in export.read_yolo(out / "yolo").values()) and len(export.read_yolo(out / "yolo")) == 2
    assert all(a["objects"] == [] for a in export.read_voc(out / "voc").values())
    assert json.loads((out / "coco.json").read_text())["annotations"] == []


def test_paths_stay_relative_to_their_input_roots(tmp_path):
    photo = square_image(COLOURS["red"], seed=1)
    for sub in ("a", "b"):
        (tmp_path / "root" / sub).mkdir(parents=True)
        (tmp_path / "root" / sub / "img1.png").write_bytes(photo)
    (tmp_path / "single.png").write_bytes(photo)
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.writestr("deep/er/img1.png", photo)
        archive.writestr("notes.txt", "not a photo")
    items = collect([tmp_path / "root", tmp_path / "single.png", tmp_path / "more.zip"], tmp_path / "unpacked")
    assert [i.name for i in items] == ["a/img1.png", "b/img1.png", "single.png", "deep/er/img1.png"]
    assert items[3].shown == f"{tmp_path / 'more.zip'}:deep/er/img1.png" and Path(items[3].path).is_file()

    with pytest.raises(ValueError, match="would share the output name 'img1'"):
        collect([tmp_path / "root" / "a", tmp_path / "root" / "b"], tmp_path / "unpacked2")
    (tmp_path / "root" / "a" / "img1.jpg").write_bytes(photo)  # its YOLO and VOC files would be a__img1 too
    with pytest.raises(ValueError, match="'a__img1'"):
        collect([tmp_path / "root"], tmp_path / "unpacked3")
    (tmp_path / "root" / "a" / "img1.jpg").unlink()
    (tmp_path / "root" / "a__img1.png").write_bytes(photo)  # flattened, the same name as a/img1.png
    with pytest.raises(ValueError, match="'a__img1'"):
        collect([tmp_path / "root"], tmp_path / "unpacked4")
    with pytest.raises(ValueError, match="no such file or folder"):
        collect([tmp_path / "missing"], tmp_path / "unpacked5")


def test_a_hostile_zip_is_refused_before_anything_is_written(tiny_model, tmp_path):
    with zipfile.ZipFile(tmp_path / "escape.zip", "w") as archive:
        archive.writestr("../evil.png", b"x")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="outside"):
        label([tmp_path / "escape.zip"], out, model=tiny_model)
    assert not (tmp_path / "evil.png").exists() and not (out / LOG).exists() and not (out / "coco.json").exists()


@pytest.mark.slow
def test_bad_files_go_to_the_errors_file_and_the_rest_is_labelled(tiny_checkpoint, tmp_path):
    photo = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    folder = tmp_path / "in"
    _photos(folder, 3)
    for name, data in hostile_files(photo).items():
        (folder / name.replace(".html", ".png").replace(".svg", ".png")).write_bytes(data)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "cam", "label", str(folder), "--out", str(out), "--model",
                           tiny_checkpoint, "--format", "coco"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: 7 file(s) could not be read: see {out / ERRORS}"]
    errors = list(export.read_log(out / ERRORS))
    assert sorted(e["file"] for e in errors) == sorted(n.replace(".html", ".png").replace(".svg", ".png")
                                                        for n in hostile_files(photo))
    assert all(e["error"].startswith(e["path"]) and e["path"] == str(folder / e["file"]) for e in errors)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1]["labelled"] == 3 and lines[-1]["errors"] == 7 and len(lines) == 11
    assert sorted(p.name for p in out.iterdir()) == ["coco.json", "errors.jsonl", "images", "predictions.jsonl",
                                                     "review.txt", "run.json"]


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_the_same_files(tiny_checkpoint, tmp_path):
    _photos(tmp_path / "in", 400, size=96)
    command = [sys.executable, "-m", "cam", "label", str(tmp_path / "in"), "--model", tiny_checkpoint,
               "--topk", "2", "--input-size", "512", "--batch-size", "3"]
    whole = tmp_path / "whole"
    assert subprocess.run([*command, "--out", str(whole)], cwd=ROOT, capture_output=True, timeout=600).returncode == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / LOG).is_file() or (killed / LOG).stat().st_size < 2000:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = (killed / LOG).read_bytes().count(b"\n")
    assert 0 < logged < 400 and not (killed / "coco.json").exists()
    with open(killed / LOG, "ab") as log:  # as if the kill had cut a line short
        log.write(b'{"file": "right/photo_0')
    resumed = subprocess.run([*command, "--out", str(killed)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["skipped"] == logged and summary["new"] == 400 - logged
    assert _files(killed) == _files(whole)


def test_a_rerun_with_other_settings_or_model_is_refused(tiny_model, tmp_path):
    _photos(tmp_path / "in", 2)
    out = tmp_path / "out"
    label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=2))
    before = _files(out)
    with pytest.raises(ValueError, match=r"other settings: topk 2 \(now 1\)"):
        label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=1))
    import cam

    other = cam.load_model("timm:test_resnet", pretrained=False, device="cpu")  # new random weights, same spec
    with pytest.raises(ValueError, match="weights"):
        label([tmp_path / "in"], out, model=other, settings=Settings(topk=2))
    assert _files(out) == before
    again = label([tmp_path / "in"], out, model=tiny_model, settings=Settings(topk=2))
    assert again["new"] == 0 and again["skipped"] == 2 and _files(out) == before


@pytest.mark.slow
def test_bad_options_and_unwritable_folders_are_one_line(tiny_checkpoint, tmp_path):
    _photos(tmp_path / "in", 1)
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cam", "label", str(tmp_path / "in"), "--model", tiny_checkpoint,
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=300)

    for args, message in ((["--out", str(blocker / "out")], "Not a directory"),
                          (["--out", str(tmp_path / "o1"), "--format", "coco,pdf"], "formats must be among"),
                          (["--out", str(tmp_path / "o2"), "--topk", "0"], "topk must be a positive integer"),
                          (["--out", str(tmp_path / "o3"), "--engine", "ray", "--ray-address", "127.0.0.1:9"],
                           "cannot reach the Ray cluster")):
        proc = run(*args)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)


def test_without_ray_the_ray_engine_says_what_to_install(tmp_path):
    script = ("import sys; sys.modules['ray'] = None; from cam.__main__ import main; "
              f"sys.exit(main(['label', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out')!r}, '--engine', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: --engine ray needs Ray: pip install -r requirements-scale.txt"


def test_the_ray_engine_refuses_a_device_before_starting_ray(tmp_path):
    with pytest.raises(ValueError, match="local engine"):
        label([tmp_path], tmp_path / "out", model="timm:test_resnet", engine="ray", device="cuda")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_ray_engine_writes_the_same_files_as_the_local_one(tiny_checkpoint, tmp_path):
    ray = pytest.importorskip("ray")
    import cam

    _photos(tmp_path / "in", 13)
    (tmp_path / "in" / "broken.png").write_text("not a photo")
    settings = Settings(topk=2, all_regions=True)
    local = label([tmp_path / "in"], tmp_path / "local", model=tiny_checkpoint, settings=settings, batch_size=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [str(Path(cam.__file__).parent)]})
    try:
        distributed = label([tmp_path / "in"], tmp_path / "ray", model=tiny_checkpoint, settings=settings, batch_size=3,
                            engine="ray")
    finally:
        ray.shutdown()
    assert distributed["engine"] == "ray" and distributed["labelled"] == local["labelled"] == 13
    assert distributed["errors"] == 1
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_with_photos_per_second(tiny_checkpoint, tmp_path):
    from .test_cli import run_cli_in_terminal

    _photos(tmp_path / "in", 7)
    returncode, stdout, screen = run_cli_in_terminal("label", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                                     "--model", tiny_checkpoint, "--batch-size", "2")
    assert returncode == 0 and len(stdout.splitlines()) == 8
    assert "label [" + "#" * 30 + "] 7/7 " in screen and " photos/s" in screen
