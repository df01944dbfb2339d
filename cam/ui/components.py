"""Gradio components the tabs share: inputs that refuse unreadable files in words a person reads,
a box editor whose boxes the service checks, the webcam's frames as bytes, pictures as data URLs,
and the example photos."""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData, GradioModel, ImageData
from gradio_image_annotation import image_annotator

from ..service import EXAMPLES, without_folders

log = logging.getLogger("cam.ui")


class PhotoInput(gr.Image):
    """gr.Image whose unreadable uploads raise a message a person understands, not a preprocessing dump."""

    is_template = True  # drawn by the frontend as a plain Image

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:
            log.warning("unreadable upload: %s: %s", type(exc).__name__, exc)
            raise gr.Error("This file is not an image this app can read. "
                           "Upload a JPEG, PNG, BMP, GIF, WebP or TIFF photo.") from None


class SentBoxes(GradioModel):
    """The box editor's value as a browser or an API caller sends it: boxes and turn unchecked here."""

    image: FileData
    boxes: list[Any] = []
    orientation: Any = 0


class BoxEditor(image_annotator):
    """image_annotator whose value reaches the handler as sent: the picture by its file name alone
    (which photo, `cam.service.reviews.photo_of`) and the boxes raw, for the service to check
    (`checked_boxes`), so that a malformed box gets its one-line message. A save decodes no picture
    and needs no cached copy of it."""

    is_template = True  # drawn by the frontend as image_annotator, from its files
    data_model = SentBoxes

    @classmethod
    def get_component_class_id(cls) -> str:
        return image_annotator.get_component_class_id()

    def preprocess(self, payload):
        if payload is None:
            return None
        return {"image": Path(payload.image.orig_name or payload.image.path).name, "boxes": payload.boxes,
                "orientation": payload.orientation}


class LiveInput(gr.Image):
    """The webcam stream's input: each frame's JPEG bytes, for the package's guarded loader to decode."""

    is_template = True

    def preprocess(self, payload):
        if payload is not None and payload.url and payload.url.startswith("data:image/"):
            try:
                return base64.b64decode(payload.url.partition(",")[2], validate=True)
            except ValueError:
                raise gr.Error("The webcam sent a frame this app cannot read.") from None
        return super().preprocess(payload)


class LiveOverlay(gr.Image):
    """An output picture that takes a data URL as it is: live frames are never written to disk."""

    is_template = True

    def postprocess(self, value):
        if isinstance(value, str) and value.startswith("data:image/"):
            return ImageData(url=value)
        return super().postprocess(value)


def example_photos() -> list[Path]:
    """The example photos, those the ImageNet model gets right first (the gallery opens on them);
    the astronaut, whose top class is 'bobsled', last."""
    first, last = ["coffee.png", "chelsea.png", "flower.jpg", "grace_hopper.jpg"], ["astronaut.png"]
    photos = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg")) if EXAMPLES.is_dir() else []
    return sorted(photos, key=lambda p: (p.name in last, first.index(p.name) if p.name in first else len(first)))


def model_menu(cache, **options) -> gr.Dropdown:
    """A model menu ('default' and the checkpoints) that lists checkpoints trained since the page loaded
    whenever it is opened."""
    menu = gr.Dropdown(cache.choices(), value="default", **options)
    menu.focus(lambda: gr.Dropdown(choices=cache.choices()), None, menu, api_visibility="private")
    menu.model_menu = True  # its choices are also filled on page load (`refresh_on_load`)
    return menu


def refresh_on_load(demo: gr.Blocks, cache, *menus: gr.Dropdown) -> None:
    """Fill the choices of `menus` and of every `model_menu` of `demo` when a page loads: a page opened
    after a training lists its checkpoint without a click on Refresh. Call once the tabs are built, inside the Blocks."""
    def found(block):
        for child in getattr(block, "children", []):
            if getattr(child, "model_menu", False):
                yield child
            yield from found(child)

    menus = [*menus, *found(demo)]
    demo.load(lambda: [gr.Dropdown(choices=cache.choices()) for _ in menus], None, menus, api_name="model_menus",
              api_visibility="private", show_progress="hidden")


UNEXPECTED = "something went wrong (logged)"


def guarded(handler):
    """`handler` (an event's function, plain or generator) whose unexpected errors reach the visitor
    as one line, UNEXPECTED, and the log in full: an exception's own text can name the server's
    folders. Its gr.Errors (the expected, readable ones) pass through. Gradio reads the handler's
    signature (gr.Progress) through `functools.wraps`."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(*args, **kwargs):
            with _unexpected_errors_logged(handler):
                yield from handler(*args, **kwargs)
        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        with _unexpected_errors_logged(handler):
            return handler(*args, **kwargs)
    return call


@contextlib.contextmanager
def _unexpected_errors_logged(handler):
    """Inside: an exception other than gr.Error is logged with its traceback and becomes gr.Error(UNEXPECTED)."""
    try:
        yield
    except gr.Error:
        raise
    except Exception:
        log.exception("unexpected error in %s", getattr(handler, "__qualname__", handler))
        raise gr.Error(UNEXPECTED) from None


def readable(exc: Exception, *places) -> gr.Error:
    """A gr.Error from a ValueError's message, with the server's folders in it (`places`: paths of
    uploads and the like) cut down to the file names the visitor knows; the full text goes to the log."""
    log.info("refused: %s", exc)
    return gr.Error(without_folders(str(exc), [p for p in places if p]))
