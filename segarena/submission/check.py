"""Check a submission against its sample before it is uploaded.

`validate_submission` reads the whole file (or PNG folder) and reports every problem it
finds in one UserError: header, row count, ids (each once, in the sample's order), mask
size and class range, and for RLE the run syntax and overlaps between classes.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from segarena.errors import UserError
from segarena.submission.codecs import (
    FORMATS,
    HEADERS,
    Size,
    png_path,
    read_sample,
    rle_numbers,
    shape_for,
    split_rle_id,
)
from segarena.util.files import utf8_text
from segarena.util.text import problem_lines

SHOWN = 10  # problems listed in one message
UINT8_CLASSES = 256  # the range checked when the class count is not given


def validate_submission(
    path: Path,
    sample_csv: Path | None = None,
    num_classes: int | None = None,
    size: Size = None,
    fmt: str = "csv",
) -> int:
    """Check a `fmt` submission; returns its row (or PNG) count, raises UserError listing
    the problems. `size` is the (H, W) every mask must have, a {image id: (H, W)} mapping,
    or None to skip the size check; `num_classes` None checks ids against 0..255."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "rle" and num_classes is None:
        raise UserError("rle submissions need the class count (--classes N) to read their ids")
    classes = num_classes or UINT8_CLASSES
    header, expected = read_sample(sample_csv) if sample_csv is not None else (None, None)
    if fmt == "png":
        ids, problems = _check_png_folder(path, classes, size)
        expected = None if expected is None else [png_path(Path(), i).as_posix() for i in expected]
    else:
        want_header = header[:2] if header else HEADERS[fmt]
        ids, problems = _check_rows(path, fmt, classes, size, want_header)
    problems += _compare_ids(ids, expected, ordered=fmt != "png")
    if problems:
        listed = problem_lines(problems, SHOWN)
        raise UserError(f"{path}: {len(problems)} problem(s) in the submission:\n  {listed}")
    return len(ids)


def _check_rows(
    path: Path, fmt: str, classes: int, size: Size, header: list[str]
) -> tuple[list[str], list[str]]:
    """Row ids and problems of a csv or rle file, streamed row by row."""
    if not path.is_file():
        raise UserError(f"{path}: submission file not found")
    ids: list[str] = []
    problems: list[str] = []
    covered = _Coverage()
    with utf8_text(path, "a submission CSV") as f:
        rows = csv.reader(f)
        first = next(rows, None)
        if first != header:
            problems.append(f"header {first}, expected {header}")
        for number, row in enumerate(rows, start=2):
            if len(row) != 2:
                problems.append(f"line {number}: {len(row)} columns, expected 2")
                continue
            row_id, text = row
            ids.append(row_id)
            if fmt == "csv":
                why = _pixels_problem(text, shape_for(size, row_id), classes)
            else:
                why = _rle_problem(row_id, text, classes, size, covered)
            if why:
                problems.append(f"line {number} ({row_id}): {why}")
    return ids, problems


def _pixels_problem(text: str, shape: tuple[int, int] | None, classes: int) -> str | None:
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        return "PredictionString holds something other than integer class ids"
    if values.size == 0:
        return "empty PredictionString"
    if shape is not None and values.size != shape[0] * shape[1]:
        return f"{values.size} values, expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]}"
    if values.min() < 0 or values.max() >= classes:
        return f"class ids {values.min()}..{values.max()}, expected 0..{classes - 1}"
    return None


class _Coverage:
    """Pixels already claimed by the current image's rle rows (classes must not overlap)."""

    def __init__(self) -> None:
        self.image_id: str | None = None
        self.mask: np.ndarray | None = None

    def claim(self, image_id: str, n_pixels: int, pairs: np.ndarray) -> bool:
        """Mark the runs; False if one of them was already claimed by another class."""
        if image_id != self.image_id:
            self.image_id, self.mask = image_id, np.zeros(n_pixels, dtype=bool)
        overlap = False
        for start, length in pairs:
            run = self.mask[start - 1 : start - 1 + length]
            overlap |= bool(run.any())
            run[:] = True
        return not overlap


def _rle_problem(
    row_id: str, text: str, classes: int, size: Size, covered: _Coverage
) -> str | None:
    try:
        image_id, cls = split_rle_id(row_id, classes)
    except ValueError as exc:
        return str(exc)
    if not 1 <= cls < classes:
        return f"class {cls}, expected 1..{classes - 1}"
    shape = shape_for(size, image_id)
    n_pixels = shape[0] * shape[1] if shape is not None else np.iinfo(np.int64).max
    try:
        pairs = rle_numbers(text, n_pixels)
    except ValueError as exc:
        mask = f" of a {shape[0]}x{shape[1]} mask" if shape is not None else ""
        return f"bad rle{mask}: {exc}"
    if shape is not None and not covered.claim(image_id, n_pixels, pairs):
        return "its pixels overlap another class of the same image"
    return None


def _check_png_folder(path: Path, classes: int, size: Size) -> tuple[list[str], list[str]]:
    """Relative PNG paths and problems of a folder of mask PNGs."""
    if not path.is_dir():
        raise UserError(f"{path}: expected a folder of PNG masks")
    shapes = (
        {png_path(Path(), k).as_posix(): v for k, v in size.items()}
        if isinstance(size, dict)
        else size
    )
    ids, problems = [], []
    for file in sorted(path.rglob("*.png")):
        name = file.relative_to(path).as_posix()
        ids.append(name)
        with Image.open(file) as image:
            if image.mode not in ("L", "P"):
                problems.append(f"{name}: mode {image.mode}, expected single-channel L or P")
                continue
            mask = np.asarray(image)
        shape = shape_for(shapes, name)
        if shape is not None and tuple(mask.shape) != tuple(shape):
            found = "x".join(map(str, mask.shape))
            problems.append(f"{name}: {found}, expected {shape[0]}x{shape[1]}")
        if mask.size and mask.max() >= classes:
            problems.append(f"{name}: class ids up to {mask.max()}, expected 0..{classes - 1}")
    return ids, problems


def _compare_ids(ids: list[str], expected: list[str] | None, ordered: bool) -> list[str]:
    """Duplicates, and against the sample: count, missing, extra and (csv/rle) order."""
    problems = [f"id {i!r} appears {n} times" for i, n in Counter(ids).items() if n > 1]
    if expected is None:
        return problems
    if len(ids) != len(expected):
        problems.append(f"{len(ids)} rows, the sample has {len(expected)}")
    have, want = set(ids), set(expected)
    missing = [i for i in expected if i not in have]
    extra = [i for i in ids if i not in want]
    if missing:
        problems.append(f"{len(missing)} id(s) of the sample are missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} id(s) are not in the sample, e.g. {extra[:3]}")
    if ordered and not missing and not extra and len(ids) == len(expected) and ids != expected:
        row = next(n for n, (a, b) in enumerate(zip(ids, expected)) if a != b)
        problems.append(
            f"row {row + 1} has id {ids[row]!r} where the sample has {expected[row]!r}: rows "
            "must follow the sample's order"
        )
    return problems
