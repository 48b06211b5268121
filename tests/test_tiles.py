"""Tiles of large images: positions, coverage, margins, background filtering, config checks."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from segarena.config import TilesConfig, config_from_dict
from segarena.data.readers import Sample
from segarena.data.tiles import TileDataset, tile_positions, window_starts
from segarena.errors import UserError
from segarena.train.parts import train_dataset

IGNORE = 255


def write_sample(folder, name: str, image: np.ndarray, mask: np.ndarray) -> Sample:
    """PNG files for one image/mask pair and the Sample read_samples would make of them."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{name}.png")
    Image.fromarray(mask).save(folder / f"{name}_mask.png")
    classes = tuple(int(c) for c in np.unique(mask) if c != IGNORE)
    height, width = mask.shape
    return Sample(name, folder / f"{name}.png", folder / f"{name}_mask.png", (), height, width,
                  classes=classes)  # fmt: skip


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def box_sample(tmp_path, name="box", size=(128, 160)) -> Sample:
    """Background with one 10 x 12 box of class 2: most tiles hold background only."""
    mask = np.zeros(size, dtype=np.uint8)
    mask[90:100, 20:32] = 2
    return write_sample(tmp_path, name, noise_image(*size), mask)


def tiles(samples: list[Sample], **cfg) -> TileDataset:
    """Tiles without augmentation, so that tile pixels can be traced back to the image."""
    return TileDataset(samples, A.Compose([]), TilesConfig(**cfg), IGNORE, cache=True)


def test_window_positions_for_known_sizes():
    assert window_starts(100, 64, 32) == [0, 32, 36]  # the last window is flush with the edge
    assert window_starts(160, 64, 48) == [0, 48, 96]  # already flush: nothing added
    assert window_starts(64, 64, 16) == [0] and window_starts(40, 64, 16) == [0]
    positions = tile_positions(100, 160, 64, 48)
    assert len(positions) == 2 * 3
    assert positions[:3] == [(0, 0), (0, 48), (0, 96)] and positions[-1] == (36, 96)


def test_sliding_tiles_cover_every_pixel_and_cut_the_image_exactly(tmp_path):
    image = noise_image(100, 130)
    mask = np.ones((100, 130), dtype=np.uint8)  # all foreground: every trained pixel shows
    dataset = tiles([write_sample(tmp_path, "a", image, mask)], size=48, margin=6,
                    mode="sliding")  # fmt: skip
    trained = np.zeros(mask.shape, dtype=int)
    for index, (_, y, x) in enumerate(dataset.items):
        item = dataset[index]
        assert item["image"].shape == (3, 48, 48)
        tile = item["image"].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(tile, image[y : y + 48, x : x + 48])
        trained[y : y + 48, x : x + 48] += (item["mask"] != IGNORE).numpy()
    assert len(dataset) == len(tile_positions(100, 130, 48, 36))  # stride = 48 - 2 * 6
    assert trained.min() >= 1  # every pixel trains in some tile's centre


def test_margin_pixels_are_ignore_except_on_the_image_edge(tmp_path):
    mask = np.ones((100, 100), dtype=np.uint8)
    dataset = tiles([write_sample(tmp_path, "a", noise_image(100, 100), mask)], size=40,
                    stride=20, margin=5, mode="sliding")  # fmt: skip
    by_position = {(y, x): i for i, (_, y, x) in enumerate(dataset.items)}
    inner = dataset[by_position[(20, 20)]]["mask"].numpy()
    centre = np.zeros((40, 40), dtype=bool)
    centre[5:35, 5:35] = True
    assert (inner[~centre] == IGNORE).all() and (inner[centre] == 1).all()
    corner = dataset[by_position[(0, 0)]]["mask"].numpy()  # top and left lie on the image edge
    assert (corner[:35, :35] == 1).all() and (corner[35:] == IGNORE).all()
    assert (corner[:, 35:] == IGNORE).all()


@pytest.mark.parametrize("mode", ["random", "sliding"])
def test_keep_p_zero_gives_only_tiles_with_foreground(tmp_path, mode):
    empty = write_sample(tmp_path, "empty", noise_image(128, 160), np.zeros((128, 160), np.uint8))
    samples = [box_sample(tmp_path), empty]
    np.random.seed(0)
    dataset = tiles(samples, size=32, mode=mode, background_keep_p=0.0)
    every = tiles(samples, size=32, mode=mode, background_keep_p=1.0)
    assert len(dataset) < len(every) == 2 * len(tile_positions(128, 160, 32, 32))
    assert all(sample_index == 0 for sample_index, _, _ in dataset.items)  # "empty" gives none

    def has_foreground(item):
        return bool(((item["mask"] != 0) & (item["mask"] != IGNORE)).any())

    draws = [dataset[i % len(dataset)] for i in range(60)]
    assert all(has_foreground(item) for item in draws)
    # the same image with background kept does give background-only tiles
    assert not all(has_foreground(every[i]) for i in range(len(every)))


def test_random_tiles_are_reproducible_and_vary(tmp_path):
    dataset = tiles([box_sample(tmp_path)], size=32, mode="random")
    np.random.seed(1)
    first = [dataset[0]["image"] for _ in range(5)]
    np.random.seed(1)
    again = [dataset[0]["image"] for _ in range(5)]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    assert not all((first[0] == other).all() for other in first[1:])


def test_image_smaller_than_a_tile_is_padded_with_ignore(tmp_path):
    sample = write_sample(tmp_path, "small", noise_image(20, 30), np.ones((20, 30), np.uint8))
    item = tiles([sample], size=32, margin=4, mode="sliding")[0]
    mask = item["mask"].numpy()
    assert (mask[:20, :30] == 1).all() and (mask[20:] == IGNORE).all()
    assert (mask[:, 30:] == IGNORE).all()


def test_fit_cuts_tiles_before_the_augment_pipeline(tmp_path):
    config = config_from_dict({
        "data": {"sources": [{"images": "i", "masks": "m"}], "classes": ["bg", "a", "b"],
                 "tiles": {"size": 48, "mode": "sliding"}},
        "augment": {"train": [{"name": "HorizontalFlip", "params": {"p": 1.0}}]},
    })  # fmt: skip
    sample = box_sample(tmp_path)
    dataset = train_dataset(config, [sample])
    assert isinstance(dataset, TileDataset)
    _, y, x = dataset.items[0]
    item = dataset[0]
    assert item["image"].shape == (3, 64, 64)  # 48 padded up to the model's divisor 32
    flipped = np.asarray(Image.open(sample.image_path))[y : y + 48, x : x + 48][:, ::-1]
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy()[:48, :48], flipped)
    assert (item["mask"][48:] == IGNORE).all()


def test_config_rejects_image_size_with_tiles_and_gapped_strides():
    base = {"sources": [{"images": "i", "masks": "m"}], "classes": ["a", "b"]}
    with pytest.raises(UserError, match=r"data.image_size=\[64, 64\] and data.tiles.*null"):
        config_from_dict({"data": {**base, "image_size": [64, 64], "tiles": {"size": 64}}})
    with pytest.raises(UserError, match=r"data.tiles.stride=60 skips pixels.*stride <= 48"):
        config_from_dict({"data": {**base, "tiles": {"size": 64, "stride": 60, "margin": 8}}})
    with pytest.raises(UserError, match=r"data.tiles.margin=32 leaves no trainable centre"):
        config_from_dict({"data": {**base, "tiles": {"size": 64, "margin": 32}}})
    assert TilesConfig(size=64, margin=8).step == 48
