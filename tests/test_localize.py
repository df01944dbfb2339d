import json

import numpy as np
import pytest
from PIL import Image

import cam
from cam.boxes import iou, region_boxes

from .conftest import EXAMPLES

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_result_contract(tiny_model, photo):
    result = cam.localize(tiny_model, photo, topk=3)
    assert len(result.predictions) == 3
    scores = [p.score for p in result.predictions]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for p in result.predictions:
        assert p.cam.shape == photo.shape[:2] and p.cam.dtype == np.float32
        assert p.cam.min() >= 0 and p.cam.max() <= 1
        for x0, y0, x1, y1 in p.boxes:
            assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 90
    data = json.loads(json.dumps(result.to_dict()))
    assert data["width"] == 120 and data["height"] == 90 and len(data["predictions"]) == 3
    assert set(data["predictions"][0]) == {"class_index", "label", "score", "boxes"}
    assert data["refined"] is True  # the recommended setting


def test_refine_spreads_a_map_over_the_pixels_whose_features_look_alike():
    import torch

    from cam.methods import refine_maps

    guide = torch.zeros(1, 2, 4, 4)
    guide[0, 0, :, :2] = 1.0  # left half: one feature direction
    guide[0, 1, :, 2:] = 3.0  # right half: an orthogonal one (the length does not matter)
    maps = torch.tensor([[[[3.0, 0.0], [1.0, -1.0]], [[0.0, 2.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    refined = refine_maps(maps, guide)
    left = torch.tensor([[1.0, 1, 0, 0]] * 4)
    torch.testing.assert_close(refined[0, 0], left, atol=1e-6, rtol=0)  # each half takes its own mean
    torch.testing.assert_close(refined[0, 1], 1 - left, atol=1e-6, rtol=0)
    assert not refined[0, 2].any()  # a flat map stays without a location
    assert cam.boxes_from_map(refined[0, 0].numpy(), 0.2) == [(0, 0, 2, 4)]

    guide[0, :, 0, 0] = 0.0  # a pixel without features has no neighbours: raw value 0, not NaN
    refined = refine_maps(maps, guide)
    assert torch.isfinite(refined).all() and 0 < refined[0, 0, 0, 0] < 1
    others = refined[0, 0].clone()
    others[0, 0] = 1
    torch.testing.assert_close(others, left, atol=1e-6, rtol=0)  # the other pixels are as before

    # a ramp guide: the result is a smoothed, squared, min-max normalised map on the guide's grid
    ramp = torch.stack([torch.ones(6, 6), torch.linspace(0, 1, 6).expand(6, 6)])[None]
    smooth = refine_maps(torch.tensor([[[[0.0, 0.0, 1.0]] * 3]]), ramp)
    assert smooth.shape == (1, 1, 6, 6) and smooth.min() == 0 and smooth.max() == 1
    assert (smooth[0, 0].diff(dim=1) >= 0).all()  # still rising towards the peak


def test_adapt_contrast_cuts_a_map_relative_to_its_mean():
    import torch

    from cam.methods import adapt_contrast

    ramp = torch.linspace(-1, 3, 16).view(1, 4, 4)  # min-max normalised: 0, 1/15, ..., 1; mean 0.5
    adapted = adapt_contrast(torch.stack([ramp, torch.zeros(1, 4, 4), 2 * ramp + 5]))
    scaled = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    expected = scaled ** (np.log(0.02) / np.log(0.15))  # 0.3 of the mean, 0.15, goes to 0.02
    torch.testing.assert_close(adapted[0], expected, atol=1e-6, rtol=0)
    assert adapted[0].min() == 0 and adapted[0].max() == 1
    assert torch.equal(adapted[0].flatten().argsort(), ramp.flatten().argsort())  # the order of the pixels is kept
    torch.testing.assert_close(adapted[2], adapted[0], atol=1e-6, rtol=0)  # scale and offset do not matter
    assert not adapted[1].any()  # a flat map stays without a location
    # the 20% cut of the adapted map is the cut at (0.3 * mean) ** 0.41 = 0.46 of the normalised one
    cut = 0.15 ** (np.log(0.2) / np.log(0.02))
    assert cam.boxes_from_map(adapted[0, 0].numpy(), 0.2) == region_boxes(scaled[0].numpy(), cut) == [(0, 1, 4, 4)]

    assert (adapted[0] <= scaled).all()  # 0.15 goes down to 0.02: a map spread wide is sharpened
    peaked = torch.zeros(1, 4, 4)
    peaked[0, 0, 0], peaked[0, 1, 1] = 1, 1 / 15  # mean 1 / 15: 0.3 of it is 0.02 already, so the power is 1
    torch.testing.assert_close(adapt_contrast(peaked), peaked, atol=1e-6, rtol=0)
    peaked[0, 1, 1] = 0.03  # 0.3 of the mean under 0.02: a peaked map is flattened
    assert adapt_contrast(peaked)[0, 1, 1] > 0.03 and adapt_contrast(peaked)[0, 0, 0] == 1


def test_quality_presets_set_the_map_options(tiny_model, photo):
    best = cam.localize(tiny_model, photo, topk=2, quality="best")
    explicit = cam.localize(tiny_model, photo, topk=2, input_size=288, flip=True, refine=True, adapt=True)
    assert best.adapted and best.to_dict()["adapted"] is True and best.refined
    np.testing.assert_array_equal(best.predictions[0].small_cam, explicit.predictions[0].small_cam)
    assert [p.boxes for p in best.predictions] == [p.boxes for p in explicit.predictions]
    plain = cam.localize(tiny_model, photo, topk=2, quality="plain")
    assert not plain.refined and not plain.adapted and plain.predictions[0].small_cam.shape == (5, 5)  # its own size
    adapted = cam.localize(tiny_model, photo, "plain", topk=2, adapt=True)  # a keyword replaces the preset's field
    assert adapted.adapted and not adapted.refined
    assert cam.localize(tiny_model, photo, cam.BEST, topk=2).predictions[0].boxes == best.predictions[0].boxes
    assert cam.localize(tiny_model, photo, topk=2).to_dict()["adapted"] is False  # the default: recommended
    with pytest.raises(ValueError, match="quality must be one of plain, recommended, best"):
        cam.localize(tiny_model, photo, quality="fast")
    with pytest.raises(TypeError, match="unexpected keyword argument 'treshold'"):
        cam.localize(tiny_model, photo, treshold=0.3)


def test_refine_off_or_without_a_guide_gives_the_exact_cams(tiny_model, photo):
    import dataclasses

    import torch

    from cam.methods import class_maps, forward_features
    from cam.upsample import normalise_for_size
    from cam.preprocess import preprocess

    plain = cam.localize(tiny_model, photo, topk=3, refine=False)
    no_guide = cam.localize(dataclasses.replace(tiny_model, guide_layer=None), photo, topk=3, refine=True)
    refined = cam.localize(tiny_model, photo, topk=3)
    assert not plain.refined and not no_guide.refined and refined.refined
    logits, features, guide = forward_features(tiny_model, preprocess(tiny_model, [photo], (288, 288)))
    assert guide is None
    indices = torch.tensor([[p.class_index for p in plain.predictions]])
    expected = normalise_for_size(class_maps(tiny_model, features, indices)[0].numpy(), photo.shape[:2])
    for result in (plain, no_guide):
        np.testing.assert_array_equal(np.stack([p.small_cam for p in result.predictions]), expected)
    assert [p.class_index for p in refined.predictions] == indices[0].tolist()  # refining changes maps, not classes
    assert refined.predictions[0].small_cam.shape == (18, 18) and plain.predictions[0].small_cam.shape == (9, 9)


def test_batch_equals_single(tiny_model, photo):
    other = photo[:, ::-1].copy()
    batch = cam.localize_batch(tiny_model, [photo, other], topk=2)
    for single_input, from_batch in zip([photo, other], batch):
        single = cam.localize(tiny_model, single_input, topk=2)
        assert [p.class_index for p in single.predictions] == [p.class_index for p in from_batch.predictions]
        np.testing.assert_allclose(single.predictions[0].cam, from_batch.predictions[0].cam, atol=1e-5)


def test_array_views_and_read_only_arrays_give_the_same_result(tiny_model, photo):
    mirrored = photo[:, ::-1]  # a view with a negative stride
    read_only = photo.copy()
    read_only.flags.writeable = False
    for view, plain in ((mirrored, mirrored.copy()), (read_only, photo)):
        a, b = cam.localize(tiny_model, view, topk=2), cam.localize(tiny_model, plain, topk=2)
        assert [p.class_index for p in a.predictions] == [p.class_index for p in b.predictions]
        assert np.array_equal(a.predictions[0].cam, b.predictions[0].cam)
    assert not read_only.flags.writeable and np.array_equal(read_only, photo)  # the caller's array untouched


def test_with_threshold_reboxes_without_the_network(tiny_model, photo):
    result = cam.localize(tiny_model, photo, topk=2, threshold=0.2)
    tight = result.with_threshold(0.9)
    assert tight.threshold == 0.9
    for loose_p, tight_p in zip(result.predictions, tight.predictions):
        assert tight_p.boxes == cam.boxes_from_map(loose_p.cam, 0.9)
        assert tight_p.small_cam is loose_p.small_cam


@pytest.mark.parametrize("kwargs, word", [
    ({"topk": 0}, "topk"), ({"topk": 10000}, "topk"), ({"topk": 2.5}, "topk"),
    ({"threshold": -1}, "threshold"), ({"threshold": 2}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"input_size": 5}, "input_size"),
])
def test_out_of_range_parameters(tiny_model, photo, kwargs, word):
    with pytest.raises(ValueError, match=word):
        cam.localize(tiny_model, photo, **kwargs)


def test_wrong_model_type(photo):
    with pytest.raises(TypeError):
        cam.localize("default", photo)


def test_default_model_on_examples(default_model):
    files = ["chelsea.png", "coffee.png", "grace_hopper.jpg"]
    results = cam.localize_batch(default_model, [EXAMPLES / f for f in files], topk=5)
    top = [r.predictions[0].class_index for r in results]
    assert top[0] in CATS
    assert top[1] == 967  # espresso
    assert top[2] == 652  # military uniform
    for result in results:
        for x0, y0, x1, y1 in result.predictions[0].boxes:
            assert 0 <= x0 < x1 <= result.width and 0 <= y0 < y1 <= result.height


def test_default_model_box_finds_a_cat_placed_in_a_larger_scene(default_model):
    """The cat photo pasted at a known place in a grey canvas: the box must land on it."""
    cat = np.asarray(Image.open(EXAMPLES / "chelsea.png").convert("RGB"))
    canvas = np.full((600, 900, 3), 128, np.uint8)
    x0, y0 = 420, 250
    canvas[y0:y0 + cat.shape[0], x0:x0 + cat.shape[1]] = cat
    truth = (x0, y0, x0 + cat.shape[1], y0 + cat.shape[0])
    result = cam.localize(default_model, canvas, topk=1)
    assert result.predictions[0].class_index in CATS
    top = result.predictions[0]
    assert top.cam.shape == (600, 900)
    peak_y, peak_x = np.unravel_index(top.cam.argmax(), top.cam.shape)
    assert truth[0] <= peak_x < truth[2] and truth[1] <= peak_y < truth[3]
    assert iou(top.boxes[0], truth) >= 0.4
    assert top.cam[50, 50] < 0.2 and top.cam[:100, :200].mean() < 0.1  # the empty corner stays cold


@pytest.mark.slow
def test_large_photos_are_shown_scaled_and_downloaded_at_full_size(tiny_model, tmp_path):
    from cam.service import DISPLAY_SIDE, views, write_downloads

    photo = np.random.default_rng(1).integers(0, 256, (1800, 2400, 3), dtype=np.uint8)
    result = cam.localize(tiny_model, photo, topk=2)
    overlay, boxes, tiles, table, data = views(result, 0.5, tmp_path)
    for picture in (overlay, boxes):
        assert Image.open(picture).size == (DISPLAY_SIDE, 1200)
    assert all(max(Image.open(tile).size) <= 320 for tile, _ in tiles)
    assert [json.loads(row[3]) for row in table] == [[list(b) for b in p.boxes] for p in result.predictions]
    assert data["width"] == 2400  # numbers stay in the photo's own pixels
    files = write_downloads(result, tmp_path, 0.5)
    assert [Image.open(f).size for f in files[:2]] == [(2400, 1800)] * 2
    assert np.load(files[3]).shape == (2, 1800, 2400)


def test_scaled_pictures_scale_the_boxes(tiny_model, photo):
    from cam.service.outputs import _scaled_result

    result = cam.localize(tiny_model, photo, topk=1)
    result.predictions[0].boxes = [(0, 0, 120, 90), (30, 45, 31, 46)]
    half = _scaled_result(result, 60)
    assert half.image.shape == (45, 60, 3) and half.predictions[0].cam.shape == (45, 60)
    assert half.predictions[0].boxes == [(0, 0, 60, 45), (15, 22, 16, 23)]  # a 1-pixel box stays a box
    assert _scaled_result(result, 500) is result  # never enlarged


def test_full_size_maps_are_made_on_first_read_and_dropped_by_compact(tiny_model, photo):
    from cam.service import compact

    result = cam.localize(tiny_model, photo, topk=3)
    assert all("cam" not in vars(p) and p.small_cam.shape == (18, 18) for p in result.predictions)  # 288 px, refined
    first = [p.cam for p in result.predictions]
    assert all(p.cam is m for p, m in zip(result.predictions, first))  # made once, then kept
    kept = compact(result)
    assert all("cam" not in vars(p) for p in kept.predictions)
    for original, again in zip(first, kept.predictions):
        assert np.array_equal(original, again.cam)


@pytest.mark.slow
def test_upsampling_is_torchs_bilinear_with_pixel_centres_aligned():
    import torch
    import torch.nn.functional as F

    from cam.upsample import upsample_map

    rng = np.random.default_rng(1)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 20, 2))
        size = tuple(int(v) for v in rng.integers(1, 900, 2))  # mostly up, sometimes down
        small = rng.normal(size=(h, w)).astype(np.float32)
        full = upsample_map(small, size)
        reference = F.interpolate(torch.from_numpy(small)[None, None], size=size, mode="bilinear", align_corners=False)
        assert full.dtype == np.float32 and full.shape == size
        np.testing.assert_allclose(full, reference[0, 0].numpy(), atol=1e-5)


@pytest.mark.slow
def test_maps_are_normalised_after_upsampling_without_a_pass_over_the_big_map():
    from cam.upsample import normalise_for_size, upsample_map

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(1, 12, 2)
        size = tuple(int(v) for v in rng.integers(2, 700, 2))
        raw = rng.normal(size=(2, h, w)).astype(np.float32) * 10
        raw[1] = 3.0  # a flat map carries no location
        small = normalise_for_size(raw, size)
        full = upsample_map(small[0], size)
        # What wsolevaluation does (upsample the raw map, then min-max normalise it), to 1e-5.
        reference = upsample_map(raw[0], size).astype(np.float64)
        span = reference.max() - reference.min()
        if span > 1e-4:
            np.testing.assert_allclose(full, (reference - reference.min()) / span, atol=1e-5)
            assert 0 <= full.min() <= 2e-6 and 1 - 2e-6 <= full.max() <= 1
        assert not small[1].any()
    # The peak between samples: a 3x3 map whose maximum the 8x8 pixel grid does not hit.
    peaked = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32)
    assert upsample_map(peaked, (8, 8)).max() < 0.9
    assert upsample_map(normalise_for_size(peaked, (8, 8)), (8, 8)).max() > 1 - 2e-6


def test_boxes_cut_band_by_band_equal_the_boxes_of_each_upsampled_map(monkeypatch):
    import importlib

    localize_module = importlib.import_module("cam.upsample")
    monkeypatch.setattr(localize_module, "BAND_PIXELS", 4096)  # many bands even for small maps
    rng = np.random.default_rng(2)
    for trial in range(400):
        h, w = (int(v) for v in rng.integers(1, 14, 2))
        size = tuple(int(v) for v in rng.integers(1, 500, 2))
        small = (rng.random((h, w)) - 0.2).astype(np.float32)
        if trial % 2:
            small = np.round(small * 2) / 2  # ties: flat tops where float rounding decides the maximum
        if trial % 5:  # else a raw map, in any range and scale
            small = localize_module.normalise_for_size(small, size)
        elif trial % 10:
            small = small * 1000
        full = localize_module.upsample_map(small, size)
        threshold, every = float(rng.choice([0.0, 0.2, 0.5, 0.9, 1.0])), bool(trial % 3 == 0)
        if trial % 4 == 0 and full.max() > 0:  # a pixel exactly at the cut: only the exact maximum gets it right
            at_or_above_zero = full[full >= 0]
            threshold = float(at_or_above_zero[rng.integers(at_or_above_zero.size)]) / float(full.max())
        expected = cam.boxes_from_map(full, threshold, every)
        other = rng.random((h, w)).astype(np.float32)  # cut in the same buffers first
        both = localize_module.boxes_of_maps([other, small], size, threshold, every)
        assert both == [cam.boxes_from_map(localize_module.upsample_map(other, size), threshold, every), expected]


@pytest.mark.slow
def test_localize_boxes_are_the_paper_rule_on_the_returned_maps(default_model):
    for path in sorted(EXAMPLES.glob("*.png"))[:3]:
        for input_size, refine in ((None, False), (None, True), (288, True)):
            result = cam.localize(default_model, path, input_size=input_size, threshold=0.3, refine=refine)
            assert result.refined == refine
            for p in result.predictions:
                assert p.boxes == cam.boxes_from_map(p.cam, 0.3)
                assert abs(float(p.cam.max()) - 1) < 2e-6 and float(p.cam.min()) < 2e-6


def test_output_folders_expire(tmp_path):
    import os
    import time

    from cam.service import OutputFolders

    folders = OutputFolders(max_age=60)
    fresh, old = folders.new(), folders.new()
    (old / "overlay.jpg").write_bytes(b"x")
    os.utime(old, (time.time() - 120,) * 2)
    folders.sweep()
    assert fresh.exists() and not old.exists()


def test_inference_batches_hold_at_most_250k_pixels_on_a_cpu(tiny_model):
    from cam.preprocess import inference_batch_size

    sizes = [(224, 224), (288, 288), (320, 320), (384, 384), (1024, 1024), (96, 96)]
    assert [inference_batch_size(tiny_model, s) for s in sizes] == [4, 3, 2, 1, 1, 27]
    from dataclasses import replace

    compiled = replace(tiny_model, runtime="openvino")  # OpenVINO's time per image falls with the batch
    assert [inference_batch_size(compiled, s) for s in sizes] == [4, 4, 4, 4, 1, 4]
