"""data.on_bad_image: skip -- training images that turn out unreadable mid-run are left out.

The start-up scan (segarena.data.readers) names every unreadable file before a run
starts; this is for a file that breaks afterwards (cut short by a full disk or a sync).
With `stop` (the default) the loader's UserError ends the run with exit code 2, naming
the file. With `skip`:

- `SkipUnreadable` wraps the training dataset: an item whose image or mask cannot be read
  becomes {"skipped": [image path, message]}. It runs in the DataLoader workers, which
  cannot share a Python object with the main process, so the news travels in the batch:
- `collate_skipping` collates the readable items and lists the others under "skipped";
- `SkippedImages` wraps the loader in the main process: it prints one warning per file,
  adds the path to a list that last.ckpt and the fold result keep, and drops batches left
  empty.

Validation images are never skipped: every epoch must score the same images for its
mIoU to compare, so a validation image that breaks mid-run stops the run (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import Dataset, default_collate

from segarena.errors import UserError, worker_free

SKIPPED = "skipped"


class SkipUnreadable(Dataset):
    """`dataset`'s items; an unreadable one becomes {"skipped": [image path, message]}."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def transform(self) -> Any:  # reseeded per DataLoader worker (data.dataset._seed_worker)
        return self.dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.dataset[index]
        except UserError as exc:
            path = self.dataset.sample_of(index).image_path
            return {SKIPPED: [str(path), worker_free(str(exc))]}


def collate_skipping(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The readable items collated as usual; the others' [path, message] under "skipped"."""
    readable = [item for item in items if SKIPPED not in item]
    batch = default_collate(readable) if readable else {}
    skipped = [item[SKIPPED] for item in items if SKIPPED in item]
    if skipped:
        batch[SKIPPED] = skipped
    return batch


class SkippedImages:
    """The training loader without the skipped items: warns once per file (`warn(line)`),
    adds its path to `paths`, and leaves out batches with no readable item."""

    def __init__(self, loader: Any, paths: list[str], warn: Callable[[str], None]) -> None:
        self.loader, self.paths, self.warn = loader, paths, warn

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # batch_size, sampler ... of the loader
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            for path, message in batch.pop(SKIPPED, []):
                if path not in self.paths:
                    self.paths.append(path)
                    self.warn(f"warning: skipped {message} (data.on_bad_image: skip)")
            if "image" in batch:
                yield batch


def skipped_summary(on_bad_image: str, fold_paths: list[list[str]]) -> dict[str, Any]:
    """summary.json's "skipped_images" under data.on_bad_image: skip: how many training
    images were left out and which (over every fold, each path once)."""
    if on_bad_image != "skip":
        return {}
    paths = sorted({path for paths in fold_paths for path in paths})
    return {"skipped_images": {"count": len(paths), "paths": paths}}
