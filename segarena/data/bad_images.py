"""data.on_bad_image: skip -- training images that turn out unreadable mid-run are left out.

The start-up scan (segarena.data.readers) names every unreadable file before a run
starts; this is for a file that breaks afterwards (cut short by a full disk or a sync).
With `stop` (the default) the loader's UserError ends the run with exit code 2, naming
the file. With `skip`:

- `SkipUnreadable` wraps the training dataset: an item whose image or mask cannot be read
  is replaced by the next readable one, and carries {"skipped": [[image path, message]]}.
  Replacing (not dropping) keeps every batch full, so with several processes each one
  takes the same number of steps: a rank with one batch fewer would leave the others
  waiting in DDP's gradient all-reduce. It runs in the DataLoader workers, which cannot
  share a Python object with the main process, so the news travels in the batch:
- `collate_skipping` collates the items and lists the unreadable ones under "skipped";
- `SkippedImages` wraps the loader in the main process: it prints one warning per file
  and adds the path to a list that last.ckpt and the fold result keep (rank 0's list
  gathers every process's at each epoch end).

With data.cache the training images are decoded before epoch 1; a file that fails then
is cached as its error and passed over in the same way (`SegDataset(keep_errors=True)`),
except with data.tiles, whose masks are read to place the tiles: there it stops the run.

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
    """`dataset`'s items; an unreadable one is replaced by the next readable item, which
    carries {"skipped": [[image path, message], ...]} for the images passed over."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    @property
    def transform(self) -> Any:  # reseeded per DataLoader worker (data.dataset._seed_worker)
        return self.dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        passed_over = []
        for offset in range(len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            try:
                item = self.dataset[candidate]
            except UserError as exc:
                path = self.dataset.sample_of(candidate).image_path
                passed_over.append([str(path), worker_free(str(exc))])
                continue
            return {**item, SKIPPED: passed_over} if passed_over else item
        raise UserError(
            f"no training image can be read ({len(passed_over)} tried, e.g. "
            f"{passed_over[0][1]}); data.on_bad_image: skip needs some readable images"
        )


def collate_skipping(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The items collated as usual; the images they replaced, [path, message] each, under
    "skipped"."""
    skipped = [entry for item in items for entry in item.get(SKIPPED, [])]
    batch = default_collate([{k: v for k, v in item.items() if k != SKIPPED} for item in items])
    if skipped:
        batch[SKIPPED] = skipped
    return batch


class SkippedImages:
    """The training loader; warns once per skipped file (`warn(line)`) and adds its path
    to `paths`."""

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
            yield batch


def skipped_summary(on_bad_image: str, fold_paths: list[list[str]]) -> dict[str, Any]:
    """summary.json's "skipped_images" under data.on_bad_image: skip: how many training
    images were left out and which (over every fold, each path once)."""
    if on_bad_image != "skip":
        return {}
    paths = sorted({path for paths in fold_paths for path in paths})
    return {"skipped_images": {"count": len(paths), "paths": paths}}
