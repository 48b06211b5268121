"""Per-image confusion matrices of a run's out-of-fold (OOF) predictions.

Two sources, the first preferred:

1. `fold_k/per_image_cm.npy` (int64 [N, C, C]) with `fold_k/per_image_ids.json` (the N
   sample ids in the same order), written by training from the best checkpoint's
   validation pass. They are exact: they sum to the fold's confusion matrix.
2. `fold_k/oof/<id>.npy`, the stored probabilities (downscaled by train.oof_scale, uint8
   or float16), for runs trained before (1) existed. The probabilities are upsampled
   bilinearly to the mask's size and then argmaxed, the way training scores (logits are
   resized to the mask, never the mask to the logits). Shrinking the masks with nearest
   neighbour instead would be cheaper, but it drops thin classes (poles, signs) and scores
   other pixels than the run's own mIoU does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segarena.config import Config
from segarena.data.readers import Sample, load_mask, read_samples
from segarena.errors import UserError
from segarena.metrics import confusion_matrix
from segarena.run_dir.layout import RunDir
from segarena.util.files import atomic_output, write_text_atomic

PER_IMAGE_CM = "per_image_cm.npy"
PER_IMAGE_IDS = "per_image_ids.json"


def oof_name(sample_id: str) -> str:
    """File-name-safe form of a sample id (ids may hold a source prefix with '/'): training
    writes fold_k/oof/<oof_name(id)>.npy."""
    return sample_id.replace("/", "__")


class PerImageRecorder:
    """Training callback: the confusion matrix of every validation image, saved per fold."""

    def __init__(self, samples: list[Sample], num_classes: int, ignore_index: int) -> None:
        self.samples = samples
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ids: list[str] = []
        self.matrices: list[np.ndarray] = []

    def wrap(self, then: Callable[[list[int], torch.Tensor], None]) -> Callable:
        """An on_probs callback that records each image's matrix, then calls `then`."""

        def record(indices: list[int], probs: torch.Tensor) -> None:
            sample = self.samples[indices[0]]
            # the mask is read again rather than passed down: validate() hands on the
            # probabilities only, at the mask's resolution
            target = torch.from_numpy(load_mask(sample).astype(np.int64))
            pred = probs[0].argmax(0).cpu()
            cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
            self.ids.append(sample.id)
            self.matrices.append(cm.numpy())
            then(indices, probs)

        return record

    def save(self, fold_dir: Path) -> None:
        """Write per_image_cm.npy and per_image_ids.json (atomically, ids last)."""
        shape = (0, self.num_classes, self.num_classes)
        cms = np.stack(self.matrices) if self.matrices else np.zeros(shape, np.int64)
        with atomic_output(fold_dir / PER_IMAGE_CM) as tmp, tmp.open("wb") as f:
            np.save(f, cms.astype(np.int64))
        write_text_atomic(fold_dir / PER_IMAGE_IDS, json.dumps(self.ids) + "\n")


@dataclass
class RunMatrices:
    """Per-image confusion matrices of one run: ids[i] was validated by fold folds[i]."""

    ids: list[str]
    folds: list[int]
    cms: np.ndarray  # int64 [N, C, C]
    source: str  # "per_image_cm" or "oof"


def stored_matrices(run_dir: Path) -> RunMatrices | None:
    """The matrices training saved, or None when a fold with OOF files lacks them."""
    ids, folds, cms = [], [], []
    run = RunDir(run_dir)
    for k, fold_dir in run.fold_dirs():
        if not (fold_dir / PER_IMAGE_CM).is_file() or not (fold_dir / PER_IMAGE_IDS).is_file():
            if run.oof_dir(k).is_dir():
                return None
            continue
        fold_ids = json.loads((fold_dir / PER_IMAGE_IDS).read_text())
        fold_cms = np.load(fold_dir / PER_IMAGE_CM)
        if len(fold_ids) != len(fold_cms):
            raise UserError(
                f"{fold_dir / PER_IMAGE_CM}: {len(fold_cms)} matrices but "
                f"{len(fold_ids)} ids in {PER_IMAGE_IDS}; expected one per id"
            )
        ids += fold_ids
        folds += [k] * len(fold_ids)
        cms.append(fold_cms)
    if not ids:
        return None
    return RunMatrices(ids, folds, np.concatenate(cms).astype(np.int64), "per_image_cm")


def oof_paths(run_dir: Path) -> dict[str, tuple[int, Path]]:
    """OOF file name -> (fold, path) for every fold_k/oof/*.npy of a run."""
    found = {}
    run = RunDir(run_dir)
    for k, _ in run.fold_dirs():
        for path in sorted(run.oof_dir(k).glob("*.npy")):
            found[path.stem] = (k, path)
    return found


def oof_prediction(path: Path, size: tuple[int, int]) -> np.ndarray:
    """Class map [H, W] of stored OOF probabilities, upsampled bilinearly to `size` first."""
    probs = torch.from_numpy(np.load(path).astype(np.float32))[None]
    if probs.ndim != 4:
        raise UserError(f"{path}: OOF array has shape {tuple(probs.shape[1:])}; expected [C, H, W]")
    if tuple(probs.shape[-2:]) != tuple(size):
        probs = F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)
    # numpy's argmax over the leading axis is several times faster than torch's on the CPU
    return np.argmax(probs[0].numpy(), axis=0)


def samples_by_oof_name(config: Config) -> dict[str, Sample]:
    """The run's samples keyed by their OOF file name (reads and checks the dataset)."""
    return {oof_name(s.id): s for s in read_samples(config.data, config.split)}


def oof_matrices(run_dir: Path, config: Config, samples: dict[str, Sample]) -> RunMatrices:
    """Per-image matrices recomputed from the OOF probabilities and the ground-truth masks."""
    data = config.data
    ids, folds, cms = [], [], []
    for name, (k, path) in oof_paths(run_dir).items():
        sample = samples.get(name)
        if sample is None:
            raise UserError(
                f"{path}: no sample of the run's dataset ({data.root}) has this id; "
                "expected the data the run was trained on"
            )
        mask = load_mask(sample).astype(np.int64)
        pred = oof_prediction(path, mask.shape)
        if int(pred.max(initial=0)) >= data.num_classes:
            raise UserError(f"{path}: {int(pred.max()) + 1} classes, expected {data.num_classes}")
        cm = confusion_matrix(
            torch.from_numpy(pred), torch.from_numpy(mask), data.num_classes, data.ignore_index
        )
        ids.append(sample.id)
        folds.append(k)
        cms.append(cm.numpy())
    if not ids:
        raise UserError(
            f"{run_dir}: no out-of-fold predictions (fold_*/oof/*.npy); expected a run "
            "with at least one finished fold"
        )
    return RunMatrices(ids, folds, np.stack(cms).astype(np.int64), "oof")


def run_matrices(
    run_dir: Path, use_stored: bool = True, samples: dict[str, Sample] | None = None
) -> RunMatrices:
    """A run's per-image matrices: the stored ones when present (and `use_stored`), else
    recomputed from the OOF files (`samples`, from samples_by_oof_name, saves a rescan)."""
    stored = stored_matrices(run_dir) if use_stored else None
    if stored is not None:
        return stored
    config = RunDir(run_dir).config()
    return oof_matrices(run_dir, config, samples or samples_by_oof_name(config))


def paired_matrices(a: RunMatrices, b: RunMatrices, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The per-image matrices [N, C, C] of the images both runs hold, in a's order: the
    pairing `compare` and `ablate` bootstrap over. UserError (starting with `what`) when
    they share no image."""
    index = {sample_id: i for i, sample_id in enumerate(b.ids)}
    rows = [(i, index[sample_id]) for i, sample_id in enumerate(a.ids) if sample_id in index]
    if not rows:
        raise UserError(
            f"{what}: no out-of-fold image in common ({len(a.ids)} and {len(b.ids)} images); "
            "expected runs on the same data and folds"
        )
    rows_a, rows_b = (np.array(r) for r in zip(*rows))
    return a.cms[rows_a], b.cms[rows_b]
