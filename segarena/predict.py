"""`segarena predict`: an ensemble of run directories over a folder of images -> a submission.

Images stream through one at a time (a DataLoader decodes the next ones in worker
processes meanwhile), so memory holds one image, its probabilities and the models,
whatever the folder's size. The submission is validated before it is moved into place.

Image ids: with a sample submission, its ids (e.g. `batch_01_vt/0021.jpg`) name the
files under --images, in the sample's order; without one, every image under --images
(recursively, sorted) is predicted and its id is its path relative to --images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from segarena.data.readers import IMAGE_EXTS, load_image
from segarena.errors import UserError
from segarena.infer.ensemble import Ensemble, load_run_config
from segarena.submission import SubmissionWriter, sample_image_ids

CONTEST_SIZE = (256, 256)  # the csv format's default mask size


def list_images(images_dir: Path, ids: list[str] | None = None) -> list[tuple[str, Path]]:
    """(id, path) of the images to predict: the sample's ids, or every image in the folder."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"--images {images_dir}: folder not found")
    if ids is None:
        paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise UserError(f"--images {images_dir}: no {', '.join(IMAGE_EXTS)} files in it")
        return [(p.relative_to(images_dir).as_posix(), p) for p in paths]
    missing = [i for i in ids if not (images_dir / i).is_file()]
    if missing:
        raise UserError(
            f"--images {images_dir}: {len(missing)} image(s) the sample lists are not there, "
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


def predict(
    run_dirs: Sequence[Path],
    images: Path,
    out: Path,
    fmt: str = "csv",
    sample: Path | None = None,
    size: tuple[int, int] | None = None,
    checkpoint: str = "best",
    weights: Sequence[float] | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "auto",
    workers: int = 0,
) -> int:
    """Predict every image and write the `fmt` submission to `out`; returns the image count.

    `size` is the mask size: csv defaults to 256x256, rle and png to each image's own size.
    Probabilities are resized (bilinear) to that size before the argmax. `overrides` are
    inference options (tta, scales, merge, window, overlap, sw_batch_size) that replace
    each run's config.infer values.
    """
    if fmt == "csv" and size is None:
        size = CONTEST_SIZE
    # the images are listed first: a wrong sample or folder fails before models load
    num_classes = load_run_config(Path(run_dirs[0])).data.num_classes
    ids = sample_image_ids(sample, fmt, num_classes) if sample else None
    items = list_images(images, ids)
    ensemble = Ensemble.from_runs(run_dirs, checkpoint, weights, overrides, device)
    dtype = np.uint8 if ensemble.num_classes <= 256 else np.int32
    loader = DataLoader(ImageFiles(items), batch_size=None, num_workers=workers, collate_fn=as_is)
    with SubmissionWriter(fmt, Path(out), ensemble.num_classes, sample, size) as writer:
        for image_id, image in loader:
            probs = ensemble.predict(image, size or image.shape[:2])
            writer.add(image_id, probs.argmax(0).numpy().astype(dtype))
    return len(items)
