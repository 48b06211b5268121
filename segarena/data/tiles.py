"""Training on tiles of large images (data.tiles), cut at native resolution.

An image too large to train whole is cut into `size` x `size` tiles before the augment.train
transforms run, so every augmentation sees a tile. Validation keeps whole images.

Modes
    sliding: every window position, `stride` apart, the last row and column flush with the
        image's edge; the tile list is built once (masks read once) and is the same each epoch.
    random: a fresh uniformly random position on every draw. An epoch draws as many tiles per
        image as sliding mode would cut, so both modes see about the whole image per epoch.

Background-only tiles (no class but 0 in the trainable centre) are kept with probability
`background_keep_p`. Sliding mode drops them once, with a seeded draw. Random mode rejects
them and draws again a few times, then anchors the tile on a random foreground pixel, which
always gives foreground: rejection keeps positions uniform among the tiles kept, and the
anchor bounds the cost on images whose foreground is small. An image without foreground
gets round(background_keep_p * n) of its n tiles per epoch in random mode.

Margin
    A pixel near a tile's edge is predicted without the context beyond the cut, which the
    model will have at inference (sliding windows with overlap, or whole images). Training
    it anyway teaches the model to guess from too little, so the `margin`-pixel border of a
    tile is set to ignore_index and only the centre trains. Sides on the image's own edge keep
    their pixels: no context is cut there, and they would otherwise never train.

Random positions come from numpy's global RNG, which segarena.train.fold seeds every epoch
and segarena.data.dataset seeds in each loader worker, so tiles are as reproducible as the
augmentations are.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch

from segarena.config import TilesConfig
from segarena.data.dataset import SegDataset
from segarena.data.readers import Sample, load_mask
from segarena.errors import UserError

UNIFORM_TRIES = 4  # uniform draws before a random-mode tile is anchored on foreground


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Offsets of windows of `size` every `stride` px along `length`, the last one flush
    with the end so the windows cover it; [0] when the axis is no longer than a window."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_positions(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of every sliding window over a `height` x `width` image, row by row."""
    return [
        (y, x)
        for y in window_starts(height, size, stride)
        for x in window_starts(width, size, stride)
    ]


def centre_box(
    y: int, x: int, shape: tuple[int, int], size: int, margin: int
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) in image pixels of the part of the tile at (y, x) that trains:
    the tile inside the image, less `margin` on each side that does not lie on the image edge."""
    height, width = shape
    bottom, right = min(y + size, height), min(x + size, width)
    top = y + margin if y > 0 else y
    left = x + margin if x > 0 else x
    bottom -= margin if y + size < height else 0
    right -= margin if x + size < width else 0
    return top, bottom, left, right


def cut_tile(
    image: np.ndarray,
    mask: np.ndarray,
    y: int,
    x: int,
    size: int,
    *,
    margin: int,
    ignore_index: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The `size` x `size` tile at (y, x): pixels outside the trainable centre and past the
    image's edge (an image smaller than a tile is padded) are ignore_index in the mask."""
    height, width = mask.shape
    if not 0 <= ignore_index <= np.iinfo(mask.dtype).max:
        mask = mask.astype(np.int32)
    tile_image = np.zeros((size, size, image.shape[2]), dtype=image.dtype)
    tile_mask = np.full((size, size), ignore_index, dtype=mask.dtype)
    h, w = min(size, height - y), min(size, width - x)
    tile_image[:h, :w] = image[y : y + h, x : x + w]
    top, bottom, left, right = centre_box(y, x, (height, width), size, margin)
    tile_mask[top - y : bottom - y, left - x : right - x] = mask[top:bottom, left:right]
    return tile_image, tile_mask


def _present(region: np.ndarray, ignore_index: int) -> tuple[int, ...]:
    # bincount is several times faster than np.unique on the uint8 masks load_mask returns
    values = np.flatnonzero(np.bincount(region.ravel())) if region.size else []
    return tuple(int(c) for c in values if c != ignore_index)


def _has_foreground(region: np.ndarray, ignore_index: int) -> bool:
    return bool(((region != 0) & (region != ignore_index)).any())


class TileDataset(SegDataset):
    """Tiles of `samples` -> {"image": uint8[3,S,S], "mask": int64[S,S], "index": int}.

    `seed` fixes which background-only tiles sliding mode keeps. `item_classes` gives the
    classes of each item (the tile's centre in sliding mode, the image's in random mode) for
    class-balanced sampling.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: A.Compose,
        tiles: TilesConfig,
        ignore_index: int,
        *,
        cache: bool = False,
        seed: int = 0,
    ):
        super().__init__(samples, transform, cache=cache)
        self.tiles = tiles
        self.ignore_index = ignore_index
        rng = np.random.default_rng(seed)
        build = self._sliding_items if tiles.mode == "sliding" else self._random_items
        self.items, self._item_classes = build(rng)
        if not self.items:
            raise UserError(
                f"data.tiles.background_keep_p={tiles.background_keep_p} left no training "
                f"tiles: none of the {len(samples)} training images has a class other than 0 "
                "(background); raise background_keep_p"
            )

    def _mask(self, index: int) -> np.ndarray:
        return self._pair(index)[1] if self.cache else load_mask(self.samples[index])

    def _sliding_items(self, rng: np.random.Generator) -> tuple[list, list]:
        """Every window of every image, background-only ones kept with the configured p."""
        size, margin, keep_p = self.tiles.size, self.tiles.margin, self.tiles.background_keep_p
        items, classes = [], []
        for index in range(len(self.samples)):
            mask = self._mask(index)
            for y, x in tile_positions(*mask.shape, size, self.tiles.step):
                top, bottom, left, right = centre_box(y, x, mask.shape, size, margin)
                centre = mask[top:bottom, left:right]
                if _has_foreground(centre, self.ignore_index) or rng.random() < keep_p:
                    items.append((index, y, x))
                    classes.append(_present(centre, self.ignore_index))
        return items, classes

    def _random_items(self, rng: np.random.Generator) -> tuple[list, list]:
        """Each image once per sliding window it would have; positions are drawn later."""
        items, classes = [], []
        for index, sample in enumerate(self.samples):
            count = len(tile_positions(*self._shape(index), self.tiles.size, self.tiles.step))
            if not any(c != 0 for c in sample.classes):
                count = round(count * self.tiles.background_keep_p)
            items += [(index, None, None)] * count
            classes += [sample.classes] * count
        return items, classes

    def _shape(self, index: int) -> tuple[int, int]:
        sample = self.samples[index]
        if sample.height and sample.width:  # read_samples fills them from the headers
            return sample.height, sample.width
        return self._mask(index).shape

    @property
    def item_classes(self) -> list[tuple[int, ...]]:
        """Class ids present in each tile item (see the class docstring)."""
        return self._item_classes

    def __len__(self) -> int:
        return len(self.items)

    def sample_of(self, index: int) -> Sample:
        """The image tile `index` is cut from."""
        return self.samples[self.items[index][0]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_index, y, x = self.items[index]
        image, mask = self._pair(sample_index)
        if y is None:
            y, x = self._random_position(mask)
        tile, tile_mask = cut_tile(
            image,
            mask,
            y,
            x,
            self.tiles.size,
            margin=self.tiles.margin,
            ignore_index=self.ignore_index,
        )
        out = self.transform(image=tile, mask=tile_mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "mask": torch.from_numpy(out["mask"].astype(np.int64)),
            "index": index,
        }

    def _random_position(self, mask: np.ndarray) -> tuple[int, int]:
        """A uniform position, background-only ones rejected with probability 1 - p; after
        UNIFORM_TRIES rejections, a position whose centre holds a random foreground pixel."""
        size, margin = self.tiles.size, self.tiles.margin
        height, width = mask.shape
        for _ in range(UNIFORM_TRIES):
            y = np.random.randint(0, max(height - size, 0) + 1)
            x = np.random.randint(0, max(width - size, 0) + 1)
            top, bottom, left, right = centre_box(y, x, mask.shape, size, margin)
            centre = mask[top:bottom, left:right]
            if _has_foreground(centre, self.ignore_index):
                return y, x
            if np.random.random() < self.tiles.background_keep_p:
                return y, x
        foreground = np.flatnonzero((mask != 0) & (mask != self.ignore_index))
        if foreground.size == 0:  # an image without foreground: any tile is background
            return y, x
        py, px = np.unravel_index(np.random.choice(foreground), mask.shape)
        # The pixel lands inside the centre; clamping to the image keeps it there, because
        # a tile flush with the image's edge has no margin on that side (see centre_box).
        y = int(np.clip(py - np.random.randint(margin, size - margin), 0, max(height - size, 0)))
        x = int(np.clip(px - np.random.randint(margin, size - margin), 0, max(width - size, 0)))
        return y, x
