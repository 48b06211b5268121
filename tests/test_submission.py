"""Submission codecs and writers round-trip; the validator rejects broken files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segarena.errors import UserError
from segarena.submission.check import validate_submission
from segarena.submission.codecs import (
    decode_pixels,
    encode_pixels,
    read_submission,
    rle_decode,
    rle_encode,
    sample_image_ids,
)
from segarena.submission.writer import SubmissionWriter

IDS = ["batch_01_vt/0021.jpg", "batch_01_vt/0003.jpg", "batch_02/0001.jpg"]


def masks_for(ids, shape=(8, 6), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, classes, size=shape).astype(np.uint8) for i in ids}


def write_sample(path: Path, header, ids) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([i, ""] for i in ids)
    return path


def write_rows(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_rle_follows_kaggle_column_major_convention():
    mask = np.array([[1, 0], [1, 1]], dtype=bool)
    assert rle_encode(mask) == "1 2 4 1"  # pixels 1,2 (first column) and 4
    assert rle_encode(mask, order="C") == "1 1 3 2"
    assert rle_encode(np.zeros((3, 3), bool)) == ""
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"


@pytest.mark.parametrize("order", ["F", "C"])
def test_rle_round_trips(order):
    rng = np.random.default_rng(1)
    for shape in [(7, 5), (1, 9), (16, 16)]:
        mask = rng.random(shape) > 0.5
        mask[0, 0] = mask[-1, -1] = True  # runs touching both ends of the pixel order
        assert np.array_equal(rle_decode(rle_encode(mask, order), shape, order), mask)


def test_pixels_round_trip():
    mask = np.arange(12).reshape(3, 4) % 5
    assert encode_pixels(mask).startswith("0 1 2 3 4 0")
    assert np.array_equal(decode_pixels(encode_pixels(mask), (3, 4)), mask)


@pytest.mark.parametrize(("fmt", "classes"), [("csv", 4), ("rle", 4), ("rle", 2), ("png", 4)])
def test_writers_round_trip_in_sample_order(tmp_path, fmt, classes):
    sample = write_sample(tmp_path / "sample.csv", ["image_id", "PredictionString"], IDS)
    if fmt == "rle":  # an rle sample lists one row per image per foreground class
        rows = [i if classes == 2 else f"{i}_{c}" for i in IDS for c in range(1, classes)]
        sample = write_sample(tmp_path / "sample.csv", ["id", "rle"], rows)
    assert sample_image_ids(sample, fmt, classes) == IDS
    masks = masks_for(IDS, classes=classes)
    out = tmp_path / ("masks" if fmt == "png" else "sub.csv")
    with SubmissionWriter(fmt, out, classes, sample, size=(8, 6)) as writer:
        for image_id in IDS:
            writer.add(image_id, masks[image_id])
    back = read_submission(out, fmt, classes, size=(8, 6))
    if fmt == "png":
        masks = {str(Path(k).with_suffix(".png")): v for k, v in masks.items()}
    else:
        with open(out, newline="") as f:
            header = next(csv.reader(f))
        assert header == (["image_id", "PredictionString"] if fmt == "csv" else ["id", "rle"])
    assert sorted(back) == sorted(masks)
    for key, mask in masks.items():
        assert np.array_equal(back[key], mask), key
    assert not (tmp_path / f".{out.name}.tmp").exists()


def valid_csv(tmp_path, masks) -> Path:
    return write_rows(
        tmp_path / "sub.csv",
        [["image_id", "PredictionString"]] + [[i, encode_pixels(m)] for i, m in masks.items()],
    )


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda rows: rows[:-1], "2 rows, the sample has 3"),
        (lambda rows: [rows[0], ["batch_01_vt/9999.jpg", rows[1][1]], rows[2]], "not in the"),
        (lambda rows: [rows[0], [rows[0][0], rows[1][1]], rows[2]], "appears 2 times"),
        (lambda rows: [rows[1], rows[0], rows[2]], "must follow the sample's order"),
        (lambda rows: [rows[0], [rows[1][0], rows[1][1] + " 1"], rows[2]], "expected 8x6 = 48"),
        (lambda rows: [rows[0], [rows[1][0], "4" + rows[1][1][1:]], rows[2]], "expected 0..3"),
        (lambda rows: [rows[0], [rows[1][0], "x" + rows[1][1][1:]], rows[2]], "integer class"),
    ],
)
def test_validator_rejects_broken_csv(tmp_path, break_it, message):
    sample = write_sample(tmp_path / "sample.csv", ["image_id", "PredictionString"], IDS)
    masks = masks_for(IDS)
    path = valid_csv(tmp_path, masks)
    assert validate_submission(path, sample, 4, (8, 6)) == 3
    rows = [[i, encode_pixels(m)] for i, m in masks.items()]
    write_rows(path, [["image_id", "PredictionString"]] + break_it(rows))
    with pytest.raises(UserError, match=message):
        validate_submission(path, sample, 4, (8, 6))


def test_validator_checks_rle_runs_and_class_overlaps(tmp_path):
    ok = [["id", "rle"], ["a_1", "1 2"], ["a_2", "5 3"], ["a_3", ""]]
    assert validate_submission(write_rows(tmp_path / "s.csv", ok), None, 4, (4, 4), "rle") == 3
    cases = [
        ([["a_1", "1 2"], ["a_2", "2 3"]], "overlap another class"),
        ([["a_1", "5 2 1 2"]], "sorted"),
        ([["a_1", "15 3"]], "ends at pixel 17 > 16"),
        ([["a_1", "1"]], "odd count"),
        ([["a_4", "1 1"]], "class 4, expected 1..3"),
        ([["a", "1 1"]], "expected `<image id>_<class>`"),
    ]
    for rows, message in cases:
        path = write_rows(tmp_path / "s.csv", [["id", "rle"], *rows])
        with pytest.raises(UserError, match=message):
            validate_submission(path, None, 4, (4, 4), "rle")


def test_validator_checks_png_folders(tmp_path):
    sample = write_sample(tmp_path / "sample.csv", ["image_id", "x"], ["a.jpg", "sub/b.jpg"])
    folder = tmp_path / "masks"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((8, 6), 7, np.uint8)).save(folder / "sub" / "b.png")
    with pytest.raises(UserError, match="class ids up to 7, expected 0..3"):
        validate_submission(folder, sample, 4, (8, 6), "png")
    Image.fromarray(np.zeros((8, 5), np.uint8)).save(folder / "sub" / "b.png")
    with pytest.raises(UserError, match="8x5, expected 8x6"):
        validate_submission(folder, sample, 4, (8, 6), "png")
    (folder / "sub" / "b.png").unlink()
    with pytest.raises(UserError, match="missing, e.g. \\['sub/b.png'\\]"):
        validate_submission(folder, sample, 4, (8, 6), "png")


def test_writer_never_leaves_an_invalid_file(tmp_path):
    sample = write_sample(tmp_path / "sample.csv", ["image_id", "PredictionString"], IDS)
    out = tmp_path / "sub.csv"
    with pytest.raises(UserError, match="missing"):
        with SubmissionWriter("csv", out, 4, sample, size=(8, 6)) as writer:
            writer.add(IDS[0], masks_for(IDS[:1])[IDS[0]])  # two images short
    assert not out.exists() and not (tmp_path / ".sub.csv.tmp").exists()
    with pytest.raises(UserError, match="relative path"):
        with SubmissionWriter("png", tmp_path / "png", 4) as writer:
            writer.add("../escape.jpg", np.zeros((2, 2), np.uint8))


def test_encode_pixels_writes_what_joining_strings_writes():
    rng = np.random.default_rng(0)
    for high in (1, 10, 11, 300):  # one-digit ids take the fast path; more digits do not
        mask = rng.integers(0, high, (7, 9))
        assert encode_pixels(mask) == " ".join(str(v) for v in mask.ravel())
        assert np.array_equal(decode_pixels(encode_pixels(mask), (7, 9)), mask)
    assert encode_pixels(np.zeros((0, 4), np.uint8)) == ""
