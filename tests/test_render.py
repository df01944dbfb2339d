import numpy as np
import pytest

from cam import render
from cam.localize import Prediction, Result


def _result():
    image = np.full((120, 160, 3), 100, np.uint8)
    cam = np.zeros((120, 160), np.float32)
    cam[20:60, 40:100] = 1.0
    prediction = Prediction(3, "widget", 0.75, [(40, 20, 100, 60)], cam, cam.shape)  # upsampled to its own size: itself
    return Result([prediction], image, "test", 0.2, False)


def test_heatmap_colours_known_pixels():
    cam = np.array([[0.0, 1.0]], np.float32)
    hot = render.heatmap(cam, "inferno")
    assert hot.shape == (1, 2, 3) and hot.dtype == np.uint8
    assert hot[0, 0].sum() < 60 and hot[0, 1].sum() > 500  # inferno: black to pale yellow


def test_overlay_blends_by_opacity():
    result = _result()
    p = result.predictions[0]
    assert (render.overlay(result.image, p.cam, 0.0) == result.image).all()
    full = render.overlay(result.image, p.cam, 1.0)
    assert (full == render.heatmap(p.cam)).all()
    half = render.overlay(result.image, p.cam, 0.5)
    assert half.shape == (120, 160, 3) and half.dtype == np.uint8
    with pytest.raises(ValueError):
        render.overlay(result.image, p.cam, 1.5)
    with pytest.raises(ValueError):
        render.overlay(result.image, p.cam[:10], 0.5)


def test_boxes_are_drawn_where_they_are():
    result = _result()
    drawn = render.draw_boxes(result.image, result)
    assert drawn.shape == (120, 160, 3)
    colour = np.array(render.PALETTE[0])
    assert (drawn[59, 70] == colour).all()  # bottom edge: the box's last row
    assert (drawn[40, 99] == colour).all()  # right edge: its last column
    assert (drawn[40, 70] == 100).all()  # interior untouched
    assert (drawn[90, 130] == 100).all()  # outside untouched
    assert (drawn[10, 45] == colour).any() or (drawn[10, 45] != 100).any()  # caption tab above the box


def test_captions_of_boxes_that_share_a_corner_do_not_cover_each_other():
    image = np.full((200, 300, 3), 100, np.uint8)
    cam = np.zeros((200, 300), np.float32)
    same_box = [(0, 0, 300, 200)]  # both at the image's corner: no room above, both captions inside
    predictions = [Prediction(i, name, score, same_box, cam, cam.shape) for i, (name, score) in enumerate([("first", 0.6), ("second", 0.3)])]
    drawn = render.draw_boxes(image, Result(predictions, image, "test", 0.2, False))

    def tab_rows(rank):  # rows where the caption tab of this rank shows a run of its colour
        hits = (drawn == np.array(render.PALETTE[rank])).all(2)
        return {y for y in range(2, 198) if hits[y, 2:30].sum() >= 10}  # inside the outline

    first, second = tab_rows(0), tab_rows(1)
    assert len(first) >= 5 and len(second) >= 5, "a caption tab is hidden"
    assert max(first) < min(second), "the second caption should sit below the first"


def test_gallery_has_one_tile_per_class_captioned_with_the_method():
    from dataclasses import replace

    tiles = render.gallery(_result())
    assert len(tiles) == 1 and tiles[0][0].shape == (120, 160, 3) and tiles[0][1] == "widget (75.0%) · CAM"
    assert render.gallery(replace(_result(), method="gradcam++", refined=True))[0][1] == \
        "widget (75.0%) · Grad-CAM++, refined"


def test_the_contact_sheet_captions_a_detectors_box_by_its_own_score(tiny_model, tmp_path, monkeypatch):
    """The Collection tab's contact sheet captions a detector's box with the box's own score, as the
    Localize tab's pictures do (`draw_boxes`), and a box cut from the maps with its class's score."""
    from types import SimpleNamespace

    from PIL import ImageDraw

    import cam.label
    from cam.service import label_collection

    from .conftest import EXAMPLES

    real_label, records = cam.label.label, []

    def detector_label(*args, on_record, **kwargs):  # coffee.png's record as a detector checkpoint logs it
        def as_detected(record, item):
            if record["file"] == "coffee.png":
                w, h = record["width"], record["height"]
                record["box_source"] = "detector"
                for p in record["predictions"]:
                    p["boxes"], p["box_scores"] = [[0, 0, w // 2, h], [w // 2, 0, w, h]], [0.87, 0.42]
            records.append(record)
            on_record(record, item)
        return real_label(*args, on_record=as_detected, **kwargs)

    drawn = []
    real_text = ImageDraw.ImageDraw.text

    def text(self, xy, caption, *args, **kwargs):  # every caption drawn on a picture
        drawn.append(caption)
        return real_text(self, xy, caption, *args, **kwargs)

    monkeypatch.setattr(cam.label, "label", detector_label)
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    sheet, summary, _ = label_collection(SimpleNamespace(get=lambda choice: tiny_model), "default",
                                         [EXAMPLES / "coffee.png", EXAMPLES / "chelsea.png"], tmp_path)
    assert summary["labelled"] == 2 and len(sheet) == 2
    detected, mapped = records
    [top] = detected["predictions"]  # the top class: `cam label`'s default for a classifier
    assert f"{top['score']:.2f}" not in ("0.87", "0.42")
    assert drawn == [f"{top['label']} 0.87", f"{top['label']} 0.42"] + \
        [f"{p['label']} {p['score']:.2f}" for p in mapped["predictions"] for _ in p["boxes"]]
