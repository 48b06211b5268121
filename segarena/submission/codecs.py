"""Submission formats: their encoders, decoders and sample-file readers.

Formats
    csv  `image_id,PredictionString`: the mask (e.g. 256x256, see predict's --size) as
         space-separated class ids in row-major order, one row per image.
    rle  `id,rle`, Kaggle's run-length encoding: pixels are numbered from 1, top to bottom
         then left to right (column-major, order="F"), and the string is space-separated
         `start length` pairs of the pixels that are set. Two classes (binary): one row per
         image, id = image id, rle of class 1. More classes: one row per image per
         foreground class c = 1..C-1, id = `<image id>_<c>`, an empty rle when the class is
         absent; class 0 (background) is what no row covers.
    png  a folder with one single-channel uint8 PNG of class ids per image, at
         `<image id with suffix .png>` (sub-folders as in the id).

The RLE codec is hand-written (numpy): no library writes Kaggle's `start length` pairs
(pycocotools' RLE counts alternating runs in its own string format).
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from segarena.errors import UserError
from segarena.util.files import utf8_text

FORMATS = ("csv", "rle", "png")
HEADERS = {"csv": ["image_id", "PredictionString"], "rle": ["id", "rle"]}
Size = tuple[int, int] | Mapping[str, tuple[int, int]] | None

# A 256x256 PredictionString of one-digit ids is 131,071 characters: one two-digit id
# pushes it past csv's default field limit (131,072). Submission readers import this module.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a C long on every platform


def encode_pixels(mask: np.ndarray) -> str:
    """A class-id mask as space-separated ids, row by row."""
    flat = np.asarray(mask).ravel()
    if flat.size and 0 <= flat.min() and flat.max() <= 9:
        # one digit per pixel: the characters are written as bytes, ~50x faster than
        # joining Python strings (7 ms for a 256x256 mask)
        text = np.full(2 * flat.size - 1, ord(" "), dtype=np.uint8)
        text[::2] = flat.astype(np.uint8) + ord("0")
        return text.tobytes().decode("ascii")
    return " ".join(map(str, flat.tolist()))


def decode_pixels(text: str, shape: tuple[int, int]) -> np.ndarray:
    """The inverse of `encode_pixels` (ValueError on a bad string)."""
    values = np.array(text.split(), dtype=np.int64)
    if values.size != shape[0] * shape[1]:
        raise ValueError(f"{values.size} values for a {shape[0]}x{shape[1]} mask")
    return values.reshape(shape)


def rle_encode(binary: np.ndarray, order: str = "F") -> str:
    """Kaggle RLE of a boolean mask: 1-indexed `start length` pairs, column-major by default."""
    pixels = np.asarray(binary, dtype=bool).ravel(order=order)
    padded = np.concatenate([[False], pixels, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # run starts and ends, 1-indexed
    edges[1::2] -= edges[::2]
    return " ".join(map(str, edges.tolist()))


def rle_numbers(text: str, n_pixels: int) -> np.ndarray:
    """The `start length` pairs of an RLE string as an (n, 2) array; ValueError if the
    string is not sorted, non-overlapping runs inside 1..n_pixels."""
    numbers = np.array(text.split(), dtype=np.int64)
    if numbers.size % 2:
        raise ValueError("an odd count of numbers (expected start length pairs)")
    pairs = numbers.reshape(-1, 2)
    starts, lengths = pairs[:, 0], pairs[:, 1]
    if pairs.size and (starts.min() < 1 or lengths.min() < 1):
        raise ValueError("starts and lengths must be >= 1")
    if np.any(starts[1:] < starts[:-1] + lengths[:-1]):
        raise ValueError("runs must be sorted and must not overlap")
    if pairs.size and starts[-1] + lengths[-1] - 1 > n_pixels:
        raise ValueError(f"a run ends at pixel {starts[-1] + lengths[-1] - 1} > {n_pixels}")
    return pairs


def rle_decode(text: str, shape: tuple[int, int], order: str = "F") -> np.ndarray:
    """The boolean mask of an RLE string (the inverse of `rle_encode`)."""
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for start, length in rle_numbers(text, flat.size):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(shape, order=order)


def rle_rows(image_id: str, mask: np.ndarray, num_classes: int) -> list[tuple[str, str]]:
    """The `id,rle` rows of one image (see the module docstring for the convention)."""
    if num_classes == 2:
        return [(image_id, rle_encode(mask == 1))]
    return [(f"{image_id}_{c}", rle_encode(mask == c)) for c in range(1, num_classes)]


def split_rle_id(row_id: str, num_classes: int) -> tuple[str, int]:
    """(image id, class) of an rle row id; ValueError if a multi-class id has no `_<c>`."""
    if num_classes == 2:
        return row_id, 1
    image_id, sep, cls = row_id.rpartition("_")
    if not sep or not cls.isdigit():
        raise ValueError(f"expected `<image id>_<class>`, found {row_id!r}")
    return image_id, int(cls)


def png_path(root: Path, image_id: str) -> Path:
    """Where the PNG mask of `image_id` goes inside `root` (ids must stay inside it)."""
    relative = PurePosixPath(image_id)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise UserError(f"image id {image_id!r}: expected a relative path inside the folder")
    return root.joinpath(*relative.parts).with_suffix(".png")


def read_sample(path: Path) -> tuple[list[str], list[str]]:
    """(header, ids) of a sample submission: its first column, in file order."""
    try:
        with utf8_text(path, "a sample submission CSV") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise UserError(f"--sample {path}: cannot read it ({exc.strerror})") from None
    if not rows or len(rows[0]) < 2:
        raise UserError(f"--sample {path}: expected a CSV header of 2 columns (id,value)")
    return rows[0], [row[0] for row in rows[1:] if row]


def sample_image_ids(path: Path, fmt: str, num_classes: int) -> list[str]:
    """The image ids a sample submission asks for, in its order (rle rows grouped per image)."""
    _, ids = read_sample(path)
    if fmt != "rle":
        return ids
    try:
        images = [split_rle_id(row_id, num_classes)[0] for row_id in ids]
    except ValueError as exc:
        raise UserError(f"--sample {path}: {exc}") from None
    return list(dict.fromkeys(images))


def shape_for(size: Size, image_id: str) -> tuple[int, int] | None:
    """The (H, W) a mask must have: one size for all, per image, or None (unchecked)."""
    if size is None or not isinstance(size, Mapping):
        return size
    return size.get(image_id)


def read_submission(
    path: Path, fmt: str, num_classes: int, size: Size = None
) -> dict[str, np.ndarray]:
    """Decode a submission back to {id: class-id mask}, for round trips and inspection.

    csv and rle need `size` (their strings carry no shape); png ignores it and keys the
    masks by their path relative to the folder (`a/b.png`), as the original suffix is gone.
    """
    path = Path(path)
    if fmt == "png":
        files = sorted(path.rglob("*.png"))
        return {f.relative_to(path).as_posix(): np.asarray(Image.open(f)) for f in files}
    masks: dict[str, np.ndarray] = {}
    with utf8_text(path, f"a {fmt} submission") as f:
        for row_id, text in list(csv.reader(f))[1:]:
            if fmt == "csv":
                masks[row_id] = decode_pixels(text, shape_for(size, row_id))
                continue
            image_id, cls = split_rle_id(row_id, num_classes)
            shape = shape_for(size, image_id)
            mask = masks.setdefault(image_id, np.zeros(shape, dtype=np.int64))
            mask[rle_decode(text, shape)] = cls
    return masks
