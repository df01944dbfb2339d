"""Hand-made good and hostile image files for the tests (built in memory, nothing downloaded)."""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, exif_orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    else:
        image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def bomb_png(side: int = 30000) -> bytes:
    """A valid PNG header declaring side x side pixels with a tiny compressed body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def hostile_files(photo: np.ndarray) -> dict[str, bytes]:
    """name -> bytes of files that must be refused with a ValueError."""
    good_jpeg = jpeg_bytes(photo)
    return {
        "empty.jpg": b"",
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "text.jpg": b"just some text, not an image\n" * 10,
        "page.html": b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        "tiny.png": png_bytes(np.zeros((1, 1, 3), np.uint8)),
        "bomb.png": bomb_png(),
    }


def write_camera_video(path, photo: np.ndarray, frames: int = 30, size: tuple[int, int] = (640, 480)) -> None:
    """A Y4M video (Chromium's fake camera plays it in a loop) of `photo` panned slowly across
    `size` (width, height): each frame differs, as a real camera's do."""
    import cv2

    width, height = size
    scale = 1.15 * max(width / photo.shape[1], height / photo.shape[0])
    big = cv2.resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    slack = big.shape[1] - width
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            x = round(slack * (0.5 - 0.5 * np.cos(2 * np.pi * i / frames)))
            crop = np.ascontiguousarray(big[:height, x:x + width])
            out.write(b"FRAME\n" + cv2.cvtColor(crop, cv2.COLOR_RGB2YUV_I420).tobytes())
