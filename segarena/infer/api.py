"""The Python API of inference: `evaluate` scores runs, `Predictor` runs them on images.

Both take runs (`segarena.train.run.Run` or run-directory paths) and the same inference
options as `segarena evaluate` / `segarena predict` (tta, scales, merge, window, overlap,
sw_batch_size; None keeps each run's config.infer), and run through the same code, so a
score measured here is the score of the submission `predict` would write.

    scores = evaluate([run], images="test/", masks="testannot/", tta="hflip")
    probs = Predictor([run], tta="hflip").probs(image)   # (C, H, W) float32
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segarena.errors import UserError
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.infer.evaluate import evaluate_ensemble

RunLike = os.PathLike | str  # a Run (os.PathLike) or a run directory's path


@dataclass(frozen=True)
class Scores:
    """What `evaluate` measured: the pooled mIoU, per-class IoU and pixel accuracy, each
    fold's scores, and the eval_*.json file it wrote into the first run directory."""

    miou: float
    per_class_iou: dict[str, float]
    pixel_acc: float
    folds: list[dict[str, Any]]
    path: Path


def _spec(
    runs: Sequence[RunLike] | RunLike,
    *,
    checkpoint: str,
    weights: Sequence[float] | None,
    folds: Sequence[int] | None,
    device: str,
    batch_size: int,
    options: dict[str, Any],
) -> EnsembleSpec:
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    return EnsembleSpec(
        run_dirs=tuple(Path(os.fspath(r)) for r in runs),
        checkpoint=checkpoint,
        weights=None if weights is None else tuple(float(w) for w in weights),
        overrides={k: v for k, v in options.items() if v is not None},
        device=device,
        folds=None if folds is None else tuple(folds),
        batch_size=batch_size,
    )


def evaluate(
    runs: Sequence[RunLike] | RunLike,
    *,
    split: str = "val",
    images: str | Path | None = None,
    masks: str | Path | None = None,
    coco: str | Path | None = None,
    checkpoint: str = "best",
    weights: Sequence[float] | None = None,
    folds: Sequence[int] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    workers: int = 0,
    **options: Any,
) -> Scores:
    """Score `runs` (one run, or an ensemble of runs sharing folds.csv).

    Without `images`, each fold is scored on its own `split` images ("val": the honest
    out-of-fold score); with `images` and `masks` (or a COCO json `coco`, the images by
    default in its folder), every model scores that labelled set.
    `options` are inference options: tta ("none", "hflip", "vflip", "d4"), scales, merge,
    window, overlap, sw_batch_size."""
    spec = _spec(runs, checkpoint=checkpoint, weights=weights, folds=folds, device=device,
                 batch_size=batch_size, options=options)  # fmt: skip
    result = evaluate_ensemble(
        spec,
        split,
        images=None if images is None else Path(images),
        masks=None if masks is None else Path(masks),
        coco=None if coco is None else Path(coco),
        workers=workers,
    )
    return Scores(
        miou=result["miou"],
        per_class_iou=result["per_class_iou"],
        pixel_acc=result["pixel_acc"],
        folds=result["folds"],
        path=Path(result["path"]),
    )


class Predictor:
    """The ensemble of `runs` (every fold's checkpoint, weighted), loaded once, that
    predicts raw images: `probs(image)` and `predict(image)` (nnU-Net's nnUNetPredictor,
    mmseg's inference_model)."""

    def __init__(
        self,
        runs: Sequence[RunLike] | RunLike,
        *,
        checkpoint: str = "best",
        weights: Sequence[float] | None = None,
        folds: Sequence[int] | None = None,
        device: str = "auto",
        **options: Any,
    ) -> None:
        spec = _spec(runs, checkpoint=checkpoint, weights=weights, folds=folds, device=device,
                     batch_size=1, options=options)  # fmt: skip
        self.ensemble = Ensemble.from_spec(spec)

    @property
    def classes(self) -> list[str]:
        return list(self.ensemble.classes)

    def probs(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """Class probabilities (C, H, W) float32 of an H x W x 3 uint8 RGB image, at
        `out_size` (default: the image's size)."""
        return self.ensemble.probs(_rgb(image), out_size).numpy()

    def predict(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> np.ndarray:
        """The class index (H, W) of every pixel: the argmax of `probs`."""
        return self.probs(image, out_size).argmax(0).astype(np.int64)


def _rgb(image: np.ndarray) -> np.ndarray:
    """The image as H x W x 3 uint8, or a UserError naming what was given."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise UserError(
            f"image of shape {image.shape} and dtype {image.dtype}: expected an "
            "H x W x 3 uint8 RGB array (as segarena.data.readers.load_image returns)"
        )
    return image
