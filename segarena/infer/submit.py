"""`segarena predict`: an ensemble of run directories over a folder of images -> a submission.

Images stream through in batches of same-size images (`spec.batch_size`; a DataLoader
decodes the next ones in worker processes meanwhile), so memory holds one batch, its
probabilities and the models, whatever the folder's size. The submission is validated
before it is moved into place.

Image ids: with a sample submission, its ids (e.g. `batch_01_vt/0021.jpg`) name the
files under --images, in the sample's order; with a COCO json (a contest's test.json),
its images' file_name, in its order; otherwise every image under --images (recursively,
sorted) is predicted and its id is its path relative to --images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from segarena.errors import BadOption
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.infer.images import (
    ImageFiles,
    as_is,
    coco_file_names,
    list_images,
    same_size_batches,
)
from segarena.records.leaderboard import write_sidecar
from segarena.run_dir.layout import RunDir
from segarena.submission.codecs import sample_image_ids
from segarena.submission.writer import SubmissionWriter
from segarena.util.files import check_writable

CONTEST_SIZE = (256, 256)  # the csv format's default mask size


def write_submission(
    spec: EnsembleSpec,
    images: Path,
    out: Path,
    *,
    fmt: str = "csv",
    sample: Path | None = None,
    size: tuple[int, int] | None = None,
    workers: int = 0,
    coco: Path | None = None,
) -> int:
    """Predict every image with the ensemble `spec` names and write the `fmt` submission
    to `out`; returns the image count.

    `size` is the mask size: csv defaults to 256x256, rle and png to each image's own size.
    Probabilities are resized (bilinear) to that size before the argmax.
    """
    if fmt == "csv" and size is None:
        size = CONTEST_SIZE
    # the output and the images are checked first: they fail before models load
    check_output(Path(out), fmt)
    num_classes = RunDir(spec.run_dirs[0]).config().data.num_classes
    ids = sample_image_ids(sample, fmt, num_classes) if sample else None
    if ids is None and coco is not None:
        ids = coco_file_names(coco)
    items = list_images(images, ids)
    ensemble = Ensemble.from_spec(spec)
    dtype = np.uint8 if ensemble.num_classes <= 256 else np.int32
    loader = DataLoader(ImageFiles(items), batch_size=None, num_workers=workers, collate_fn=as_is)
    with SubmissionWriter(fmt, Path(out), ensemble.num_classes, sample, size) as writer:
        for batch in same_size_batches(loader, spec.batch_size, lambda item: item[1]):
            ids, batch_images = zip(*batch)
            probs = ensemble.batch_probs(batch_images, size or batch_images[0].shape[:2])
            for image_id, mask in zip(ids, probs.argmax(1).numpy().astype(dtype)):
                writer.add(image_id, mask)
    # the sidecar: which runs and options made it (`segarena lb` scores those runs)
    write_sidecar(Path(out), made_by(spec, images, fmt, sample, size, len(items)))
    return len(items)


def made_by(spec: EnsembleSpec, images: Path, fmt: str, sample, size, count: int) -> dict:
    """What the sidecar records: run directories, folds, checkpoint, weights and options."""
    return {
        "run_dirs": [str(Path(r).resolve()) for r in spec.run_dirs],
        "folds": None if spec.folds is None else list(spec.folds),
        "checkpoint": spec.checkpoint,
        "weights": None if spec.weights is None else list(spec.weights),
        "options": spec.overrides,
        "format": fmt,
        "images": str(Path(images).resolve()),
        "sample": None if sample is None else str(Path(sample).resolve()),
        "size": None if size is None else list(size),
        "count": count,
    }


def check_output(out: Path, fmt: str) -> None:
    """UserError naming --out unless the submission can be written there."""
    if fmt != "png" and out.is_dir():
        raise BadOption("out", f"{out}: is a folder; expected a {fmt} file path")
    check_writable(out.parent, f"--out {out}")
