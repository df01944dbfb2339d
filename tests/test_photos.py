"""Phone-size photos: decoded at working size, boxed there, scaled to the photo; full size on demand."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

import cam
from cam.boxes import scale_box
from cam.data import WORK_SIDE, Photo, read_photo, read_photos
from cam.upsample import boxes_of_maps, normalise_for_size, photo_boxes, upsample_map

from .images import bomb_png, jpeg_bytes, png_bytes

# The stored pixels for each EXIF orientation: the inverse of what the tag asks the viewer to do.
STORED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, 1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
          8: lambda a: np.rot90(a, -1)}


def scene(height: int = 1536, width: int = 2048) -> np.ndarray:
    """A large photo-like scene: a dark textured field with a bright square off-centre and a
    coloured stripe along the top, so orientation and position are visible."""
    rng = np.random.default_rng(3)
    image = (rng.normal(60, 12, (height // 16, width // 16, 3)).clip(0, 255)).astype(np.uint8)
    image = np.kron(image, np.ones((16, 16, 1), np.uint8))
    image[height // 5:height // 2, width // 8:width // 2] = (230, 200, 40)
    image[:height // 16] = (30, 80, 220)
    return np.ascontiguousarray(image)


@pytest.fixture(scope="module")
def upright():
    return scene()


@pytest.mark.slow
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_upright_frame(orientation, upright, tiny_model, tmp_path):
    stored = np.ascontiguousarray(STORED[orientation](upright))
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(jpeg_bytes(stored, exif_orientation=orientation))
    reference = tmp_path / "upright.jpg"
    reference.write_bytes(jpeg_bytes(upright))

    photo, plain = read_photo(path, cover=288), read_photo(reference, cover=288)
    assert photo.size == upright.shape[:2] and photo.reduced
    assert photo.pixels.shape == plain.pixels.shape == (384, 512, 3)  # 1/4 DCT scale: 512 >= WORK_SIDE, 384 >= 288
    assert np.abs(photo.pixels.astype(int) - plain.pixels.astype(int)).mean() < 3  # the same frame, upright
    assert photo.pixels[5, 256, 2] > 180 and photo.pixels[120, 100, 0] > 180  # stripe on top, square top left

    turned, straight = cam.localize(tiny_model, path, topk=2), cam.localize(tiny_model, reference, topk=2)
    assert (turned.width, turned.height) == (2048, 1536)
    for a, b in zip(turned.predictions, straight.predictions):
        assert a.class_index == b.class_index
        assert np.abs(a.small_cam - b.small_cam).max() < 0.05
        assert cam.iou(a.boxes[0], b.boxes[0]) > 0.95


def test_a_jpeg_bomb_is_refused_before_it_is_decoded(monkeypatch, tmp_path):
    data = bytearray(jpeg_bytes(np.zeros((16, 16, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (30000).to_bytes(2, "big") * 2  # the frame header declares 30000 x 30000
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))
    for source in (path, bytes(data), tmp_path / "bomb.png"):
        (tmp_path / "bomb.png").write_bytes(bomb_png())
        with pytest.raises(ValueError, match="decompression bomb"):
            read_photo(source, cover=288)
    assert decoded == []


def source_size(source) -> tuple[int, int]:
    return np.asarray(Image.open(source) if not isinstance(source, (np.ndarray, Image.Image)) else source).shape[:2]


def test_small_photos_arrays_and_pil_images_stay_whole(upright, tmp_path):
    small = upright[:600, :800]
    (tmp_path / "small.jpg").write_bytes(jpeg_bytes(small))
    for source in (tmp_path / "small.jpg", small, Image.fromarray(upright)):
        photo = read_photo(source, cover=288)
        assert not photo.reduced and photo.pixels.shape[:2] == photo.size == source_size(source)
    assert read_photo(upright, cover=288).pixels is not None and read_photo(upright).pixels.shape == upright.shape
    photo = read_photo(tmp_path / "small.jpg")
    assert read_photo(photo) is photo  # a Photo passes through


def test_other_formats_are_decoded_then_shrunk_and_decode_in_full_on_demand(upright, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(upright))
    photo = read_photo(path, cover=288)
    assert photo.size == (1536, 2048) and photo.pixels.shape == (375, 500, 3)  # shrunk by area to WORK_SIDE
    assert max(photo.pixels.shape[:2]) >= WORK_SIDE and np.array_equal(photo.full(), upright)
    from_bytes = read_photo(png_bytes(upright), cover=288)
    assert from_bytes.reduced and np.array_equal(from_bytes.full(), upright)


def test_the_network_side_is_covered_for_panoramas(tmp_path):
    panorama = np.full((400, 4000, 3), 90, np.uint8)
    path = tmp_path / "pano.jpg"
    path.write_bytes(jpeg_bytes(panorama))
    photo = read_photo(path, cover=288)
    assert photo.pixels.shape[0] >= 288 and photo.size == (400, 4000)  # 1/8 would leave 50 rows: none taken


def test_photos_decode_in_parallel_in_order(upright, tmp_path):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(jpeg_bytes(np.ascontiguousarray(np.roll(upright, 100 * i, axis=1))))
    photos = read_photos(paths, cover=288)
    assert [p.source for p in photos] == paths
    for photo, path in zip(photos, paths):
        assert np.array_equal(photo.pixels, read_photo(path, cover=288).pixels)


@pytest.mark.parametrize("working, size", [((384, 512), (1536, 2048)), ((378, 504), (3024, 4032)),
                                           ((500, 333), (1999, 1333))])
@pytest.mark.slow
def test_boxes_cut_at_working_size_match_the_full_size_boxes(working, size):
    rng = np.random.default_rng(7)
    smalls = np.zeros((4, 9, 9), np.float32)
    smalls[0, 2:5, 3:7] = 1  # a block
    smalls[1, 4, 4] = 1  # a peak
    smalls[2] = rng.random((9, 9))  # noise: many regions
    smalls[3, 0, :] = 1  # along an edge
    for all_regions in (False, True):
        full = boxes_of_maps(smalls, size, 0.2, all_regions)
        scaled = photo_boxes(smalls, working, size, 0.2, all_regions)
        tolerance = 1.5 * max(size[0] / working[0], size[1] / working[1])  # a working pixel and rounding
        for a_list, b_list in zip(full, scaled):
            assert len(a_list) >= 1
            for a, b in zip(a_list[:1], b_list[:1]):  # the largest region is the same region
                assert max(abs(u - v) for u, v in zip(a, b)) <= tolerance, (a, b)
    assert photo_boxes(smalls, size, size, 0.2) == boxes_of_maps(smalls, size, 0.2)  # no scaling: the same boxes


def test_scale_box_maps_pixel_edges():
    assert scale_box((0, 0, 504, 378), (378, 504), (3024, 4032)) == (0, 0, 4032, 3024)
    assert scale_box((10, 20, 11, 21), (378, 504), (3024, 4032)) == (80, 160, 88, 168)
    assert scale_box((3, 3, 3, 3), (10, 10), (5, 5)) == (2, 2, 3, 3)  # never empty, never outside


def test_reduced_results_build_full_size_arrays_only_when_read(upright, tiny_model, tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_bytes(upright))
    result = cam.localize(tiny_model, path, topk=2)
    assert result.working_image.shape == (384, 512, 3) and result.size == (1536, 2048)
    assert "image" not in vars(result) and all("cam" not in vars(p) for p in result.predictions)
    for p in result.predictions:
        lazy = p.cam
        eager = upsample_map(normalise_for_size(p.small_cam, (1536, 2048)), (1536, 2048))
        assert lazy.shape == (1536, 2048) and lazy.min() >= 0 and lazy.max() <= 1
        assert np.array_equal(lazy, upsample_map(p.small_cam, (1536, 2048)))
        assert np.abs(lazy - eager).max() < 1e-5  # the small maps are already normalised for the photo's size
    assert np.array_equal(result.image, cam.load_image(path))  # the full photo, decoded again
    again = result.with_threshold(0.5)
    assert again.size == result.size and "image" not in vars(again)
    assert again.predictions[0].boxes == photo_boxes([result.predictions[0].small_cam], (384, 512), (1536, 2048), 0.5)[0]


def test_the_app_keeps_screen_size_pictures_of_a_phone_photo(upright, tiny_model, tmp_path):
    from cam.service import compact, views, write_downloads

    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_bytes(upright))
    result = compact(cam.localize(tiny_model, path, topk=2))
    overlay, boxes, _, table, data = views(result, 0.5, tmp_path)
    assert Image.open(overlay).size == Image.open(boxes).size == (512, 384)
    assert (data["width"], data["height"]) == (2048, 1536)
    assert result.working_image.nbytes < 1_000_000 and "image" not in vars(result)
    files = write_downloads(result, tmp_path, 0.5)
    assert [Image.open(f).size for f in files[:2]] == [(2048, 1536)] * 2


def test_a_changed_file_is_a_clear_error(upright, tiny_model, tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_bytes(upright))
    result = cam.localize(tiny_model, path, topk=1)
    path.write_bytes(jpeg_bytes(upright[:1200]))
    with pytest.raises(ValueError, match="changed"):
        result.image
    photo = Photo(np.zeros((10, 10, 3), np.uint8), (40, 40), io.BytesIO(b"").getvalue())
    with pytest.raises(ValueError):
        photo.full()
