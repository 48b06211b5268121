"""COCO json annotations: categories mapped by name, shapes checked and rasterised.

Overlap policy
    Where annotations overlap, the smallest one wins: shapes are painted in descending
    order of their rasterised pixel area (ties in json order, later on top), so that a
    small object lying on a large one (a can on a bag) stays visible. The area is
    measured on the shape itself because the json's `area` field is often missing or
    stale. Pixels that no annotation covers are class 0 (data.classes[0], the background).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segarena.errors import UserError
from segarena.util.text import problem_lines

log = logging.getLogger(__name__)


def read_coco(path: Path, classes: list[str]) -> list[tuple[dict, tuple]]:
    """(image entry, shapes) for every image of the json; shapes are (class_id, segmentation)
    in json order. UserError naming the file for unknown categories or a malformed json."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            dataset = COCO(str(path)).dataset
        class_of = _category_classes(dataset, classes, path)
        image_ids = {info["id"] for info in dataset.get("images", [])}
        shapes, problems = defaultdict(list), []
        for ann in dataset.get("annotations", []):
            if ann["category_id"] not in class_of:
                problems.append(
                    f"annotation id {ann['id']}: category_id {ann['category_id']} is not among "
                    f"the json's categories {sorted(class_of)}"
                )
            elif ann["image_id"] not in image_ids:
                problems.append(
                    f"annotation id {ann['id']}: image_id {ann['image_id']} is not in images"
                )
            elif why := _polygon_problem(ann["segmentation"]):
                problems.append(f"annotation id {ann['id']} (image_id {ann['image_id']}): {why}")
            else:
                shapes[ann["image_id"]].append((class_of[ann["category_id"]], ann["segmentation"]))
        records = [(info, tuple(shapes[info["id"]])) for info in dataset.get("images", [])]
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a valid COCO json ({exc!r})") from None
    if problems:
        raise UserError(f"{path}: {len(problems)} bad annotation(s):\n  {problem_lines(problems)}")
    return records


def _polygon_problem(segmentation: object) -> str | None:
    """Why a polygon segmentation cannot be rasterised, checked before pycocotools sees it
    (None when it can, or when it is an RLE)."""
    if not isinstance(segmentation, list):
        return None
    for k, polygon in enumerate(segmentation):
        if not isinstance(polygon, list) or len(polygon) % 2:
            return f"polygon {k} is {polygon!r}; expected a flat list of x, y coordinates"
        if len(polygon) < 6:
            return (
                f"polygon {k} {polygon} has {len(polygon) // 2} point(s); "
                "a polygon needs at least 3 points"
            )
    return None


_NOTED: set[tuple[str, str]] = set()  # (json, left-out categories) already logged


def _category_classes(dataset: dict, classes: list[str], path: Path) -> dict[int, int]:
    """COCO category id -> class id, matched by name (case-insensitive) to data.classes.
    A category that no annotation uses and data.classes does not name is left out with
    one log line: every Roboflow export has one (id 0, the dataset's name, the
    `supercategory` of the real classes), and it must not block the data."""
    index = {name.lower(): i for i, name in enumerate(classes)}
    used = {ann.get("category_id") for ann in dataset.get("annotations", [])}
    class_of, unused = {}, []
    for cat in dataset.get("categories", []):
        name = str(cat["name"])
        if name.lower() in index:
            class_of[cat["id"]] = index[name.lower()]
        elif cat["id"] not in used:
            unused.append(f"{name!r} (id {cat['id']})")
        else:
            raise UserError(
                f"{path}: category {name!r} (id {cat['id']}) is not in data.classes {classes}; "
                "add it there (classes[0] is the background) or rename the category"
            )
    note = (str(path), ", ".join(unused))
    if unused and note not in _NOTED:  # the data is read more than once per command
        _NOTED.add(note)
        log.info("%s: left out the categories no annotation uses: %s", *note)
    return class_of


def shape_rles(shapes: tuple, height: int, width: int) -> list[dict]:
    """One RLE per shape (polygons merged, uncompressed counts compressed); ValueError if a
    segmentation is malformed or its RLE size is not the image size."""
    rles = []
    try:
        for _, seg in shapes:
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = dict(seg)
            if list(rle["size"]) != [height, width]:
                raise ValueError(f"RLE size {rle['size']} but the image is {height}x{width}")
            rles.append(rle)
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"malformed segmentation ({exc!r})") from None
    return rles


def paint_shapes(shapes: tuple, height: int, width: int) -> np.ndarray:
    """HxW uint8 class ids, the largest shape painted first (see the overlap policy)."""
    mask = np.zeros((height, width), np.uint8)
    rles = shape_rles(shapes, height, width)
    if rles:
        for i in np.argsort(-mask_utils.area(rles).astype(np.int64), kind="stable"):
            mask[mask_utils.decode(rles[i]) > 0] = shapes[i][0]
    return mask
