"""The Review tab's service (`cam.service.reviews`): photos shown upright and small, boxes kept in
the photo's own pixels at each save, refusals that change nothing, a reviewed COCO file that
`cam train --boxes-from` reads, bounded storage; then the tab's API through gradio_client."""

import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cam
from cam.service import ModelCache
from cam.service import reviews as service
from cam.service.jobs import epoch_progress
from cam.checkpoint import save_checkpoint
from cam.train_detector import read_coco_boxes

from .datasets import COLOURS, dataset_zip, square_image
from .images import jpeg_bytes


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder holding one checkpoint (tiny, random weights: its classes are not the dataset's)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"), folder, {}, {})
    return folder


@pytest.fixture
def store(checkpoints, tmp_path):
    cache = ModelCache(checkpoints, runtime="torch")
    reviews = service.Reviews(tmp_path / "reviews")
    return cache, reviews, cache.choices()[1], tmp_path


def _out(tmp_path) -> Path:
    folder = tmp_path / f"out{time.perf_counter_ns()}"
    folder.mkdir()
    return folder


def _shown(value) -> dict:
    """An annotator value as the browser sends it back: the picture by its file name."""
    return {"image": Path(value["image"]).name, "boxes": [dict(b) for b in value["boxes"]]}


def test_a_12_mp_photo_stored_on_its_side_is_shown_upright_and_its_boxes_kept_in_its_own_pixels(store):
    cache, reviews, choice, tmp_path = store
    data = tmp_path / "data"
    for name in COLOURS:
        (data / name).mkdir(parents=True)
        for i in range(2):
            (data / name / f"{i}.png").write_bytes(square_image(COLOURS[name], seed=i))
    # 4000 wide, 3000 high as stored; EXIF orientation 6: shown rotated, 3000 wide and 4000 high
    ramp = np.linspace(0, 255, 4000, dtype=np.uint8)
    stored = np.stack([np.broadcast_to(ramp, (3000, 4000))] * 3, axis=-1)
    (data / "red" / "sideways.jpg").write_bytes(jpeg_bytes(stored, exif_orientation=6))
    review_id = service.open_review(reviews, cache, choice, data)
    service.move(reviews, review_id, to="red/sideways.jpg")
    value, status = service.photo_view(reviews, review_id, _out(tmp_path))
    assert "0 of 7 reviewed" in status and "red/sideways.jpg" in status
    with Image.open(value["image"]) as shown:
        assert shown.size == (480, 640) and shown.getexif().get(0x0112) is None  # upright, no tag to turn it again
        pixels = np.asarray(shown)
    assert pixels[0].mean() < 20 and pixels[-1].mean() > 235  # the stored left edge (dark) is the top now
    _, meta, _ = service.load(reviews, review_id)
    assert meta["sizes"]["red/sideways.jpg"] == [4000, 3000]
    for box in value["boxes"]:  # the proposal, scaled to the shown photo
        assert 0 <= box["xmin"] < box["xmax"] <= 480 and 0 <= box["ymin"] < box["ymax"] <= 640

    drawn = {"image": Path(value["image"]).name, "boxes": [{"xmin": 48, "ymin": 64, "xmax": 240, "ymax": 320,
                                                            "label": "red"}]}
    assert service.save(reviews, review_id, drawn) == "red/sideways.jpg"
    _, _, saved = service.load(reviews, review_id)
    assert saved["reviewed"] == {"red/sideways.jpg": [[300, 400, 1500, 2000, "red"]]}  # the upright photo's pixels
    assert saved["current"] != "red/sideways.jpg"  # the next photo
    coco = json.loads(Path(service.write_coco(reviews, review_id, _out(tmp_path))).read_text())
    assert coco["images"] == [{"id": 1, "file_name": "red/sideways.jpg", "width": 3000, "height": 4000}]
    assert coco["annotations"][0]["bbox"] == [300, 400, 1200, 1600]
    root, classes, names = service.dataset_names(reviews.folder(review_id) / "data")
    coco_path = tmp_path / "c.json"
    coco_path.write_text(json.dumps(coco))
    assert read_coco_boxes(coco_path, names, classes) == {"red/sideways.jpg": [(0.1, 0.1, 0.5, 0.5)]}

    # Shown again: the saved box where it was drawn; saved unchanged, it keeps its exact pixels.
    service.move(reviews, review_id, to="red/sideways.jpg")
    again, _ = service.photo_view(reviews, review_id, _out(tmp_path))
    assert again["boxes"] == drawn["boxes"]


def test_each_save_is_kept_on_disk_at_once_and_refusals_change_nothing(store):
    cache, reviews, choice, tmp_path = store
    review_id = service.open_review(reviews, cache, choice, dataset_zip(tmp_path / "colours.zip", per_class=3,
                                                                      top="photos/"))
    folder = reviews.folder(review_id)
    value, status = service.photo_view(reviews, review_id, _out(tmp_path))
    assert status.startswith("**0 of 9 reviewed**")
    first = json.loads((folder / "saved.json").read_text())["current"]
    assert value["boxes"] and {b["label"] for b in value["boxes"]} == {first.split("/")[0]}  # named by its folder
    empty = json.loads(Path(service.write_coco(reviews, review_id, _out(tmp_path))).read_text())  # at any moment
    assert empty["images"] == empty["annotations"] == [] and [c["name"] for c in empty["categories"]] == sorted(COLOURS)

    moved = _shown(value)
    moved["boxes"][0].update(xmin=2, ymin=3, xmax=40, ymax=41)
    moved["boxes"].append({"xmin": 20, "ymin": 20, "xmax": 40, "ymax": 40, "label": "green", "scaleFactor": 2})
    assert service.save(reviews, review_id, moved) == first
    saved = json.loads((folder / "saved.json").read_text())  # on disk already: a restarted server reads it
    label = first.split("/")[0]
    assert saved["reviewed"] == {first: [[2, 3, 40, 41, label], [10, 10, 20, 20, "green"]]}
    second = saved["current"]
    assert second != first and second.split("/")[0] != label  # the order spreads over the classes

    before = (folder / "saved.json").read_bytes()
    shown = _shown(service.photo_view(reviews, review_id, _out(tmp_path))[0])
    box = {"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9, "label": second.split("/")[0]}
    for bad, message in (({**box, "xmax": 65}, "lies outside the photo"), ({**box, "xmin": -1}, "lies outside"),
                         ({**box, "xmax": 1}, "has no size"), ({**box, "label": "cat"}, "'cat' is not one of the "
                                                                                        "dataset's: blue, green, red"),
                         ({"xmin": "a", "ymin": 1, "xmax": 2, "ymax": 3}, "needs the numbers"),
                         ({"xmin": 1, "ymin": 1, "xmax": 9}, "needs the numbers"), ([1, 1, 9, 9], "needs the numbers"),
                         ({**box, "xmin": float("nan")}, "needs the numbers"), ({**box, "scaleFactor": "x"}, "needs")):
        with pytest.raises(ValueError, match=message):
            service.save(reviews, review_id, {**shown, "boxes": [bad]})
        assert (folder / "saved.json").read_bytes() == before
    with pytest.raises(ValueError, match="turned in the editor"):  # its rotate buttons: boxes in another frame
        service.save(reviews, review_id, {**shown, "boxes": [box], "orientation": 1})
    with pytest.raises(ValueError, match="earlier review"):
        service.save(reviews, review_id, {**shown, "image": shown["image"].replace(review_id[:8], "0" * 8)})
    assert (folder / "saved.json").read_bytes() == before

    # No box is a reviewed photo without one; back, skip, and the strip latest first.
    assert service.save(reviews, review_id, {**shown, "boxes": []}) == second
    service.move(reviews, review_id, step=-1)
    assert service.load(reviews, review_id)[2]["current"] == second
    assert [caption for _, caption in service.strip(reviews, review_id, _out(tmp_path))] == [second, first]
    coco = service.coco(*service.load(reviews, review_id)[1:])
    assert [i["file_name"] for i in coco["images"]] == [first, second]
    assert {a["image_id"] for a in coco["annotations"]} == {1}  # the second: listed, no annotation
    root, classes, names = service.dataset_names(folder / "data")
    path = tmp_path / "reviewed.json"
    path.write_text(json.dumps(coco))
    boxes = read_coco_boxes(path, names, classes)  # what `cam train --boxes-from` reads
    assert boxes[second] == [] and len(boxes[first]) == 2


def test_a_coco_file_from_a_labelling_tool_resumes_a_review_and_another_datasets_is_refused(store):
    cache, reviews, choice, tmp_path = store
    data = dataset_zip(tmp_path / "colours.zip", per_class=3)
    # As CVAT writes it: file names under a folder of its own, its own ids, a photo without a box.
    tool = {"images": [{"id": 7, "file_name": "images/blue/1.png", "width": 64, "height": 64},
                       {"id": 9, "file_name": "images/red/2.png", "width": 64, "height": 64}],
            "categories": [{"id": 1, "name": "blue"}, {"id": 2, "name": "red"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [8, 16, 32, 16], "area": 512,
                             "iscrowd": 0}]}
    resume = tmp_path / "instances_default.json"
    resume.write_text(json.dumps(tool))
    review_id = service.open_review(reviews, cache, choice, data, resume)
    _, meta, saved = service.load(reviews, review_id)
    assert saved["reviewed"] == {"blue/1.png": [[8, 16, 40, 32, "blue"]], "red/2.png": []}
    assert meta["order"][:2] == ["blue/1.png", "red/2.png"] and saved["current"] not in saved["reviewed"]
    value, status = service.photo_view(reviews, review_id, _out(tmp_path))
    assert "2 of 9 reviewed" in status

    other = dict(tool, images=[{"id": 7, "file_name": "kitchen/cup.jpg", "width": 64, "height": 64}])
    resume.write_text(json.dumps(other))
    existing = sorted(reviews.root.iterdir())
    with pytest.raises(ValueError, match="lists none of the dataset's photos"):
        service.open_review(reviews, cache, choice, data, resume)
    resume.write_text(json.dumps(dict(tool, categories=[{"id": 1, "name": "cat"}])))
    with pytest.raises(ValueError, match="has classes the dataset lacks: cat"):
        service.open_review(reviews, cache, choice, data, resume)
    assert sorted(reviews.root.iterdir()) == existing  # a refused review leaves nothing


def test_a_coco_file_of_the_photos_at_other_proportions_or_on_their_side_is_refused(store):
    from .images import png_bytes

    cache, reviews, choice, tmp_path = store
    data = dataset_zip(tmp_path / "colours.zip", per_class=2, extra={
        "red/wide.png": png_bytes(np.zeros((40, 60, 3), np.uint8)), "blue/broken.jpg": b"not a photo"})
    tool = {"images": [{"id": 1, "file_name": "red/wide.png", "width": 120, "height": 80}],
            "categories": [{"id": 1, "name": "red"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12, 8, 60, 40]}]}
    resume = tmp_path / "boxes.json"
    resume.write_text(json.dumps(tool))
    review_id = service.open_review(reviews, cache, choice, data, resume)  # twice the size, the same proportions
    assert service.load(reviews, review_id)[2]["reviewed"] == {"red/wide.png": [[6, 4, 36, 24, "red"]]}
    _, meta, _ = service.load(reviews, review_id)  # the unreadable photo: left out, and gone from what retrains
    assert meta["unreadable"] == 1 and "blue/broken.jpg" not in meta["order"]
    assert not (reviews.folder(review_id) / meta["root"] / "blue" / "broken.jpg").exists()
    assert "blue/broken.jpg" not in service.dataset_names(reviews.folder(review_id) / "data")[2]
    existing = sorted(reviews.root.iterdir())
    for (width, height), message in (((80, 120), r"^boxes.json: red/wide.png is 80 x 120 pixels there but 60 x 40 "
                                                 r"upright: the tool boxed the photo on its side$"),
                                     ((60, 60), r"^boxes.json: red/wide.png is 60 x 60 pixels there but 60 x 40 "
                                                r"upright$")):
        tool["images"][0].update(width=width, height=height)
        resume.write_text(json.dumps(tool))
        with pytest.raises(ValueError, match=message):
            service.open_review(reviews, cache, choice, data, resume)
    assert sorted(reviews.root.iterdir()) == existing


def test_a_stale_tab_cannot_overwrite_the_boxes_another_tab_saved_since(store):
    cache, reviews, choice, tmp_path = store
    review_id = service.open_review(reviews, cache, choice, dataset_zip(tmp_path / "colours.zip", per_class=2))
    folder = reviews.folder(review_id)
    first_tab = _shown(service.photo_view(reviews, review_id, _out(tmp_path))[0])
    second_tab = _shown(service.photo_view(reviews, review_id, _out(tmp_path))[0])
    name = service.load(reviews, review_id)[2]["current"]
    label = name.split("/")[0]
    box = {"xmin": 1, "ymin": 2, "xmax": 30, "ymax": 31, "label": label}
    assert service.shows_current(reviews, review_id, first_tab)  # what a retraining then leaves as it is
    assert service.save(reviews, review_id, {**second_tab, "boxes": [box]}) == name
    assert not service.shows_current(reviews, review_id, first_tab)
    kept = service.load(reviews, review_id)[2]["reviewed"]
    with pytest.raises(service.SavedElsewhere, match=rf"^Not saved: `{name}` was saved in another tab since; shown "
                                                     r"again with those boxes\.$"):
        service.save(reviews, review_id, {**first_tab, "boxes": []})  # drawn on the proposals, before that save
    saved = json.loads((folder / "saved.json").read_text())
    assert saved["reviewed"] == kept and saved["current"] == name  # kept as the other tab saved them, and shown
    again, _ = service.photo_view(reviews, review_id, _out(tmp_path))
    assert again["boxes"] == [box] and Path(again["image"]).name != first_tab["image"]
    assert service.shows_current(reviews, review_id, again) and not service.shows_current(reviews, review_id, None)
    assert service.save(reviews, review_id, {**_shown(again), "boxes": []}) == name  # the boxes seen: kept
    assert service.load(reviews, review_id)[2]["reviewed"][name] == []
    with pytest.raises(service.SavedElsewhere):  # shown before that save: stale in its turn
        service.save(reviews, review_id, {**_shown(again), "boxes": [box]})


def test_reviews_are_bounded_expire_and_never_while_leased_and_ids_name_no_path(store):
    cache, reviews, choice, tmp_path = store
    reviews.max_reviews = 2
    data = dataset_zip(tmp_path / "colours.zip", per_class=2)
    first = service.open_review(reviews, cache, choice, data)
    recorded = int((reviews.folder(first) / service.SIZE_FILE).read_text())  # what sweeps count it as
    assert recorded == sum(p.stat().st_size for p in reviews.folder(first).rglob("*") if p.is_file()) - \
        (reviews.folder(first) / service.SIZE_FILE).stat().st_size
    os.utime(reviews.folder(first), (time.time() - 100, time.time() - 100))
    second = service.open_review(reviews, cache, choice, data)
    with reviews.lease(first):  # a training reads it
        third = service.open_review(reviews, cache, choice, data)
        assert reviews.exists(first) and not reviews.exists(second)  # the oldest not leased went instead
    os.utime(reviews.folder(third), (time.time() - reviews.max_age - 1,) * 2)
    with reviews.lease(third):
        reviews.sweep()
        assert reviews.exists(third)
    os.utime(reviews.folder(third), (time.time() - reviews.max_age - 1,) * 2)  # its lease's end was a change
    reviews.sweep()
    assert not reviews.exists(third) and reviews.exists(first)

    with reviews.lock(first):  # a save under way: a sweep leaves the review to the next one
        assert not reviews.remove(first) and reviews.exists(first)
    expired = f"{7:032x}"  # an id a browser sends back after its review went: no lock kept for it
    reviews.lock(expired)
    assert expired not in reviews._locks

    for bad in ("../etc", "A" * 32, "0" * 31, None, "0" * 32 + "/x", 12):
        with pytest.raises(ValueError, match="id is not valid"):
            reviews.folder(bad)
        assert not reviews.exists(bad)
    assert reviews.secret() == service.Reviews(reviews.root).secret()  # the same after a restart


def test_reviews_are_bounded_by_bytes_and_swept_while_the_server_runs(tmp_path):
    reviews = service.Reviews(tmp_path / "reviews", max_bytes=2500)
    ids = [f"{n:032x}" for n in range(4)]
    for age, review_id in zip((400, 300, 200, 100), ids):
        folder = reviews.folder(review_id)
        (folder / "data").mkdir(parents=True)
        (folder / "data" / "photo.jpg").write_bytes(b"x" * 1000)
        os.utime(folder, (time.time() - age,) * 2)
    with reviews.lease(ids[0]):  # a training reads the oldest: the next oldest goes in its place
        os.utime(reviews.folder(ids[0]), (time.time() - 400,) * 2)
        reviews.sweep()
    assert [reviews.folder(i).is_dir() for i in ids] == [True, False, False, True]
    os.utime(reviews.folder(ids[0]), (time.time() - 400,) * 2)  # its lease's end was a change
    reviews.max_bytes = 10
    reviews.sweep()  # the latest stays, whatever its size
    assert [reviews.folder(i).is_dir() for i in ids] == [False, False, False, True]

    reviews.max_age = 50  # expires while the server runs: a sweep finds it without any review opened
    stop = reviews.sweep_every(0.05)
    assert service.Reviews(reviews.root).sweep_every(0.05) is stop  # one sweeping thread a folder
    try:
        deadline = time.time() + 10
        while reviews.folder(ids[3]).is_dir() and time.time() < deadline:
            time.sleep(0.05)
        assert not reviews.folder(ids[3]).is_dir()
    finally:
        stop.set()


# --- the tab's API, on the real app ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from .test_app import _serve

    yield from _serve(tmp_path_factory)


def _client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False, download_files=str(server["downloads"]))


def _sent(value) -> dict:
    """An annotator value as gradio_client sends it back: its picture uploaded again."""
    from gradio_client import handle_file

    return {"image": handle_file(value["image"]), "boxes": value["boxes"]}


@pytest.mark.slow
def test_api_review_open_save_download_then_retrain_and_visitors_never_mix(server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    checkpoint = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"),
                                 server["checkpoints"], {}, {}).name
    client = _client(server)
    data = handle_file(str(dataset_zip(tmp_path / "colours.zip", per_class=4)))
    value, status = client.predict(data, None, checkpoint, api_name="/review_open")
    assert status.startswith("**0 of 12 reviewed**") and Path(value["image"]).is_file()
    first = status.split("`")[1]
    assert [b["label"] for b in value["boxes"]] == [first.split("/")[0]]
    box = {"xmin": 5, "ymin": 6, "xmax": 30, "ymax": 33, "label": "green"}
    after, status = client.predict({**_sent(value), "boxes": [box]}, api_name="/review_save")
    assert status.startswith(f"Saved `{first}`. **1 of 12 reviewed**") and after["image"] != value["image"]

    with pytest.raises(AppError, match=r"^a box \(5, 6, 99, 33\) lies outside the photo \(64 x 64 pixels as shown\)$"):
        client.predict({**_sent(after), "boxes": [{**box, "xmax": 99}]}, api_name="/review_save")
    with pytest.raises(AppError, match="'cat' is not one of the dataset's"):
        client.predict({**_sent(after), "boxes": [{**box, "label": "cat"}]}, api_name="/review_save")
    with pytest.raises(AppError, match="^a box needs the numbers xmin, ymin, xmax and ymax$"):
        client.predict({**_sent(after), "boxes": [[5, 6, 30, 33]]}, api_name="/review_save")
    coco = json.loads(Path(client.predict(api_name="/review_download")).read_text())
    assert [i["file_name"] for i in coco["images"]] == [first]
    assert [(a["bbox"], a["category_id"]) for a in coco["annotations"]] == [([5, 6, 25, 27], 2)]

    other = _client(server)  # another visitor: none of the first one's review
    with pytest.raises(AppError, match="No review is open here"):
        other.predict(api_name="/review_download")
    with pytest.raises(AppError, match="No review is open here"):
        other.predict({**_sent(after), "boxes": [box]}, api_name="/review_save")
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "kitchen/cup.jpg", "width": 9, "height": 9}],
                               "categories": [], "annotations": []}))
    with pytest.raises(AppError, match="^other.json lists none of the dataset's photos"):
        other.predict(data, handle_file(str(bad)), checkpoint, api_name="/review_open")

    # Retrain on five reviewed photos: a checkpoint of the dataset's classes, selected; the photos left
    # come in its order; where the training scored its boxes on the reviewed photos, the status says so.
    for _ in range(4):
        after, status = client.predict(_sent(after), api_name="/review_save")
    assert "5 of 12 reviewed" in status
    shown = status.split("`")[3]  # not reviewed yet: a retraining leaves it shown
    status, new = client.predict(2, 2, api_name="/review_train")
    assert status.startswith(f"Done: **{new}**") and (server["checkpoints"] / new / "config.json").is_file()
    measured = json.loads((server["checkpoints"] / new / "config.json").read_text())["metrics"]["detector"]
    assert measured["reviewed_images"] == 5 and set(measured["reviewed_ap50"]) == {"cam", "detector", "both"}
    assert all(f"{source} {value:.2f}" in status for source, value in measured["reviewed_ap50"].items()), status
    (folder,) = [f for f in (server["checkpoints"] / ".reviews").iterdir() if (f / "review.json").is_file()
                 and json.loads((f / "review.json").read_text()).get("checkpoints")]
    meta = json.loads((folder / "review.json").read_text())
    assert meta["model"] == new and meta["matching"] and meta["order"][0] == first and len(meta["checkpoints"]) == 1
    assert json.loads((folder / "saved.json").read_text())["current"] == shown
    config = json.loads((server["checkpoints"] / new / "config.json").read_text())
    assert config["class_names"] == sorted(COLOURS)
    value, status = client.predict(api_name="/review_skip")
    assert "5 of 12 reviewed" in status


def test_the_retraining_names_the_reviewed_photos_ap50_or_why_it_is_not_measured():
    summary = {"checkpoint": "/c/experiment_1", "metrics": {"val_accuracy": 0.875}}
    assert service.retrain_status({**summary, "reviewed_ap50": {"cam": 0.27, "detector": 0.461, "both": 0.49},
                                   "boxes": "both"}) == (
        "Done: **experiment_1**, validation accuracy 87.5%; AP50 on your reviewed photos (each scored by a model that "
        "did not learn it): cam 0.27, detector 0.46, both 0.49 (it now gives both). It is now selected in the Localize "
        "tab; the photos left to review come in its order.")
    assert "; AP50 needs 5 reviewed photos, some with boxes. It is now" in service.retrain_status(
        {**summary, "reviewed_ap50": None, "boxes": "cam"})


def test_a_trainings_progress_reads_the_same_in_the_review_and_fine_tune_tabs():
    assert epoch_progress({"stage": "detector", "epoch": 2, "epochs": 4, "step": 1, "steps": 2}) == \
        (0.375, "detector epoch 2/4")
    assert epoch_progress({"stage": "head", "epoch": 3, "epochs": 4, "val_accuracy": 0.5}) == (0.75, "epoch 3/4")


def test_the_box_editor_hands_the_service_the_pictures_name_and_the_boxes_as_sent(tmp_path):
    from gradio.data_classes import FileData
    from gradio_image_annotation.image_annotator import AnnotatedImageData

    from cam.ui.components import BoxEditor

    gone = tmp_path / "photo_3_0123abcd_p.jpg"  # Gradio's cached copy, expired: never read
    boxes = [{"xmin": "a", "ymin": 1, "scaleFactor": 2}]  # for the service to refuse in words (`checked_boxes`)
    payload = AnnotatedImageData(image=FileData(path=str(gone), orig_name=gone.name), boxes=boxes)
    assert BoxEditor(None).preprocess(payload) == {"image": gone.name, "boxes": boxes, "orientation": 0}
    assert BoxEditor(None).preprocess(None) is None


def test_the_keys_stand_down_while_the_annotators_label_editor_is_open():
    import gradio_image_annotation

    from cam.ui import review_tab

    bundle = "".join(p.read_text() for p in (Path(gradio_image_annotation.__file__).parent / "templates" /
                                            "component").glob("Index-*.js"))
    assert 'id="model-box-edit"' in bundle  # the editor the installed component opens
    assert 'document.querySelector("#review_annotator #model-box-edit")' in review_tab.KEYS


def test_every_review_event_is_named_and_guarded(tmp_path):
    from cam.ui import build_app

    from cam.ui import review_tab

    demo = build_app(ModelCache(tmp_path / "checkpoints"))
    # Every event whose function the tab defines (guarded or not): named by the tab, and guarded.
    mine = [fn for fn in demo.fns.values()
            if fn.fn is not None and getattr(fn.fn, "__wrapped__", fn.fn).__code__.co_filename == review_tab.__file__]
    assert len(mine) >= 20 and all(fn.api_name.startswith("review_") for fn in mine), [fn.api_name for fn in mine]
    assert [fn.api_name for fn in mine if not hasattr(fn.fn, "__wrapped__")] == []
    named = {fn.api_name: fn for fn in mine}
    assert {"review_open", "review_save", "review_download", "review_train"} <= {
        name for name, fn in named.items() if fn.api_visibility == "public"}
    api = demo.get_api_info()["named_endpoints"]
    assert [p["parameter_name"] for p in api["/review_open"]["parameters"]] == ["data", "coco", "choice"]
    assert [p["parameter_name"] for p in api["/review_save"]["parameters"]] == ["value"]
    assert api["/review_download"]["parameters"] == [] and len(api["/review_train"]["returns"]) == 2

    # A restarted server reads the review ids browsers hold: the same key and secret.
    import gradio as gr

    again = build_app(ModelCache(tmp_path / "checkpoints"))
    stores = [[(b.storage_key, b.secret) for b in app.blocks.values() if isinstance(b, gr.BrowserState)]
              for app in (demo, again)]
    assert stores[0] == stores[1] and len(stores[0]) == 1 and stores[0][0][0] == "cam-review-id"


def test_opening_a_dataset_keeps_the_earlier_review_and_after_a_restart_the_browsers_review_id_is_used(tmp_path):
    from cam.ui import build_app

    folder = tmp_path / "checkpoints"
    checkpoint = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"), folder, {}, {}).name
    demo = build_app(ModelCache(folder, runtime="torch"))
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    data = str(dataset_zip(tmp_path / "colours.zip", per_class=2))
    value, _, first = fns["review_open"].fn(data, None, checkpoint)
    assert fns["review_save"].fn(value, first)[1].startswith("Saved")
    _, _, second = fns["review_open"].fn(data, None, checkpoint)
    reviews = service.Reviews(folder / ".reviews")
    assert second != first and reviews.exists(first) and service.load(reviews, first)[2]["reviewed"]

    # A restarted server has no session state: each event the page sends first takes the id the browser holds.
    (review_key,) = fns["review_open"].outputs[-1:]
    for name in ("review_save", "review_skip", "review_back", "review_download", "review_train"):
        restore = demo.fns[fns[name].trigger_after]
        assert restore.api_name == f"review_restore_{name.split('_')[1]}" and not fns[name].trigger_only_on_success
        assert restore.outputs == [review_key] and restore.inputs[0] == review_key and review_key in fns[name].inputs
        assert type(restore.inputs[1]).__name__ == "BrowserState"
        assert restore.fn(None, first) == first and restore.fn(second, first) == second
    assert fns["review_skip"].fn(fns["review_restore_skip"].fn(None, first))[1].startswith("**1 of 6 reviewed**")

    # After a retraining, the photo still shown keeps its value (and the person's unsaved edits); another is shown anew.
    import gradio as gr

    shown, _, third = fns["review_open"].fn(data, None, checkpoint)
    on_page = {"image": Path(shown["image"]).name, "boxes": []}  # as BoxEditor hands it over
    assert fns["review_after_train"].fn(third, checkpoint, on_page)[0] == gr.skip()
    service.move(reviews, third, step=1)
    assert fns["review_after_train"].fn(third, checkpoint, on_page)[0] != gr.skip()


@pytest.mark.slow
@pytest.mark.browser
def test_browser_a_resized_box_is_kept_across_a_reload_downloads_exactly_and_retrains(server, tmp_path):
    from playwright.sync_api import expect

    from .test_app import ARTIFACTS, _app_page

    checkpoint = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"),
                                 server["checkpoints"], {}, {}).name
    data = tmp_path / "big.zip"  # 640 px photos: the shown photo is the photo
    with zipfile.ZipFile(data, "w") as archive:
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(2):
                archive.writestr(f"{name}/{i}.png", square_image(colour, seed=1000 * c + i, size=640))
    reviews = server["checkpoints"] / ".reviews"
    before = set(reviews.iterdir()) if reviews.is_dir() else set()
    with _app_page(server, 90_000) as page:
        page.get_by_role("tab", name="Review").click()
        page.locator("#review_zip input[type=file]").set_input_files(str(data))
        expect(page.locator("#review_zip").get_by_role("cell", name="big.zip")).to_be_visible()
        page.locator("#review_model input").fill(checkpoint)
        page.locator("#review_model input").press("Enter")
        page.get_by_role("button", name="Open for review").click()
        expect(page.locator("#review_status")).to_contain_text("0 of 6 reviewed")
        (folder,) = set(reviews.iterdir()) - before - {reviews / ".secret"}
        meta = json.loads((folder / "review.json").read_text())
        first = json.loads((folder / "saved.json").read_text())["current"]
        x0, y0, x1, y1, label = meta["proposals"][first][0]

        # Drag the box's bottom-right corner 140 px left and 160 px up (the photo is drawn centred, fitted).
        canvas = page.locator("#review_annotator canvas")
        expect(canvas).to_be_visible()
        page.wait_for_timeout(500)  # the picture drawn
        area = canvas.bounding_box()
        scale = min(area["width"] / 640, area["height"] / 640)
        left, top = area["x"] + (area["width"] - 640 * scale) / 2, area["y"] + (area["height"] - 640 * scale) / 2
        corner = (left + (x1 - 0.5) * scale, top + (y1 - 0.5) * scale)
        page.mouse.move(*corner)
        page.mouse.down()
        page.mouse.move(corner[0] - 70 * scale, corner[1] - 80 * scale, steps=5)
        page.mouse.move(corner[0] - 140 * scale, corner[1] - 160 * scale, steps=5)
        page.mouse.up()
        # The keys stand down while the box's label editor is open (a double click opens it).
        page.mouse.dblclick(left + (x0 + x1 - 140) / 2 * scale, top + (y0 + y1 - 160) / 2 * scale)
        editor = page.locator("#review_annotator #model-box-edit")
        expect(editor).to_be_visible()
        page.evaluate("document.activeElement.blur()")  # not in its text field either
        page.keyboard.press("s")
        page.wait_for_timeout(500)
        expect(page.locator("#review_status")).to_contain_text("0 of 6 reviewed")
        page.keyboard.press("Escape")  # the editor closes, the box as it was
        expect(editor).to_be_hidden()
        page.keyboard.press("s")  # save and next
        expect(page.locator("#review_status")).to_contain_text(f"Saved {first}. 1 of 6 reviewed")
        saved = json.loads((folder / "saved.json").read_text())["reviewed"][first]
        assert len(saved) == 1 and saved[0][:2] == [x0, y0] and saved[0][4] == label
        assert abs(saved[0][2] - (x1 - 140)) <= 2 and abs(saved[0][3] - (y1 - 160)) <= 2, (saved, x1, y1)

        page.reload()  # the browser keeps the review's id: it resumes
        page.get_by_role("tab", name="Review").click()
        expect(page.locator("#review_status")).to_contain_text("Resumed where you left off. 1 of 6 reviewed")
        expect(page.locator("#review_strip img")).to_have_count(1)
        page.locator("#review_strip img").first.click()  # back to the reviewed photo
        expect(page.locator("#review_status")).to_contain_text(f"{first} (boxes reviewed)")
        page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)
        # The page holds the saved box: saved again untouched, it keeps its exact pixels (the proposal would not).
        page.wait_for_timeout(500)  # the picture drawn
        page.keyboard.press("s")
        expect(page.locator("#review_status")).to_contain_text(f"Saved {first}. 1 of 6 reviewed")
        assert json.loads((folder / "saved.json").read_text())["reviewed"] == {first: saved}
        page.locator("#review_strip img").first.click()
        expect(page.locator("#review_status")).to_contain_text(f"{first} (boxes reviewed)")
        page.keyboard.press("k")  # skip
        expect(page.locator("#review_status")).not_to_contain_text(f"{first} (boxes reviewed)")
        page.keyboard.press("b")  # back
        expect(page.locator("#review_status")).to_contain_text(f"{first} (boxes reviewed)")
        page.get_by_role("button", name="Download reviewed boxes (COCO)").click()
        with page.expect_download() as download:
            page.locator("#review_coco_file a[download]").first.click()
        path = tmp_path / "reviewed.json"
        download.value.save_as(path)
        coco = json.loads(path.read_text())
        assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [(first, 640, 640)]
        (box,) = saved
        assert [a["bbox"] for a in coco["annotations"]] == [[box[0], box[1], box[2] - box[0], box[3] - box[1]]]

        # Retrain from the tab: the new checkpoint, selected in the Localize tab's menu.
        page.get_by_role("button", name="Retrain with my boxes").first.click()  # the accordion
        page.get_by_label("Classifier epochs").fill("2")
        page.get_by_label("Detector epochs").fill("2")
        page.locator("#review_train").click()
        expect(page.locator("#review_train_status")).to_contain_text("Done", timeout=120_000)
        new = page.locator("#review_train_status strong").first.inner_text()
        assert (server["checkpoints"] / new / "config.json").is_file()
        expect(page.locator("#review_model input")).to_have_value(new)
        page.get_by_role("tab", name="Localize").click()
        expect(page.locator("#model input")).to_have_value(new)


def test_a_page_opened_after_a_training_lists_the_new_checkpoint_in_every_model_menu(tmp_path):
    from cam.ui import build_app

    folder = tmp_path / "checkpoints"
    demo = build_app(ModelCache(folder))
    new = save_checkpoint(cam.load_model("timm:test_resnet", pretrained=False, device="cpu"), folder, {}, {}).name
    (load,) = [fn for fn in demo.fns.values() if fn.api_name == "model_menus"]
    assert any(target[1] == "load" for target in load.targets)
    menus = {demo.blocks[block._id].elem_id for block in load.outputs}
    assert {"model", "review_model", "collection_model"} <= menus, menus
    updates = load.fn()
    assert len(updates) == len(load.outputs)
    assert all([new, new] in [list(c) for c in update.choices] for update in updates)
