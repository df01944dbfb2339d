"""The app's live webcam mode at the package level: one frame in, one picture and caption out."""

import base64
import shutil

import cv2
import numpy as np
import pytest

import cam
from cam.localize import localize
from cam.service import LIVE_SIDE, ModelCache, live_frame
from cam.checkpoint import save_checkpoint

from .conftest import EXAMPLES
from .images import hostile_files, jpeg_bytes

pytestmark = pytest.mark.slow  # the default model on the app's runtime


def _decode(url: str) -> np.ndarray:
    header, _, data = url.partition(",")
    assert header == "data:image/jpeg;base64"
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ModelCache(tmp_path_factory.mktemp("checkpoints"), device="cpu")


def test_a_frame_gives_the_picture_and_caption_of_localize(cache):
    frame = cv2.resize(cam.data.load_image(EXAMPLES / "chelsea.png"), (640, 480))
    url, caption = live_frame(cache, "default", jpeg_bytes(frame), topk=3)
    picture = _decode(url)
    assert picture.shape == (480, 640, 3)
    decoded = cam.data.load_image(jpeg_bytes(frame))  # the frame as the server sees it
    expected = localize(cache.get("default"), decoded, topk=3)
    assert caption == " · ".join(f"**{p.label}** {p.score:.2f}" for p in expected.predictions)
    drawn = cam.render.heatmap_with_boxes(expected)
    assert np.abs(picture.astype(int) - drawn).mean() < 3  # the same picture, up to JPEG's loss


def test_a_large_frame_is_localized_at_the_live_size(cache):
    frame = cv2.resize(cam.data.load_image(EXAMPLES / "coffee.png"), (1920, 1080))
    url, caption = live_frame(cache, "default", frame, topk=1)
    assert _decode(url).shape == (LIVE_SIDE * 1080 // 1920, LIVE_SIDE, 3)
    assert "espresso" in caption


@pytest.mark.parametrize("name", sorted(hostile_files(np.zeros((40, 40, 3), np.uint8))))
def test_a_hostile_frame_is_one_clear_error(cache, name):
    data = hostile_files(np.full((40, 40, 3), 128, np.uint8))[name]
    with pytest.raises(ValueError, match="image|pixels"):
        live_frame(cache, "default", data)


def test_a_checkpoint_deleted_mid_stream_is_a_readable_message(cache):
    model = cam.load_model("timm:test_resnet", pretrained=False, device="cpu")
    checkpoint = save_checkpoint(model, cache.checkpoints, {}, {})
    frame = np.full((60, 80, 3), 90, np.uint8)
    assert live_frame(cache, checkpoint.name, frame, topk=2)[1].count("**") == 4
    shutil.rmtree(checkpoint)
    with pytest.raises(ValueError, match=f"unknown model '{checkpoint.name}'"):
        live_frame(cache, checkpoint.name, frame)


def test_the_stream_components_pass_frames_as_bytes_and_pictures_as_data_urls():
    import gradio as gr
    from gradio.data_classes import ImageData

    from cam.ui.components import LiveInput, LiveOverlay

    frame = jpeg_bytes(np.full((8, 8, 3), 200, np.uint8))
    url = "data:image/jpeg;base64," + base64.b64encode(frame).decode()
    assert LiveInput(sources=["webcam"], streaming=True).preprocess(ImageData(url=url)) == frame
    with pytest.raises(gr.Error, match="cannot read"):
        LiveInput(sources=["webcam"], streaming=True).preprocess(ImageData(url="data:image/jpeg;base64,not base64!"))
    shown = LiveOverlay().postprocess(url)
    assert shown.url == url and shown.path is None  # nothing written to Gradio's cache
