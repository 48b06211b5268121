"""Inference-time arms: the baseline's own checkpoints with other inference options or
another checkpoint kind, scored on the baseline's own validation images. Nothing trains.

Each fold's checkpoint scores the validation images of that fold only (out of fold, as
training validated them), one confusion matrix per image, through predict's own code
(`Ensemble.batch_probs`: resize, normalisation, TTA, scales, sliding window), so the arm pairs
image by image with the baseline's per-image matrices. Same-size images go through
the model in batches of predict's default size. The matrices are kept in the
ablation folder (`infer_<arm>_seed<N>.npz`): a rerun of the ablation reuses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segarena.data.folds import fold_indices
from segarena.data.readers import load_image, load_mask
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.infer.images import same_size_batches
from segarena.metrics import confusion_matrix
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import RunMatrices
from segarena.util.files import atomic_output


def score_checkpoints(
    run_dir: Path, checkpoint: str, overrides: dict[str, Any], device: str = "auto"
) -> tuple[RunMatrices, float]:
    """Per-image matrices of every trained fold's `checkpoint` with inference `overrides`,
    each fold on its own validation images; and the seconds it took."""
    started = time.perf_counter()
    run = RunDir(run_dir)
    spec = EnsembleSpec((Path(run_dir),), checkpoint=checkpoint, overrides=overrides, device=device)
    matrices = fold_matrices(run, lambda k: spec.with_folds([k]))
    return matrices, time.perf_counter() - started


def fold_matrices(run: RunDir, spec_of_fold: Callable[[int], EnsembleSpec]) -> RunMatrices:
    """Per-image matrices of each of `run`'s folds k, its validation images scored by the
    ensemble `spec_of_fold(k)` names (out of fold, as training validated them)."""
    config = run.config()
    samples, folds = run.samples_and_folds(config)
    classes, ignore = config.data.num_classes, config.data.ignore_index
    ids, fold_of, cms = [], [], []
    for k in sorted(run.info().folds):
        _, val_idx = fold_indices(folds, k)
        spec = spec_of_fold(k)
        ensemble = Ensemble.from_spec(spec)
        labelled = (
            (samples[i].id, load_image(samples[i].image_path), mask_tensor(samples[i]))
            for i in val_idx
        )
        for batch in same_size_batches(labelled, spec.batch_size, lambda item: item[1]):
            batch_ids, images, masks = zip(*batch)
            labels = ensemble.batch_probs(images, tuple(masks[0].shape)).argmax(1)
            for sample_id, label, mask in zip(batch_ids, labels, masks):
                cm = confusion_matrix(label, mask, classes, ignore)
                ids.append(sample_id)
                fold_of.append(k)
                cms.append(cm.numpy())
    return RunMatrices(ids, fold_of, np.stack(cms).astype(np.int64), "infer")


def mask_tensor(sample) -> torch.Tensor:
    """A sample's mask as the int64 tensor confusion_matrix takes."""
    return torch.from_numpy(load_mask(sample).astype(np.int64))


def save_matrices(path: Path, matrices: RunMatrices, seconds: float) -> None:
    """The matrices, ids, folds and seconds as one .npz, written atomically."""
    with atomic_output(path) as tmp, tmp.open("wb") as f:
        np.savez(
            f,
            ids=np.array(matrices.ids, dtype=str),
            folds=np.array(matrices.folds, dtype=np.int64),
            cms=matrices.cms,
            seconds=np.array(seconds),
        )


def load_matrices(path: Path) -> tuple[RunMatrices, float]:
    with np.load(path, allow_pickle=False) as data:
        ids = [str(i) for i in data["ids"]]
        matrices = RunMatrices(ids, data["folds"].tolist(), data["cms"], "infer")
        return matrices, float(data["seconds"])
