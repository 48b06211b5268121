"""Torch datasets and loaders over Sample records.

Images leave the dataset as uint8 CHW tensors and are normalised on the device in the
loop: a quarter of the bytes through the loader and the host-to-device copy.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segarena.data.bad_images import SkipUnreadable, collate_skipping
from segarena.data.readers import Sample, load_image, load_mask
from segarena.errors import UserError


class SegDataset(Dataset):
    """Samples -> {"image": uint8[3,H,W], "mask": int64[H,W], "index": int}.

    With `full_mask=True` (validation) the transform sees the image only and the mask
    is returned at its original resolution, so metrics never resize labels down.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: A.Compose,
        full_mask: bool = False,
        cache: bool = False,
        keep_errors: bool = False,
    ):
        self.samples = samples
        self.transform = transform
        self.full_mask = full_mask
        # Decoded once in the parent: forked workers share the pages copy-on-write.
        # keep_errors (data.on_bad_image: skip): an unreadable file's UserError is cached
        # and raised when its item is asked for, so SkipUnreadable can pass over it.
        decode = self._decode_or_error if keep_errors else self._decode
        self.cache = [decode(s) for s in samples] if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def item_classes(self) -> list[tuple[int, ...]]:
        """Class ids present in each item, what class-balanced sampling weighs."""
        return [sample.classes for sample in self.samples]

    def sample_of(self, index: int) -> Sample:
        """The sample item `index` comes from."""
        return self.samples[index]

    @staticmethod
    def _decode(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return load_image(sample.image_path), load_mask(sample)

    @classmethod
    def _decode_or_error(cls, sample: Sample) -> tuple[np.ndarray, np.ndarray] | UserError:
        try:
            return cls._decode(sample)
        except UserError as exc:
            return exc

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index`'s image and mask, from the cache or the files."""
        if self.cache is None:
            return self._decode(self.samples[index])
        pair = self.cache[index]
        if isinstance(pair, UserError):
            raise pair
        return pair

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self._pair(index)
        if self.full_mask:
            image = self.transform(image=image)["image"]
        else:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "index": index,
        }


def collate_full_masks(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Validation batches: masks kept as a list at their own sizes; images stacked when they
    share a size (data.image_size set), else kept as a list and run one by one."""
    images = [it["image"] for it in items]
    same_size = all(im.shape == images[0].shape for im in images)
    return {
        "image": torch.stack(images) if same_size else images,
        "mask": [it["mask"] for it in items],
        "index": [it["index"] for it in items],
    }


def _seed_worker(worker_id: int) -> None:
    # Albumentations 2.0 keeps its own RNG and does not reseed per worker: without this,
    # every worker would replay the same augmentation stream. torch.initial_seed() here is
    # the loader's per-epoch base seed + worker_id, so runs are reproducible.
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    info.dataset.transform.set_random_seed(seed)


# data.num_workers: auto off a CPU-cached dataset (unmeasured there: the old default)
AUTO_WORKERS = 2


def loader_workers(num_workers: int | str, cache: bool, device: torch.device) -> int:
    """data.num_workers, with "auto" chosen: 0 when cached images train on a CPU, else 2.

    Cached frames cost ~1 ms per image in this process (resize, flip, colour jitter at
    192x256) against ~170 ms of model step per image on 2 CPU cores; workers there only
    take cores from the model's threads (the CamVid recipe's 367-frame epochs: 0 workers
    13% faster than 2, docs/benchmarks.md; bench/recipe_profile.py: 2% on 96 frames)."""
    if num_workers != "auto":
        return int(num_workers)
    return 0 if cache and device.type == "cpu" else AUTO_WORKERS


def train_loader(
    dataset: SegDataset,
    batch_size: int,
    num_workers: int,
    generator: torch.Generator,
    sampler: Sampler | None = None,
    skip_unreadable: bool = False,
) -> DataLoader:
    """Shuffled loader, or one drawing from `sampler` (which should draw from `generator`);
    reseed `generator` at each epoch start for reproducible batches. `skip_unreadable`
    (data.on_bad_image: skip): batches list the items that cannot be read under "skipped"
    instead of failing (segarena.data.bad_images)."""
    return DataLoader(
        SkipUnreadable(dataset) if skip_unreadable else dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=len(dataset) > batch_size,  # a batch of one breaks BatchNorm
        worker_init_fn=_seed_worker if num_workers else None,
        generator=generator,
        collate_fn=collate_skipping if skip_unreadable else None,
        pin_memory=torch.cuda.is_available(),
    )


def val_loader(
    dataset: SegDataset, batch_size: int, num_workers: int, indices: list[int] | None = None
) -> DataLoader:
    """Ordered loader with full-resolution masks (over `indices` only, when given)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=indices,
        num_workers=num_workers,
        collate_fn=collate_full_masks,
        pin_memory=torch.cuda.is_available(),
    )


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on the device -> float, normalised (done here, not in the workers)."""
    return (images.float().div_(255.0) - mean) / std
