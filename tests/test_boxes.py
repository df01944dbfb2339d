import math

import cv2
import numpy as np
import pytest

from cam.boxes import boxes_from_map, iou, mask_boxes


def test_one_blob_exact_box():
    cam = np.zeros((4, 5), np.float32)
    cam[1:3, 2:4] = 1.0
    assert boxes_from_map(cam, 0.5) == [(2, 1, 4, 3)]


def test_threshold_is_relative_to_the_max():
    cam = np.array([[0.0, 0.1, 0.3, 0.0, 0.0],
                    [0.0, 0.5, 1.0, 0.6, 0.0],
                    [0.0, 0.0, 0.4, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.05]], np.float32)
    assert boxes_from_map(cam, 0.5) == [(1, 1, 4, 2)]
    assert boxes_from_map(cam * 10, 0.5) == [(1, 1, 4, 2)]
    assert boxes_from_map(cam, 0.25) == [(1, 0, 4, 3)]


def test_two_blobs_largest_and_all():
    cam = np.zeros((6, 8), np.float32)
    cam[0:2, 0:2] = 0.9  # 4 pixels
    cam[3:6, 4:8] = 1.0  # 12 pixels
    assert boxes_from_map(cam, 0.2) == [(4, 3, 8, 6)]
    assert boxes_from_map(cam, 0.2, all_regions=True) == [(4, 3, 8, 6), (0, 0, 2, 2)]


def test_diagonal_pixels_are_one_region():
    cam = np.eye(4, dtype=np.float32)
    assert boxes_from_map(cam, 0.5) == [(0, 0, 4, 4)]


def test_a_region_inside_another_ones_hole_counts_and_can_be_the_largest():
    cam = np.zeros((13, 13), np.float32)
    cam[0, :] = cam[-1, :] = cam[:, 0] = cam[:, -1] = 1.0  # a thin ring: 48 pixels
    cam[2:11, 2:11] = 0.8  # a 9x9 square inside its hole: 81 pixels
    assert boxes_from_map(cam, 0.5) == [(2, 2, 11, 11)]
    assert boxes_from_map(cam, 0.5, all_regions=True) == [(2, 2, 11, 11), (0, 0, 13, 13)]


def test_a_region_is_sized_by_its_pixels_not_the_area_its_border_encloses():
    cam = np.zeros((10, 22), np.float32)
    cam[0:10, 0:10] = 1.0
    cam[1:9, 1:9] = 0.0  # a 10x10 frame: 36 pixels around a hole of 64
    cam[0:7, 12:19] = 0.9  # a solid 7x7 square: 49 pixels
    assert boxes_from_map(cam, 0.5) == [(12, 0, 19, 7)]


def test_regions_match_connected_component_labelling_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(600):
        mask = rng.random(rng.integers(1, 40, 2)) < rng.uniform(0.05, 0.8)
        if trial % 2:
            mask = cv2.dilate(mask.view(np.uint8), np.ones((2, 2), np.uint8)).view(bool)
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
        expected = {(x, y, x + w, y + h): n for x, y, w, h, n in stats[1:].tolist()}
        boxes = mask_boxes(mask, all_regions=True)
        assert sorted(boxes) == sorted(expected)
        assert [expected[b] for b in boxes] == sorted(expected.values(), reverse=True)
        assert mask_boxes(mask) == boxes[:1]


def test_flat_map_has_no_box_and_full_map_covers_all():
    assert boxes_from_map(np.zeros((4, 5)), 0.2) == []
    assert boxes_from_map(np.ones((4, 5)), 0.2) == [(0, 0, 5, 4)]


@pytest.mark.parametrize("bad", [np.full((4, 5), np.nan), np.zeros((2, 3, 4)), np.zeros((0, 3))])
def test_invalid_maps_raise(bad):
    with pytest.raises(ValueError):
        boxes_from_map(bad, 0.2)


@pytest.mark.parametrize("threshold", [-1, 2, math.nan, "x"])
def test_invalid_thresholds_raise(threshold):
    with pytest.raises(ValueError, match="threshold"):
        boxes_from_map(np.ones((4, 5)), threshold)


def test_iou_values():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 2, 2), (0.5, 0.5, 1.5, 1.5)) == pytest.approx(0.25)
