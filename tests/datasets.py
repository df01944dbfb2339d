"""Tiny generated datasets: coloured squares on noise, one folder per colour (nothing downloaded)."""

import io
import zipfile

import numpy as np
from PIL import Image

COLOURS = {"blue": (30, 60, 230), "green": (40, 200, 60), "red": (230, 40, 40)}


def square_image(colour, seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    x, y = rng.integers(0, size // 2, 2)
    array[y:y + size // 2, x:x + size // 2] = colour
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def dataset_zip(path, per_class: int = 6, top: str = "", extra: dict | None = None):
    """Write a zip of class folders (optionally under one top folder) plus `extra` {name: bytes}."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for c, (name, colour) in enumerate(COLOURS.items()):
            for i in range(per_class):  # the same photos in every process (str hashes are not)
                archive.writestr(f"{top}{name}/{i}.png", square_image(colour, seed=1000 * c + i))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def box_dataset(folder, rows: list[str]):
    """An evaluation folder: images/x.png (a grey 64x64 photo) and boxes.csv with `rows`
    ('file,label,x0,y0,x1,y1' lines)."""
    (folder / "images").mkdir()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(folder / "images" / "x.png")
    (folder / "boxes.csv").write_text("file,label,x0,y0,x1,y1\n" + "\n".join(rows) + "\n")
    return folder
