"""Folders of images to predict: listing them, and decoding them in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch.utils.data import Dataset

from segarena.data.readers import IMAGE_EXTS, load_image
from segarena.errors import BadOption

T = TypeVar("T")


def coco_file_names(path: Path) -> list[str]:
    """The `file_name` of every image a COCO json lists, in the json's order: the ids a
    contest's test.json gives (the annotations, if any, are not read)."""
    import json

    try:
        listed = json.loads(Path(path).read_text(encoding="utf-8"))["images"]
        names = [str(info["file_name"]) for info in listed]
    except FileNotFoundError:
        raise BadOption("coco", f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise BadOption("coco", f"{path}: not a COCO json with images ({exc!r})") from None
    if not names:
        raise BadOption("coco", f"{path}: lists no images")
    return names


def list_images(images_dir: Path, ids: list[str] | None = None) -> list[tuple[str, Path]]:
    """(id, path) of the images to predict: the sample's ids, or every image in the folder."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise BadOption("images", f"{images_dir}: folder not found")
    if ids is None:
        paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise BadOption("images", f"{images_dir}: no {', '.join(IMAGE_EXTS)} files in it")
        return [(p.relative_to(images_dir).as_posix(), p) for p in paths]
    missing = [i for i in ids if not (images_dir / i).is_file()]
    if missing:
        raise BadOption(
            "images",
            f"{images_dir}: {len(missing)} image(s) the sample lists are not there, "
            f"e.g. {missing[:3]} (sample ids are paths relative to --images)"
        )
    return [(i, images_dir / i) for i in ids]


class ImageFiles(Dataset):
    """(id, HxWx3 uint8 RGB image) of each listed file."""

    def __init__(self, items: list[tuple[str, Path]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        image_id, path = self.items[index]
        return image_id, load_image(path)


def as_is(item: Any) -> Any:
    """Keep numpy arrays as they are (the default collate would make tensors of them)."""
    return item


# A batch's raw pixels (N x H x W) stay under this: 12 CamVid frames at 720x960, one
# 4000x4000 image alone; each image's probabilities are C x H x W floats at mask size.
MAX_BATCH_PIXELS = 2**23


def same_size_batches(
    items: Iterable[T],
    batch_size: int,
    image_of: Callable[[T], np.ndarray],
    max_pixels: int = MAX_BATCH_PIXELS,
) -> Iterator[list[T]]:
    """Consecutive `items` grouped into batches of images of one shape, in their order: at
    most `batch_size` images and `max_pixels` raw pixels per batch (a bigger image goes
    alone), so a model runs on a batch of same-size images in one forward pass."""
    batch: list[T] = []
    for item in items:
        shape = image_of(item).shape
        if batch and (
            image_of(batch[0]).shape != shape
            or len(batch) == batch_size
            or (len(batch) + 1) * shape[0] * shape[1] > max_pixels
        ):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch
