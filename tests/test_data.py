import numpy as np
import pytest
from PIL import Image

from cam.data import find_images, load_image

from .images import hostile_files, jpeg_bytes, png_bytes


@pytest.fixture
def gradient():
    """A 40x60 image, left half red, right half blue: orientation is visible."""
    array = np.zeros((40, 60, 3), np.uint8)
    array[:, :30, 0] = 255
    array[:, 30:, 2] = 255
    return array


@pytest.mark.parametrize("name", list(hostile_files(np.zeros((32, 32, 3), np.uint8))))
def test_hostile_files_are_refused_with_a_message(name, tmp_path, photo):
    data = hostile_files(photo)[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        load_image(path)
    assert name in str(info.value) and len(str(info.value)) > len(str(path)) + 10
    with pytest.raises(ValueError):
        load_image(data)


def test_missing_file_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(TypeError):
        load_image(3.5)
    with pytest.raises(ValueError, match="uint8"):
        load_image(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((20, 20, 2), np.uint8))


def test_exif_rotation_comes_out_upright(gradient, tmp_path):
    # Orientation 6: the stored pixels must be rotated 90 degrees clockwise to display upright.
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg_bytes(gradient, exif_orientation=6))
    upright = load_image(path)
    assert upright.shape == (60, 40, 3)
    assert upright[5, 20, 0] > 200 and upright[55, 20, 2] > 200  # red on top, blue below


def test_modes_convert_to_rgb(gradient, tmp_path):
    sixteen = (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    out = load_image(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3) and out.max() > 200 and out.min() == 0

    Image.fromarray(gradient).convert("CMYK").save(tmp_path / "print.jpg")
    cmyk = load_image(tmp_path / "print.jpg")
    assert cmyk.shape == (40, 60, 3) and cmyk[20, 10, 0] > 200 and cmyk[20, 50, 2] > 200

    palette = Image.fromarray(gradient).convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(tmp_path / "clear.png", transparency=palette.getpixel((0, 0)))
    clear = load_image(tmp_path / "clear.png")
    assert tuple(clear[20, 10]) == (255, 255, 255)  # transparent red becomes the white background

    rgba = np.dstack([gradient, np.full((40, 60), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    assert tuple(load_image(png_bytes(rgba))[5, 5]) == (255, 255, 255)
    assert load_image(np.zeros((20, 30), np.uint8)).shape == (20, 30, 3)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(tmp_path / "anim.gif")
    assert out.shape == (20, 30, 3) and out[10, 10, 0] > 200 and out[10, 10, 1] < 50


def test_pil_and_bytes_inputs(gradient):
    assert load_image(Image.fromarray(gradient)).shape == (40, 60, 3)
    assert load_image(png_bytes(gradient)).shape == (40, 60, 3)


def test_find_images_walks_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.jpg", "a/b/two.PNG", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = find_images([tmp_path / "a"])
    assert [p.name for p in found] == ["two.PNG", "one.jpg"]  # sorted by path: a/b/... before a/one.jpg
