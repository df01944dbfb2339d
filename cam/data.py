"""Safe reading of images: any common mode to upright RGB uint8, hostile files refused with a message."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # larger images are refused before they are decoded (decompression bombs)
MIN_SIDE = 8  # smaller images carry too little to classify
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Photos read from files are worked on reduced where they are over twice what is needed: WORK_SIDE
# on the longer side and the network's input on the shorter (a 12 MP phone photo at 504 x 378, a
# JPEG's 1/8 DCT scale). Boxes then fall within half a percent of the photo's side and agree with
# those of the full photo (benchmarks/photos.py); the full photo is decoded again only when read.
WORK_SIDE = 500
TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


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


@dataclass(frozen=True)
class Photo:
    """An upright photo as the package works on it: `pixels` (HxWx3 uint8) at working size, `size`
    the photo's own upright (height, width), and `source` (a path or bytes) to decode it in full
    again, or None when `pixels` is the full photo."""

    pixels: np.ndarray = field(repr=False)
    size: tuple[int, int]
    source: object = field(default=None, repr=False)

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[:2] != self.size

    def full(self) -> np.ndarray:
        """The upright photo at its own size (decoded again if `pixels` is reduced)."""
        if not self.reduced:
            return self.pixels
        image = load_image(self.source)
        if image.shape[:2] != self.size:
            name = "image data" if isinstance(self.source, bytes) else self.source
            raise ValueError(f"{name}: the photo changed since it was localized")
        return image


def read_photo(image, cover: int = 0) -> Photo:
    """`image` as a `Photo`. Arrays and PIL images are kept whole (`load_image`), and so are files
    up to twice the working size: WORK_SIDE on the longer side and `cover` (the network's input
    side) on the shorter. A larger JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8,
    Pillow's draft mode: 8x faster at 12 MP) that keeps both; any other file still over twice that
    size is decoded and then shrunk to it. Refuses what `load_image` refuses, decompression bombs
    before decoding."""
    if isinstance(image, Photo):
        return image
    if not isinstance(image, (bytes, bytearray, str, Path)):
        pixels = load_image(image)
        return Photo(pixels, pixels.shape[:2])
    name = "image data" if isinstance(image, (bytes, bytearray)) else str(image)
    if not isinstance(image, (bytes, bytearray)) and not Path(image).is_file():
        raise ValueError(f"{image}: no such file")
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    pixels, size = _open_and_convert(source, name, cover)
    scale = _working_scale(pixels.shape[:2], cover)
    if scale <= 0.5:
        pixels = cv2.resize(pixels, (max(round(pixels.shape[1] * scale), 1), max(round(pixels.shape[0] * scale), 1)),
                            interpolation=cv2.INTER_AREA)
    return Photo(pixels, size, bytes(image) if isinstance(image, bytearray) else image)


def _working_scale(size: tuple[int, int], cover: int) -> float:
    """The scale that takes an image of `size` to the working size: WORK_SIDE on its longer side and
    `cover` on its shorter, whichever needs more (at most 1)."""
    return min(1.0, max(WORK_SIDE / max(size), cover / min(size)))


def read_photos(images, cover: int = 0) -> list[Photo]:
    """`read_photo` of each image, decoded in parallel (`map_threads`)."""
    return map_threads(lambda image: read_photo(image, cover), images)


def map_threads(function, items, at_most: int | None = None) -> list:
    """`function` of each item, in order, on as many threads as there are cores (`at_most` of them,
    where each holds a large image): image decoding releases Python's lock, so a batch of large
    JPEGs decodes in a fraction of the time."""
    items = list(items)
    threads = min(len(items), os.cpu_count() or 1, at_most or len(items))
    if threads < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="cam-decode") as pool:
        return list(pool.map(function, items))


def _open_and_convert(source, name: str, cover: int | None = None):
    """The upright RGB array of an image file; with `cover` (a number, 0 included), a JPEG over
    twice the working size is decoded reduced (`read_photo`), and the photo's own upright (height,
    width) comes back beside it."""
    try:  # MAX_PIXELS, below PIL's own limit, refuses what PIL only warns of (no warnings filter: it is process-wide)
        with Image.open(source) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ValueError(
                    f"{name}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,} pixels "
                    "(possible decompression bomb)"
                )
            if cover is None:
                img.load()
                return _check_size(_pil_to_rgb(img), name)
            upright = (width, height) if img.getexif().get(0x0112) in TRANSPOSED else (height, width)
            scale = _working_scale((height, width), cover)
            if img.format == "JPEG" and scale <= 0.5:  # the draft keeps at least the size asked for
                img.draft("RGB", (max(round(width * scale), 1), max(round(height * scale), 1)))
            img.load()
            return _check_size(_pil_to_rgb(img), name), upright
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not a supported image (expected JPEG, PNG, BMP, GIF, WebP or TIFF)") from None
    except Image.DecompressionBombError:
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


def hard_link_or_copy(source, target) -> None:
    """`target` as a hard link of `source`, or a copy where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def private_temp_folder(prefix: str) -> Path:
    """A new folder in the system temp dir that records its owner process, so that
    `remove_orphaned_temp_folders` can delete it once that process has died (killed runs cannot
    clean up after themselves)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    (folder / "owner.pid").write_text(str(os.getpid()))
    return folder


def remove_orphaned_temp_folders(prefix: str) -> None:
    """Delete the `prefix*` temp folders whose owner process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            os.kill(int((folder / "owner.pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # no or unreadable owner file yet, or not ours to judge
            pass


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


# --- Uploaded datasets: a zip (or folder) of one folder per class -------------------------------

MAX_ARCHIVE_FILES = 20_000
MAX_UNPACKED_BYTES = 2 * 1024**3  # 2 GiB in all
MAX_RATIO = 100  # uncompressed / compressed, per member: higher is a zip bomb
MIN_IMAGES_PER_CLASS = 2
ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}


def _is_ignored(parts: tuple[str, ...]) -> bool:
    """macOS resource forks and hidden files or folders are not data."""
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def unpack_zip(zip_path, dest) -> int:
    """Unpack the images of a dataset zip into the empty folder `dest`; return how many members
    were skipped (hidden, __MACOSX, non-images).

    Refuses, before writing anything, archives with paths escaping `dest`, links, nested archives,
    too many members or too many bytes (declared sizes and compression ratios), and refuses
    corrupt ones; while unpacking, actual bytes are counted too, so a lying header cannot
    exceed the caps.
    """
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"not a readable zip archive ({exc})") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ARCHIVE_FILES:
            raise ValueError(f"the zip has {len(members):,} entries; at most {MAX_ARCHIVE_FILES:,} are accepted")
        wanted, skipped, declared = [], 0, 0
        for info in members:
            name = info.filename.replace("\\", "/")
            path = PurePosixPath(name)
            if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
                raise ValueError(f"the zip entry {info.filename!r} points outside the dataset folder")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"the zip entry {info.filename!r} is a link; links are not accepted")
            if info.is_dir() or not path.parts:
                continue
            if _is_ignored(path.parts):
                skipped += 1
                continue
            suffix = path.suffix.lower()
            if suffix in ARCHIVE_SUFFIXES:
                raise ValueError(f"the zip contains another archive ({info.filename!r}); unpack it first")
            if suffix not in IMAGE_SUFFIXES:
                skipped += 1
                continue
            if info.file_size > MAX_RATIO * max(info.compress_size, 1) and info.file_size > 1_000_000:
                raise ValueError(f"the zip entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}x "
                                 "(a decompression bomb?)")
            declared += info.file_size
            if declared > MAX_UNPACKED_BYTES:
                raise ValueError(f"the zip unpacks to more than {MAX_UNPACKED_BYTES // 1024**3} GiB")
            wanted.append((info, path))
        written = 0
        dest.mkdir(parents=True, exist_ok=True)
        try:
            for info, path in wanted:
                target = dest.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        written += len(chunk)
                        if written > MAX_UNPACKED_BYTES or written > declared:
                            raise ValueError("the zip unpacks to more bytes than its headers declare")
                        sink.write(chunk)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
            raise ValueError(f"the zip archive is corrupt ({type(exc).__name__}: {exc})") from None
    return skipped


def dataset_root(folder) -> Path:
    """The folder that holds a dataset's class folders: `folder`, or its one wrapping top folder.
    Photos are named relative to it (`apple/1.jpg`), as reviewed boxes name them."""
    return _class_folders(folder)[0]


def _class_folders(folder) -> tuple[Path, list[tuple[str, ...]], int]:
    """(the folder holding the class folders, each image's path parts below it, files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    images, skipped = [], 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = path.relative_to(root).parts
        if _is_ignored(parts) or path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink():
            skipped += 1
            continue
        images.append(parts)
    tops = {parts[0] for parts in images}
    if len(tops) == 1 and all(len(parts) >= 3 for parts in images):  # one wrapping top folder
        root, images = root / tops.pop(), [parts[1:] for parts in images]
    return root, images, skipped


def scan_dataset(folder) -> tuple[list[str], list[tuple[Path, int]], int]:
    """Find the classes of a folder-per-class dataset (at its root or under one top folder).

    Returns (class names sorted, [(image path, class index)], files skipped). Raises a ValueError
    for fewer than 2 classes or a class with fewer than MIN_IMAGES_PER_CLASS images.
    """
    root, images, skipped = _class_folders(folder)
    skipped += sum(len(parts) < 2 for parts in images)  # loose files beside the class folders
    images = [parts for parts in images if len(parts) >= 2]
    class_names = sorted({parts[0] for parts in images})
    if len(class_names) < 2:
        raise ValueError(f"the dataset needs at least 2 class folders with images, found {len(class_names)}"
                         + (f" ({class_names[0]!r})" if class_names else ""))
    counts = {name: sum(parts[0] == name for parts in images) for name in class_names}
    small = [f"{name!r} ({n})" for name, n in counts.items() if n < MIN_IMAGES_PER_CLASS]
    if small:
        raise ValueError(f"every class needs at least {MIN_IMAGES_PER_CLASS} images; too few in {', '.join(small)}")
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, [(root.joinpath(*parts), index[parts[0]]) for parts in images], skipped
