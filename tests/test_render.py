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
