"""Readers on synthetic datasets written to tmp_path: mask folders, pairs files, COCO json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segarena.config import DataConfig, Source, SplitConfig
from segarena.data.readers import load_image, load_mask, read_samples
from segarena.errors import UserError

CLASSES = ["Background", "road", "car", "person"]
H, W = 32, 48


def _config(root, *sources: Source, **kwargs) -> DataConfig:
    return DataConfig(root=str(root), sources=list(sources), classes=CLASSES, **kwargs)


def _write_image(path, h=H, w=W, seed=0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _write_mask(path, boxes, h=H, w=W, palette=False) -> np.ndarray:
    """boxes: (class_id, y0, y1, x0, x1) painted in order onto a background of zeros."""
    labels = np.zeros((h, w), np.uint8)
    for class_id, y0, y1, x0, x1 in boxes:
        labels[y0:y1, x0:x1] = class_id
    mask = Image.fromarray(labels)
    if palette:  # colours unrelated to the indices, so reading colours would be caught
        mask = mask.convert("P")
        mask.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 90, 90, 90] + [0] * 756)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask.save(path)
    return labels


def _folder(root, masks: dict, suffix="", images="images", masks_dir="masks") -> dict:
    """Write one image per stem and its mask; returns stem -> label array."""
    labels = {}
    for seed, (stem, boxes) in enumerate(masks.items()):
        _write_image(root / images / f"{stem}.png", seed=seed)
        labels[stem] = _write_mask(root / masks_dir / f"{stem}{suffix}.png", boxes)
    return labels


def _errors(config, split=None) -> str:
    with pytest.raises(UserError) as info:
        read_samples(config, split)
    return str(info.value)


# ---------------------------------------------------------------- mask folders


def test_mask_folder_ids_classes_sizes_and_pixels(tmp_path):
    labels = _folder(
        tmp_path,
        {
            "b": [(1, 0, 10, 0, 48), (3, 20, 30, 5, 9)],
            "a": [(2, 4, 8, 4, 8)],
            "c": [],
        },
    )
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "images" / "c.png")
    samples = read_samples(_config(tmp_path, Source(images="images", masks="masks")))

    assert [s.id for s in samples] == ["a", "b", "c"]
    assert [s.classes for s in samples] == [(0, 2), (0, 1, 3), (0,)]
    assert all((s.height, s.width, s.role, s.group) == (H, W, "train", s.id) for s in samples)
    for sample in samples:
        np.testing.assert_array_equal(load_mask(sample), labels[sample.id])
    image = load_image(samples[2].image_path)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [255, 0, 0]  # RGB order, not OpenCV's BGR


def test_image_extensions_are_case_insensitive(tmp_path):
    _folder(tmp_path, {"a": [(1, 0, 5, 0, 5)]})
    Image.open(tmp_path / "images" / "a.png").save(tmp_path / "images" / "b.JPG")
    _write_mask(tmp_path / "masks" / "b.png", [])
    samples = read_samples(_config(tmp_path, Source(images="images", masks="masks")))
    assert [s.image_path.name for s in samples] == ["a.png", "b.JPG"]


def test_palette_mask_gives_indices_not_colours(tmp_path):
    _write_image(tmp_path / "images" / "p.png")
    labels = _write_mask(
        tmp_path / "masks" / "p.png", [(3, 0, 8, 0, 8), (1, 8, 16, 0, 48)], palette=True
    )
    assert Image.open(tmp_path / "masks" / "p.png").mode == "P"
    (sample,) = read_samples(_config(tmp_path, Source(images="images", masks="masks")))
    assert sample.classes == (0, 1, 3)
    np.testing.assert_array_equal(load_mask(sample), labels)


def test_mask_suffix_in_separate_and_shared_folders(tmp_path):
    _folder(tmp_path, {"a": [(1, 0, 4, 0, 4)], "b": []}, suffix="_mask")
    samples = read_samples(
        _config(tmp_path, Source(images="images", masks="masks", mask_suffix="_mask"))
    )
    assert [(s.id, s.mask_path.name) for s in samples] == [("a", "a_mask.png"), ("b", "b_mask.png")]

    _folder(tmp_path, {"x": [(2, 0, 4, 0, 4)]}, suffix="_mask", images="both", masks_dir="both")
    shared = _config(tmp_path, Source(images="both", masks="both", mask_suffix="_mask"))
    (sample,) = read_samples(shared)
    assert (sample.id, sample.mask_path.name, sample.classes) == ("x", "x_mask.png", (0, 2))


def test_ignore_index_values_are_allowed_and_not_listed(tmp_path):
    _folder(tmp_path, {"a": [(255, 0, 4, 0, 4), (2, 10, 12, 0, 4)]})
    (sample,) = read_samples(_config(tmp_path, Source(images="images", masks="masks")))
    assert sample.classes == (0, 2)
    assert load_mask(sample)[0, 0] == 255


def test_roles_and_duplicate_stems_across_sources(tmp_path):
    _folder(tmp_path, {"a": [], "b": []}, images="train", masks_dir="trainannot")
    _folder(tmp_path, {"a": [(1, 0, 2, 0, 2)]}, images="val", masks_dir="valannot")
    samples = read_samples(
        _config(
            tmp_path,
            Source(images="train", masks="trainannot"),
            Source(images="val", masks="valannot", role="val"),
        )
    )
    assert [(s.id, s.role) for s in samples] == [
        ("train/a", "train"),
        ("b", "train"),
        ("val/a", "val"),
    ]


# ---------------------------------------------------------------- pairs files


def test_pairs_file(tmp_path):
    _write_image(tmp_path / "imgs" / "one.png")
    _write_image(tmp_path / "imgs" / "two.jpg")
    first = _write_mask(tmp_path / "lbl" / "one_L.png", [(1, 0, 8, 0, 8)])
    _write_mask(tmp_path / "lbl" / "two_L.png", [(3, 1, 2, 1, 2)])
    (tmp_path / "pairs.txt").write_text(
        "imgs/one.png   lbl/one_L.png\n\n# a comment\nimgs/two.jpg\tlbl/two_L.png\n"
    )
    samples = read_samples(_config(tmp_path, Source(pairs="pairs.txt")))
    assert [(s.id, s.classes) for s in samples] == [("one", (0, 1)), ("two", (0, 3))]
    np.testing.assert_array_equal(load_mask(samples[0]), first)


def test_pairs_file_missing_path_names_line(tmp_path):
    _write_image(tmp_path / "imgs" / "one.png")
    _write_mask(tmp_path / "lbl" / "one.png", [])
    (tmp_path / "pairs.txt").write_text("imgs/one.png lbl/one.png\nimgs/gone.png lbl/one.png\n")
    message = _errors(_config(tmp_path, Source(pairs="pairs.txt")))
    assert "pairs.txt line 2" in message and "gone.png" in message


# ---------------------------------------------------------------- COCO


def _rle(box, compressed: bool) -> dict:
    y0, y1, x0, x1 = box
    area = np.zeros((H, W), np.uint8, order="F")
    area[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(area)
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    flat = area.ravel(order="F")  # uncompressed: run lengths, column-major, zeros first
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs.insert(0, 0)
    return {"size": [H, W], "counts": runs}


def _poly(y0, y1, x0, x1) -> list:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _coco_dataset(tmp_path, annotations, categories=None) -> DataConfig:
    for name in ("one", "two", "empty"):
        _write_image(tmp_path / "imgs" / f"{name}.png")
    images = [
        {"id": i, "file_name": f"{n}.png", "height": H, "width": W}
        for i, n in [(1, "one"), (2, "two"), (5, "empty")]
    ]
    categories = categories or [
        {"id": 3, "name": "Car"},
        {"id": 7, "name": "ROAD"},
        {"id": 12, "name": "person"},
    ]
    for i, ann in enumerate(annotations, 100):
        ann.setdefault("id", i)
    (tmp_path / "ann.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return _config(tmp_path, Source(images="imgs", coco="ann.json"))


def test_coco_polygons_rle_empty_image_and_category_names(tmp_path):
    config = _coco_dataset(
        tmp_path,
        [
            {"image_id": 1, "category_id": 7, "segmentation": _poly(0, 10, 0, 20)},
            {"image_id": 1, "category_id": 3, "segmentation": _rle((20, 30, 30, 40), True)},
            {"image_id": 2, "category_id": 12, "segmentation": _rle((2, 6, 3, 9), False)},
        ],
    )
    one, two, empty = read_samples(config)
    assert [s.id for s in (one, two, empty)] == ["one", "two", "empty"]
    assert (one.classes, two.classes, empty.classes) == ((0, 1, 2), (0, 3), (0,))
    assert one.mask_path is None and (one.height, one.width) == (H, W)

    first = load_mask(one)
    assert first.shape == (H, W) and first.dtype == np.uint8
    assert first[5, 10] == 1 and first[25, 35] == 2 and first[15, 25] == 0
    assert (first == 2).sum() == 100  # the RLE box exactly, 10x10
    second = load_mask(two)
    assert (second == 3).sum() == 24 and second[2:6, 3:9].min() == 3
    assert not load_mask(empty).any()


def test_coco_small_shape_is_painted_over_a_large_one(tmp_path):
    # The small box comes first in the json: painting in json order would bury it.
    config = _coco_dataset(
        tmp_path,
        [
            {"image_id": 1, "category_id": 12, "segmentation": _poly(10, 14, 10, 14)},
            {"image_id": 1, "category_id": 3, "segmentation": _poly(0, 30, 0, 40)},
        ],
    )
    mask = load_mask(read_samples(config)[0])
    assert mask[12, 12] == 3  # person on top
    assert mask[5, 5] == 2  # car around it
    assert mask[31, 45] == 0


def test_coco_unknown_category_id_names_annotation(tmp_path):
    config = _coco_dataset(
        tmp_path,
        [
            {"id": 41, "image_id": 1, "category_id": 9, "segmentation": _poly(0, 4, 0, 4)},
        ],
    )
    message = _errors(config)
    assert "ann.json" in message and "annotation id 41" in message and "category_id 9" in message


def test_coco_category_name_not_in_classes(tmp_path):
    used = [{"image_id": 1, "category_id": 1, "segmentation": _poly(0, 4, 0, 4)}]
    config = _coco_dataset(tmp_path, used, categories=[{"id": 1, "name": "Bicycle"}])
    message = _errors(config)
    assert "ann.json" in message and "'Bicycle'" in message and "'person'" in message


def test_coco_category_no_annotation_uses_is_left_out_with_a_note(tmp_path, caplog):
    # Roboflow's parent category: id 0, the dataset's name, the supercategory of the rest
    categories = [
        {"id": 0, "name": "medical-waste", "supercategory": "none"},
        {"id": 3, "name": "Car", "supercategory": "medical-waste"},
    ]
    used = [{"image_id": 1, "category_id": 3, "segmentation": _poly(0, 10, 0, 20)}]
    config = _coco_dataset(tmp_path, used, categories=categories)
    with caplog.at_level("INFO", logger="segarena.data.coco"):
        one, _, _ = read_samples(config)
        read_samples(config)  # a command reads its data more than once: one note still
    assert load_mask(one)[5, 10] == 2  # Car is still class 2
    notes = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(notes) == 1 and "'medical-waste' (id 0)" in notes[0] and "ann.json" in notes[0]


# ---------------------------------------------------------------- groups


def test_group_regex_capture_group_whole_match_and_miss(tmp_path):
    _folder(tmp_path, {"seqA_001": [], "seqA_002": [], "seqB_001": []})
    config = _config(tmp_path, Source(images="images", masks="masks"))
    samples = read_samples(config, SplitConfig(group_regex=r"^(seq\w)_"))
    assert [s.group for s in samples] == ["seqA", "seqA", "seqB"]
    samples = read_samples(config, SplitConfig(group_regex=r"_\d+"))
    assert [s.group for s in samples] == ["_001", "_002", "_001"]

    message = _errors(config, SplitConfig(group_regex=r"^seqA"))
    assert "seqB_001" in message and "'^seqA'" in message and "seqA_001" not in message


def test_group_csv(tmp_path, monkeypatch):
    _folder(tmp_path, {"a": [], "b": [], "c": []})
    config = _config(tmp_path, Source(images="images", masks="masks"))
    monkeypatch.chdir(tmp_path)  # group_csv is relative to the working directory
    (tmp_path / "groups.csv").write_text("id,patient\na,p1\nb,p2\nc,p1\nextra,p9\n")
    split = SplitConfig(group_csv="groups.csv", group_column="patient")
    assert [s.group for s in read_samples(config, split)] == ["p1", "p2", "p1"]

    (tmp_path / "groups.csv").write_text("id,patient\na,p1\n")
    message = _errors(config, split)
    assert "groups.csv" in message and "2 sample id(s)" in message and "b, c" in message


# ---------------------------------------------------------------- bad input


def test_missing_root_mentions_env_default(tmp_path):
    message = _errors(_config(tmp_path / "nowhere", Source(images="i", masks="m")))
    assert "nowhere" in message and "SEGARENA_DATA" in message


def test_missing_folder_json_and_pairs_file(tmp_path):
    assert "nope" in _errors(_config(tmp_path, Source(images="nope", masks="masks")))
    (tmp_path / "imgs").mkdir()
    assert "ann.json" in _errors(_config(tmp_path, Source(images="imgs", coco="ann.json")))
    assert "pairs.txt" in _errors(_config(tmp_path, Source(pairs="pairs.txt")))


def test_folder_without_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    _write_mask(tmp_path / "masks" / "a.png", [])
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert "images" in message and "contains no files" in message


def test_image_without_mask_and_mask_without_image(tmp_path):
    _folder(tmp_path, {"a": [], "b": []})
    (tmp_path / "masks" / "b.png").rename(tmp_path / "masks" / "zz.png")
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert "1 image(s)" in message and "b.png" in message
    assert "1 mask(s)" in message and "zz.png" in message


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    _write_image(tmp_path / "images" / "a.png")
    _write_mask(tmp_path / "masks" / "a.png", [], h=30, w=40)
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert "masks/a.png" in message and "images/a.png" in message
    assert "40x30" in message and f"{W}x{H}" in message


def test_out_of_range_labels_are_listed(tmp_path):
    _folder(tmp_path, {"a": [(7, 0, 2, 0, 2), (9, 4, 6, 0, 2), (2, 8, 9, 0, 1)]})
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert "masks/a.png" in message and "7, 9" in message and "0..3" in message


def test_problems_are_reported_together_with_their_count(tmp_path):
    _folder(tmp_path, {f"m{i}": [(5 + i, 0, 2, 0, 2)] for i in range(7)})
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert message.startswith("7 problem(s)")
    assert "m0.png" in message and "m4.png" in message and "2 more" in message


def test_corrupt_image_and_mask(tmp_path):
    _folder(tmp_path, {"x": [], "y": []})
    (tmp_path / "images" / "x.png").write_bytes(b"\x00garbage, not a png")
    (tmp_path / "masks" / "y.png").write_bytes(b"\x89PNG garbage")
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert "images/x.png" in message and "masks/y.png" in message
    with pytest.raises(UserError, match="x.png"):
        load_image(tmp_path / "images" / "x.png")


def test_rgb_mask_is_refused(tmp_path):
    _write_image(tmp_path / "images" / "a.png")
    _write_image(tmp_path / "masks" / "a.png")
    message = _errors(_config(tmp_path, Source(images="images", masks="masks")))
    assert "masks/a.png" in message and "mode RGB" in message
