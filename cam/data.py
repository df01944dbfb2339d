"""Safe reading of images: any common mode to upright RGB uint8, hostile files refused with a message."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # larger images are refused before they are decoded (decompression bombs)
MIN_SIDE = 8  # smaller images carry too little to classify
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image(image) -> np.ndarray:
    """Return `image` (a path, bytes, PIL image or HxWx3 uint8 array) as an upright HxWx3 uint8 RGB array.

    Applies the EXIF orientation, flattens transparency onto white, maps 16-bit and float images
    to 8 bits, and refuses non-images, truncated files, decompression bombs and tiny images with a
    `ValueError` that says which.
    """
    if isinstance(image, np.ndarray):
        return _check_size(_array_to_rgb(image))
    if isinstance(image, Image.Image):
        return _check_size(_pil_to_rgb(image))
    if isinstance(image, (bytes, bytearray)):
        return _open_and_convert(io.BytesIO(image), "image data")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        return _open_and_convert(path, str(path))
    raise TypeError(f"image must be a path, bytes, PIL image or numpy array, got {type(image).__name__}")


def _open_and_convert(source, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ValueError(
                        f"{name}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,} pixels "
                        "(possible decompression bomb)"
                    )
                img.load()
                return _check_size(_pil_to_rgb(img), name)
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not a supported image (expected JPEG, PNG, BMP, GIF, WebP or TIFF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(f"{name}: too many pixels (possible decompression bomb)") from None
    except (OSError, SyntaxError, EOFError) as exc:
        raise ValueError(f"{name}: the image is truncated or corrupt ({exc})") from None


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        return _gray_to_rgb(np.clip(array / 257.0, 0, 255).astype(np.uint8))
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        return _gray_to_rgb(((array - array.min()) / span * 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return _gray_to_rgb(array)
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return _pil_to_rgb(Image.fromarray(array, "RGBA"))
    raise ValueError(f"image array must be HxWx3 (or HxW, HxWx4), got shape {array.shape}")


def _check_size(rgb: np.ndarray, name: str = "image") -> np.ndarray:
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"{name}: {width}x{height} pixels is too small (at least {MIN_SIDE}x{MIN_SIDE})")
    if height * width > MAX_PIXELS:
        raise ValueError(f"{name}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,} pixels")
    return rgb


def find_images(paths) -> list[Path]:
    """Expand files and folders (walked recursively, sorted) into a list of image paths."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found
