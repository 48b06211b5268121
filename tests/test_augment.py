"""Augmentation pipelines: masks stay aligned with images under every preset and geometric
transform, filled pixels are ignore_index (never a class), and bad entries are UserErrors.

Each class is drawn in its own colour, so the class of any pixel can be read back from the
transformed image and compared with the transformed mask. Classes are told apart by which
channels are high, which colour jitter, blur and noise leave alone away from edges; the
ignored region is grey and filled pixels are black, both achromatic.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from scipy import ndimage

from segarena.config import DataConfig, Source, TransformSpec
from segarena.data.augment import build_transform, build_transforms
from segarena.errors import UserError

IGNORE = 255
LO, HI = 20, 220
COLOURS = {0: (HI, HI, LO), 1: (HI, LO, LO), 2: (LO, HI, LO), 3: (LO, LO, HI)}
IGNORED_GREY = (150, 150, 150)
HIGH_CHANNELS = {(1, 1, 0): 0, (1, 0, 0): 1, (0, 1, 0): 2, (0, 0, 1): 3}


def data_config(image_size=None) -> DataConfig:
    return DataConfig(
        sources=[Source(images="images", masks="masks")],
        classes=["background", "red", "green", "blue"],
        ignore_index=IGNORE,
        image_size=image_size,
    )


def draw(rng: np.random.Generator, height: int = 64, width: int = 64):
    """Yellow background (class 0), boxes of classes 1-3 and one grey box labelled IGNORE."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = COLOURS[0]
    mask = np.zeros((height, width), dtype=np.uint8)
    labels = [1, 2, 3, IGNORE, int(rng.integers(1, 4))]
    for label in labels:
        h, w = rng.integers(12, 26, size=2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y : y + h, x : x + w] = IGNORED_GREY if label == IGNORE else COLOURS[label]
        mask[y : y + h, x : x + w] = label
    return image, mask


def classes_from_colour(image: np.ndarray) -> np.ndarray:
    """The class each pixel's colour says: IGNORE for achromatic (grey, black fill)."""
    image = image.astype(int)
    top, bottom = image.max(-1), image.min(-1)
    high = image > ((top + bottom) // 2)[..., None]
    lookup = np.full(8, -1)
    for bits, cls in HIGH_CHANNELS.items():
        lookup[bits[0] * 4 + bits[1] * 2 + bits[2]] = cls
    classes = lookup[high[..., 0] * 4 + high[..., 1] * 2 + high[..., 2]]
    return np.where(top - bottom < 40, IGNORE, classes)


def agreement(image: np.ndarray, mask: np.ndarray, edge: int = 3) -> float:
    """Share of pixels at least `edge` px from a mask boundary whose colour gives their label:
    boundaries are where linear image and nearest mask resampling may disagree."""
    size = 2 * edge + 1
    inside = ndimage.maximum_filter(mask, size) == ndimage.minimum_filter(mask, size)
    assert inside.mean() > 0.05, "too few pixels away from edges to judge"
    return float((classes_from_colour(image)[inside] == mask[inside]).mean())


def test_the_colour_code_reads_back_the_drawn_labels():
    image, mask = draw(np.random.default_rng(0))
    assert agreement(image, mask) == 1.0
    swapped = np.where(mask == 1, 2, mask)  # a wrong label must be caught
    assert agreement(image, swapped) < 0.99


@pytest.mark.parametrize("image_size", [None, (48, 48)])
@pytest.mark.parametrize("preset", ["light", "medium", "heavy"])
def test_presets_keep_masks_aligned_and_fill_with_ignore(preset, image_size):
    pipeline = build_transforms(data_config(image_size), [], True, "augment.train", preset=preset)
    pipeline.set_random_seed(0)
    rng = np.random.default_rng(1)
    scores = []
    for _ in range(40):
        out = pipeline(**dict(zip(("image", "mask"), draw(rng, 64, 80), strict=True)))
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3, IGNORE}
        scores.append(agreement(out["image"], out["mask"]))
    # noise and jitter may flip a few pixels; a class-filled border or hole flips thousands
    assert min(scores) > 0.95 and np.mean(scores) > 0.99


GEOMETRIC = [
    ("HorizontalFlip", {"p": 1}),
    ("VerticalFlip", {"p": 1}),
    ("Transpose", {"p": 1}),
    ("RandomRotate90", {"p": 1}),
    ("Affine", {"scale": (0.5, 1.5), "rotate": 40, "translate_percent": 0.2, "shear": 10, "p": 1}),
    ("Rotate", {"limit": 45, "p": 1}),
    ("SafeRotate", {"limit": 45, "p": 1}),
    ("Perspective", {"scale": (0.05, 0.15), "p": 1}),
    ("GridDistortion", {"p": 1}),
    ("ElasticTransform", {"alpha": 20, "sigma": 6, "p": 1}),
    ("OpticalDistortion", {"distort_limit": 0.3, "p": 1}),
    ("RandomResizedCrop", {"size": (64, 64), "scale": (0.3, 1.0), "p": 1}),
    ("RandomScale", {"scale_limit": 0.5, "p": 1}),
    ("RandomCrop", {"height": 40, "width": 40, "p": 1}),
    ("CropNonEmptyMaskIfExists", {"height": 40, "width": 40}),
    ("PadIfNeeded", {"min_height": 96, "min_width": 96}),
    ("CoarseDropout", {"num_holes_range": (2, 4), "hole_height_range": (0.1, 0.3), "p": 1}),
    ("GridDropout", {"ratio": 0.3, "unit_size_range": (20, 30), "p": 1}),
]


@pytest.mark.parametrize(("name", "params"), GEOMETRIC, ids=[name for name, _ in GEOMETRIC])
def test_user_geometric_transforms_keep_masks_aligned(name, params):
    """Without fill_mask in the params, every fill must still be ignore_index."""
    specs = [TransformSpec(name=name, params=params)]
    pipeline = build_transforms(data_config(), specs, True, "augment.train")
    pipeline.set_random_seed(0)
    rng = np.random.default_rng(2)
    for _ in range(15):
        out = pipeline(**dict(zip(("image", "mask"), draw(rng), strict=True)))
        assert agreement(out["image"], out["mask"]) > 0.995


def test_filled_border_is_ignore_not_background():
    zoom_out = TransformSpec(name="Affine", params={"scale": 0.5, "p": 1})
    pipeline = build_transforms(data_config(), [zoom_out], True, "augment.train")
    mask = np.ones((64, 64), dtype=np.uint8)
    out = pipeline(image=np.full((64, 64, 3), 100, np.uint8), mask=mask)["mask"]
    assert (out == IGNORE).mean() == pytest.approx(0.75, abs=0.02)
    assert set(np.unique(out)) == {1, IGNORE}


def test_dropout_holes_are_ignored_unless_fill_mask_is_set():
    params = {"num_holes_range": (3, 3), "hole_height_range": (0.2, 0.2), "p": 1}
    image, mask = np.full((64, 64, 3), 100, np.uint8), np.ones((64, 64), np.uint8)
    for fill_mask, expected in [("unset", {1, IGNORE}), (None, {1}), (0, {0, 1})]:
        given = params if fill_mask == "unset" else {**params, "fill_mask": fill_mask}
        transform = build_transform(TransformSpec(name="CoarseDropout", params=given), "t", 255)
        transform.set_random_seed(0)
        assert set(np.unique(transform(image=image, mask=mask)["mask"])) == expected


def test_presets_run_before_the_users_transforms():
    specs = [TransformSpec(name="Blur", params={})]
    pipeline = build_transforms(
        data_config((64, 64)), specs, True, "augment.train", preset="medium"
    )
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names[0] == "Resize" and names[1] == "HorizontalFlip"
    assert names[-2:] == ["Blur", "PadIfNeeded"]
    assert "Affine" in names and "CoarseDropout" in names
    val = build_transforms(data_config((64, 64)), [], False, "augment.val", preset="medium")
    assert [type(t).__name__ for t in val.transforms] == ["Resize"]


def test_rotate90_turns_square_images_and_rejects_others():
    pipeline = build_transforms(
        data_config((64, 64)), [], True, "augment.train", preset="light", rotate90=True
    )
    assert {"VerticalFlip", "RandomRotate90"} <= {type(t).__name__ for t in pipeline.transforms}
    with pytest.raises(UserError, match=r"augment.rotate90=true with data.image_size=\[48, 64\]"):
        build_transforms(data_config((48, 64)), [], True, "a", preset="light", rotate90=True)
    with pytest.raises(UserError, match="augment.preset=none"):
        build_transforms(data_config(), [], True, "augment.train", rotate90=True)


def test_unknown_transform_suggests_the_close_name():
    specs = [TransformSpec(name="HorizontalFilp")]
    with pytest.raises(UserError, match=r"augment.train\[0\].name.*did you mean 'HorizontalFlip'"):
        build_transforms(data_config(), specs, True, "augment.train")


def test_bad_params_name_the_entry():
    flip = TransformSpec(name="HorizontalFlip")
    bad_value = TransformSpec(name="Affine", params={"scale": "big"})
    with pytest.raises(UserError, match=r"augment.train\[1\].params: Affine\(\{'scale': 'big'"):
        build_transforms(data_config(), [flip, bad_value], True, "augment.train")
    typo = TransformSpec(name="Affine", params={"rotation": 10})
    with pytest.raises(UserError, match=r"augment.train\[1\].params: .*did you mean 'rotate'"):
        build_transforms(data_config(), [flip, typo], True, "augment.train")


def test_every_preset_transform_fills_masks_with_ignore():
    """A preset transform that can fill pixels must not leave fill_mask at a class."""
    pipeline = build_transforms(data_config((64, 64)), [], True, "augment.train", preset="heavy")
    for transform in pipeline.transforms:
        if hasattr(transform, "fill_mask"):
            assert transform.fill_mask == IGNORE, type(transform).__name__
    assert isinstance(pipeline.transforms[-1], A.PadIfNeeded)
