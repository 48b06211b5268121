"""Data sources -> Sample records: mask folders, pairs files and COCO json files.

Sample ids
    A sample's id is its image stem ("0001TP_006690"), which is what users see in
    folds.csv and submissions. When several images share a stem (two sources, or
    sub-folders named in a pairs file or a COCO json), each of them gets as id its image
    path relative to data.root without the extension ("train/a", "val/a"); listing one
    image file twice is an error.

COCO
    Shapes are rasterised by segarena.data.coco (see its overlap policy).

Checks
    read_samples reads every mask once (and every image header) and reports all
    problems it finds together, so that a user can fix a dataset in one go.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segarena.config import DataConfig, Source, SplitConfig
from segarena.data.coco import paint_shapes, read_coco, shape_rles
from segarena.data.groups import group_ids
from segarena.data.jpeg import TRUNCATED, truncated_jpeg
from segarena.errors import UserError
from segarena.util.text import examples, problem_lines

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")
MASK_MODES = ("P", "L", "1", "I", "I;16", "I;16L", "I;16B")  # single-channel integer modes


@dataclass(frozen=True)
class Sample:
    """One labelled image. `shapes` (COCO only) holds (class_id, segmentation) in json order;
    load_mask paints them largest first (the overlap policy in segarena.data.coco)."""

    id: str
    image_path: Path
    mask_path: Path | None  # PNG mask for mask-folder and pairs sources; None for COCO
    shapes: tuple = ()
    height: int = 0
    width: int = 0
    group: str = ""  # group key for grouped folds ("" = the id)
    classes: tuple[int, ...] = ()  # class ids present, ignore_index excluded, sorted
    role: str = "train"
    # data.cleanse: set on training copies only (segarena.data.cleanse); load_mask applies it
    mask_fix: Callable[[np.ndarray], np.ndarray] | None = None


def read_samples(data: DataConfig, split: SplitConfig | None = None) -> list[Sample]:
    """All samples of `data.sources`, checked (sizes, label values, readable files) and grouped."""
    root = data.root_path()
    if not root.is_dir():
        raise UserError(
            f"data.root: folder {root} does not exist (configured as {data.root!r}); point it at "
            "the dataset, e.g. root: ${SEGARENA_DATA:-/path/to/data}"
        )
    samples: list[Sample] = []
    for index, source in enumerate(data.sources):
        key = f"data.sources[{index}]"
        if source.masks is not None:
            found = _mask_folder(root, source, key)
        elif source.pairs is not None:
            found = _pairs_file(root, source, key)
        else:
            found = _coco(root, source, key, data.classes)
        samples += [replace(s, role=source.role) for s in found]
    samples = _scan(_unique_ids(samples, root), data.num_classes, data.ignore_index)
    return _with_groups(samples, split)


def load_image(path: Path) -> np.ndarray:
    """The image as HxWx3 uint8 RGB; UserError naming the file if it cannot be decoded."""
    # Masks are drawn on the stored pixels, so a JPEG's EXIF rotation must not be applied.
    if truncated_jpeg(path):  # OpenCV would decode it, its end grey (and libjpeg complain)
        raise UserError(f"{path}: cannot read the image ({TRUNCATED})")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise UserError(f"{path}: cannot read the image (missing, corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_mask(sample: Sample) -> np.ndarray:
    """The HxW uint8 class-id mask: the PNG's indices, or the COCO shapes rasterised;
    cleansed by `sample.mask_fix` when it has one (training samples under data.cleanse)."""
    mask = _given_mask(sample)
    return mask if sample.mask_fix is None else sample.mask_fix(mask)


def _given_mask(sample: Sample) -> np.ndarray:
    if sample.mask_path is not None:
        return _read_mask_array(sample.mask_path).astype(np.uint8)
    try:
        return paint_shapes(sample.shapes, sample.height, sample.width)
    except ValueError as exc:
        raise UserError(f"{sample.image_path}: invalid COCO segmentation ({exc})") from None


def _raise_problems(problems: list[str], what: str) -> None:
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {what}:\n  {problem_lines(problems)}")


def _existing(path: Path, key: str, folder: bool) -> Path:
    if not (path.is_dir() if folder else path.is_file()):
        raise UserError(f"{key}: {'folder' if folder else 'file'} {path} does not exist")
    return path


def _files(folder: Path, exts: tuple[str, ...], key: str) -> dict[str, Path]:
    """stem -> path of the files in `folder` whose extension is in `exts` (any case)."""
    found: dict[str, Path] = {}
    for path in sorted(_existing(folder, key, folder=True).iterdir()):
        if path.suffix.lower() not in exts or not path.is_file():
            continue
        if path.stem in found:
            raise UserError(
                f"{key}: {found[path.stem].name} and {path.name} share a stem in {folder}"
            )
        found[path.stem] = path
    if not found:
        raise UserError(f"{key}: folder {folder} contains no files of type {', '.join(exts)}")
    return found


def _mask_folder(root: Path, source: Source, key: str) -> list[Sample]:
    images = _files(root / source.images, IMAGE_EXTS, f"{key}.images")
    masks = _files(root / source.masks, MASK_EXTS, f"{key}.masks")
    suffix = source.mask_suffix
    if suffix and (root / source.images).resolve() == (root / source.masks).resolve():
        # Images and masks side by side ("a.png", "a_mask.png"): masks are not images.
        images = {stem: p for stem, p in images.items() if not stem.endswith(suffix)}
        masks = {stem: p for stem, p in masks.items() if stem.endswith(suffix)}
    lonely_images = [p.name for stem, p in images.items() if stem + suffix not in masks]
    wanted = {stem + suffix for stem in images}
    lonely_masks = [p.name for stem, p in masks.items() if stem not in wanted]
    problems = []
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} image(s) in {root / source.images} have no mask "
            f"<stem>{suffix}.png in {root / source.masks}: {examples(lonely_images)}"
        )
    if lonely_masks:
        problems.append(
            f"{len(lonely_masks)} mask(s) in {root / source.masks} have no image in "
            f"{root / source.images} (mask_suffix {suffix!r}): {examples(lonely_masks)}"
        )
    if problems:
        raise UserError(f"{key}: " + "\n".join(problems))
    return [Sample(stem, path, masks[stem + suffix]) for stem, path in images.items()]


def _pairs_file(root: Path, source: Source, key: str) -> list[Sample]:
    path = _existing(root / source.pairs, f"{key}.pairs", folder=False)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{key}.pairs: cannot read {path} ({exc})") from None
    samples, problems = [], []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            problems.append(f"{path} line {number}: expected 'image mask', found {line!r}")
            continue
        image, mask = root / fields[0], root / fields[1]
        missing = [p for p in (image, mask) if not p.is_file()]
        problems += [f"{path} line {number}: {p} not found" for p in missing]
        if not missing:
            samples.append(Sample(image.stem, image, mask))
    _raise_problems(problems, f"pairs file {path}")
    if not samples:
        raise UserError(f"{key}.pairs: {path} lists no image/mask pairs")
    return samples


def _coco(root: Path, source: Source, key: str, classes: list[str]) -> list[Sample]:
    path = _existing(root / source.coco, f"{key}.coco", folder=False)
    images_dir = _existing(root / source.images, f"{key}.images", folder=True)
    samples = []
    for info, shapes in read_coco(path, classes):
        image = images_dir / info["file_name"]
        present = tuple(sorted({0} | {c for c, _ in shapes}))  # background assumed present
        samples.append(
            Sample(image.stem, image, None, shapes, info["height"], info["width"], classes=present)
        )
    if not samples:
        raise UserError(f"{key}.coco: {path} lists no images")
    return samples


def _read_mask_array(path: Path) -> np.ndarray:
    """The mask's integer values; palette PNGs give indices, never colours."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in MASK_MODES:
                raise UserError(
                    f"{path}: mask has mode {mask.mode}; expected one channel of class ids "
                    "(8-bit grey or palette PNG); convert colour masks to class ids first"
                )
            values = np.asarray(mask)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the mask ({exc})") from None
    return values.view(np.uint8) if values.dtype == bool else values


def _check_shapes(sample: Sample) -> None:
    try:
        shape_rles(sample.shapes, sample.height, sample.width)
    except ValueError as exc:
        raise UserError(f"{sample.image_path}: invalid COCO segmentation ({exc})") from None


def mask_file_counts(path: Path) -> dict[int, int]:
    """value -> pixel count of a mask file (palette PNGs: their indices), sorted by value,
    read and checked as training reads masks; UserError naming the file otherwise."""
    return _value_counts(_read_mask_array(path))


def _value_counts(values: np.ndarray) -> dict[int, int]:
    """value -> count of an integer array, sorted by value."""
    flat = values.ravel()
    if flat.dtype.kind == "u":  # bincount is several times faster than np.unique
        counts = np.bincount(flat)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    present, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(present, counts)}


def _present(values: np.ndarray) -> list[int]:
    return list(_value_counts(values))


def _check(sample: Sample, num_classes: int, ignore_index: int) -> tuple[Sample, str | None]:
    """The sample with size and classes filled in, or a description of what is wrong."""
    try:
        with Image.open(sample.image_path) as image:  # reads the header only ...
            width, height = image.size
            image.verify()  # ... and a PNG's chunk checksums: a cut file fails here, cheaply
        if truncated_jpeg(sample.image_path):  # which verify() does not see in a JPEG
            return sample, f"{sample.image_path}: cannot read the image ({TRUNCATED})"
    except (OSError, ValueError, SyntaxError) as exc:
        return sample, f"{sample.image_path}: cannot read the image ({exc})"
    try:
        if sample.mask_path is None:
            _check_shapes(sample)
            if (height, width) != (sample.height, sample.width):
                return sample, (
                    f"{sample.image_path}: image is {width}x{height} but its COCO "
                    f"entry says {sample.width}x{sample.height}"
                )
            return sample, None
        values = _read_mask_array(sample.mask_path)
    except UserError as exc:
        return sample, str(exc)
    if values.shape != (height, width):
        return sample, (
            f"mask {sample.mask_path} is {values.shape[1]}x{values.shape[0]} but "
            f"image {sample.image_path} is {width}x{height} (width x height)"
        )
    present = _present(values)
    bad = [v for v in present if not 0 <= v < num_classes and v != ignore_index]
    if bad:
        return sample, (
            f"{sample.mask_path}: label values {examples(bad)} are outside "
            f"0..{num_classes - 1} and are not ignore_index {ignore_index}"
        )
    classes = tuple(v for v in present if v != ignore_index)
    return replace(sample, height=height, width=width, classes=classes), None


def _scan(samples: list[Sample], num_classes: int, ignore_index: int) -> list[Sample]:
    # Decoding releases the GIL, so threads speed the scan up on any machine.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda s: _check(s, num_classes, ignore_index), samples))
    _raise_problems([problem for _, problem in results if problem], "the data")
    return [sample for sample, _ in results]


def _unique_ids(samples: list[Sample], root: Path) -> list[Sample]:
    def path_id(path: Path) -> str:
        rel = path.relative_to(root) if path.is_relative_to(root) else path
        return rel.with_suffix("").as_posix()

    stems = Counter(s.id for s in samples)
    samples = [s if stems[s.id] == 1 else replace(s, id=path_id(s.image_path)) for s in samples]
    twice = [i for i, n in Counter(s.id for s in samples).items() if n > 1]
    if twice:
        raise UserError(f"data.sources: {len(twice)} image(s) are listed twice: {examples(twice)}")
    return samples


def _with_groups(samples: list[Sample], split: SplitConfig | None) -> list[Sample]:
    groups = group_ids([s.id for s in samples], split)
    return [replace(s, group=g) for s, g in zip(samples, groups, strict=True)]
