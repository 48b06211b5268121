"""Ensemble weights tuned on out-of-fold (OOF) probabilities, reported against the mean.

Runs of one experiment (same data, same folds.csv) each hold an OOF probability map of
every image. The ensemble's OOF prediction for weights w is argmax(sum_m w_m p_m); its
mIoU is what the weights are tuned for. mIoU of an argmax is piecewise constant in w, so
gradient methods stall on it; the search is exhaustive over a lattice of the simplex
(weights >= 0 summing to 1, in steps of 1/steps), which also holds the plain mean and
every member alone. Hand-written because no dependency scores segmentation ensembles.

Tuned weights are scored on the images they were tuned on, so their mIoU is optimistic.
The cross-fitted figure is honest: for each fold, weights are tuned on the other folds'
images and scored on this fold's, and the folds' matrices are pooled.

Scoring follows training's rule: stored OOF probabilities (downscaled by train.oof_scale)
are upsampled to each mask's size, mixed, and argmaxed there.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segarena.config import Config
from segarena.data.readers import Sample, load_mask
from segarena.errors import BadOption, UserError
from segarena.metrics import mious, scores
from segarena.run_dir.folds import check_same_folds
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import oof_paths, samples_by_oof_name

# why out-of-fold ensembles (tune-weights, evaluate --split val) check folds.csv
ONE_SPLIT = (
    "out-of-fold ensembles need runs of one experiment (same data, same folds). Score "
    "mixed runs on a labelled folder instead (evaluate --images DIR --masks DIR)"
)
CANDIDATE_CHUNK = 32  # weight vectors mixed at once: bounds memory at chunk x C x H x W


def simplex_grid(members: int, steps: int) -> np.ndarray:
    """Every weight vector [K, members] with entries in {0, 1/steps, ..., 1} summing to 1,
    the plain mean first (added when the lattice lacks it)."""
    rows = [
        np.diff([0, *cuts, steps]) / steps
        for cuts in itertools.combinations_with_replacement(range(steps + 1), members - 1)
    ]
    mean = np.full(members, 1.0 / members)
    rest = [r for r in rows if not np.allclose(r, mean)]
    return np.stack([mean, *rest])


def candidate_matrices(
    weights: np.ndarray, member_probs: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> np.ndarray:
    """Confusion matrices [K, C, C] of one image for each weight vector [K, M], given the
    members' probabilities [M, C, H, W] and the target mask [H, W]."""
    num_classes = member_probs.shape[1]
    valid = target != ignore_index
    truth = target[valid].long() * num_classes
    out = []
    for first in range(0, len(weights), CANDIDATE_CHUNK):
        chunk = torch.as_tensor(weights[first : first + CANDIDATE_CHUNK], dtype=torch.float32)
        mixed = torch.einsum("km,mchw->kchw", chunk, member_probs)
        pred = mixed.argmax(1)[:, valid]  # [k, pixels]
        offsets = torch.arange(len(chunk))[:, None] * num_classes**2
        counts = torch.bincount(
            (offsets + truth + pred).flatten(), minlength=len(chunk) * num_classes**2
        )
        out.append(counts.reshape(len(chunk), num_classes, num_classes).numpy())
    return np.concatenate(out)


def _best(values: np.ndarray, weights: np.ndarray) -> int:
    """Index of the highest mIoU; ties go to the weights closest to the plain mean."""
    top = np.flatnonzero(np.isclose(values, np.nanmax(values), rtol=0, atol=1e-12))
    spread = np.abs(weights[top] - weights[0]).sum(1)
    return int(top[np.argmin(spread)])


@dataclass
class OofImages:
    """The images every run has OOF probabilities of, with their fold and files."""

    config: Config  # the first run's
    names: list[str]  # OOF file names (oof_name of the sample ids)
    folds: list[int]
    paths: list[list[Path]]  # per image, one file per run
    samples: dict[str, Sample]  # by OOF name


def oof_images(run_dirs: Sequence[Path]) -> OofImages:
    """The OOF files of runs of one experiment; UserError when a run lacks some."""
    check_same_folds(run_dirs, ONE_SPLIT)
    config = RunDir(run_dirs[0]).config()
    found = [oof_paths(r) for r in run_dirs]
    names = sorted(set.intersection(*(set(f) for f in found)))
    if not names:
        raise UserError(
            f"{', '.join(map(str, run_dirs))}: no image has out-of-fold probabilities in "
            "every run; train each with --folds all"
        )
    for run_dir, paths in zip(run_dirs, found):
        if len(paths) != len(names):
            raise UserError(
                f"{run_dir}: OOF probabilities for {len(paths)} images, but only {len(names)} "
                "are shared by every run; train each run on every fold (--folds all)"
            )
    return OofImages(
        config=config,
        names=names,
        folds=[found[0][n][0] for n in names],
        paths=[[f[n][1] for f in found] for n in names],
        samples=samples_by_oof_name(config),
    )


def tune_weights(run_dirs: Sequence[Path], steps: int = 10) -> dict[str, Any]:
    """Search the simplex lattice for the weights (one per run) of the best OOF mIoU.

    Returns the tuned weights and their in-sample OOF mIoU, the plain mean's, each run's
    alone, and the cross-fitted mIoU of tuning on the other folds (see module docstring).
    """
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise UserError("tune-weights: give at least two run directories to weigh")
    if not 1 <= steps <= 100:
        raise BadOption("steps", f"{steps}: expected 1..100 (weights move by 1/steps)")
    oof = oof_images(run_dirs)
    config, folds = oof.config, oof.folds
    grid = simplex_grid(len(run_dirs), steps)
    fold_ids = sorted(set(folds))
    per_fold = np.zeros((len(grid), len(fold_ids), config.data.num_classes,
                         config.data.num_classes), dtype=np.int64)  # fmt: skip
    for name, fold, member_paths in zip(oof.names, folds, oof.paths):
        sample = oof.samples.get(name)
        if sample is None:
            raise UserError(f"{member_paths[0]}: no sample of the run's dataset has this id")
        target = torch.from_numpy(load_mask(sample).astype(np.int64))
        probs = torch.stack([oof_probs(p, tuple(target.shape)) for p in member_paths])
        cms = candidate_matrices(grid, probs, target, config.data.ignore_index)
        per_fold[:, fold_ids.index(fold)] += cms
    pooled = per_fold.sum(1)
    pooled_mious = mious(pooled)
    best = _best(pooled_mious, grid)
    fold_weights, crossfit = [], np.zeros_like(pooled[0])
    for i, _ in enumerate(fold_ids):
        others = pooled - per_fold[:, i]
        pick = _best(mious(others), grid) if len(fold_ids) > 1 else best
        fold_weights.append(grid[pick].tolist())
        crossfit += per_fold[pick, i]
    solo = [int(np.flatnonzero(np.isclose(grid[:, m], 1.0))[0]) for m in range(len(run_dirs))]
    return {
        "runs": [str(r) for r in run_dirs],
        "images": len(oof.names),
        "steps": steps,
        "candidates": len(grid),
        "weights": grid[best].tolist(),
        "miou_tuned": float(pooled_mious[best]),
        "miou_mean": float(pooled_mious[0]),
        "miou_crossfit": scores(crossfit)["miou"],
        "crossfit_fold_weights": dict(zip(map(str, fold_ids), fold_weights)),
        "miou_each": [float(pooled_mious[i]) for i in solo],
    }


def oof_probs(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Stored OOF probabilities [C, *size] as float32 in [0, 1] (uint8 files hold p * 255)."""
    array = np.load(path)
    probs = torch.from_numpy(array.astype(np.float32))
    if array.dtype == np.uint8:
        probs /= 255.0
    if tuple(probs.shape[-2:]) != size:
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs
