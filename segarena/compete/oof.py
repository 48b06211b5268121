"""Out-of-fold (OOF) scoring for `segarena compete`: per-image matrices of any choice
(runs, checkpoint, weights, inference options), the keep rule, and the pseudo threshold.

Every decision pairs two choices image by image on the training folds' own validation
images (each fold's models score only the images they did not train on) and bootstraps
the mIoU difference over images (segarena.ablate.stats.gain_interval, the interval
`segarena compare` and `ablate` report). The test images are never scored.

Keep rule: a stage is kept when the lower bound of its 95% interval is above 0 (a point
gain alone is not enough). When a stage offers several candidates (hflip, multi-scale),
the one with the largest point gain among those that pass is kept; picking the best of a
few arms makes its interval a little optimistic, which the rule's strictness offsets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segarena.ablate.infer_arms import (
    fold_matrices,
    load_matrices,
    save_matrices,
    score_checkpoints,
)
from segarena.ablate.stats import gain_interval, paired, pooled_miou
from segarena.data.readers import load_mask
from segarena.infer.ensemble import EnsembleSpec
from segarena.infer.tune_weights import oof_probs
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import RunMatrices, oof_paths, run_matrices, samples_by_oof_name

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_KEPT = 0.5  # the threshold must keep at least this share of the labelled pixels


# what training's validation ran; a choice without TTA must not take the runs' infer.tta
PLAIN = {"tta": "none", "scales": [1.0]}


def inference_options(choice: dict[str, Any]) -> dict[str, Any]:
    """The choice's inference options over plain ones: the choice is scored and submitted
    with exactly these, whatever the runs' config.infer says (the CamVid recipe's is
    hflip, which would otherwise put TTA back into a submission whose TTA was dropped)."""
    return {**PLAIN, **choice["tta"]}


def choice_spec(choice: dict[str, Any], device: str, weights=None) -> EnsembleSpec:
    """The EnsembleSpec of a choice: its runs, checkpoint, weights and inference options."""
    weights = weights if weights is not None else choice.get("weights")
    return EnsembleSpec(
        run_dirs=tuple(Path(r) for r in choice["runs"]),
        checkpoint=choice["checkpoint"],
        weights=None if weights is None else tuple(weights),
        overrides=inference_options(choice),
        device=device,
    )


def score_choice(choice: dict[str, Any], device: str) -> RunMatrices:
    """Per-image OOF matrices of a choice. One run with the plain options and best.ckpt:
    the matrices training saved; one run otherwise: ablate's `score_checkpoints`; several
    runs: `ensemble_matrices` (with per-fold weights when the choice has them)."""
    runs = [Path(r) for r in choice["runs"]]
    if len(runs) == 1 and choice.get("fold_weights") is None:
        if not choice["tta"] and choice["checkpoint"] == "best":
            return run_matrices(runs[0])
        options = inference_options(choice)
        return score_checkpoints(runs[0], choice["checkpoint"], options, device)[0]
    return ensemble_matrices(choice, device)


def ensemble_matrices(choice: dict[str, Any], device: str) -> RunMatrices:
    """score_checkpoints for an ensemble of runs of one folds.csv: fold k's images scored
    by the fold-k models of every run, weighted by choice["fold_weights"][k] when given
    (cross-fitted: tuned without fold k's images) else by choice["weights"]."""

    def spec_of_fold(k: int):
        fold_weights = (choice.get("fold_weights") or {}).get(str(k))
        return choice_spec(choice, device, fold_weights).with_folds([k])

    return fold_matrices(RunDir(choice["runs"][0]), spec_of_fold)


def cached_matrices(path: Path, choice: dict[str, Any], device: str) -> RunMatrices:
    """score_choice, kept in `path` (.npz) so that a resumed compete does not score again."""
    if path.is_file():
        return load_matrices(path)[0]
    started = time.perf_counter()
    matrices = score_choice(choice, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_matrices(path, matrices, time.perf_counter() - started)
    return matrices


def gain_of(base: RunMatrices, arm: RunMatrices, name: str, n_boot: int = 2000) -> dict:
    """mIoU of the current choice and of a candidate on the images both scored, the gain
    and its paired-bootstrap 95% interval."""
    cms_base, cms_arm = paired(base, arm, name)
    gain, (low, high) = gain_interval([(cms_base, cms_arm)], n_boot=n_boot)
    return {
        "miou_before": pooled_miou(cms_base),
        "miou": pooled_miou(cms_arm),
        "gain": gain,
        "ci": [low, high],
        "images": len(cms_base),
    }


def keeps(result: dict) -> bool:
    """The keep rule: the interval's lower bound is above 0."""
    return result["ci"][0] > 0


def choose_threshold(run_dir: Path) -> dict[str, Any]:
    """The pseudo-label threshold, chosen on the run's OOF probabilities (plain, best.ckpt):
    for each candidate threshold, the share of labelled pixels whose top probability
    reaches it and the accuracy of their argmax. The accuracy of kept pixels rises with the
    threshold and the share falls: the highest threshold that still keeps MIN_KEPT of the
    pixels is the most accurate one that keeps enough to learn from (the lowest candidate
    when none keeps that much)."""
    config = RunDir(run_dir).config()
    samples = samples_by_oof_name(config)
    ignore = config.data.ignore_index
    kept = np.zeros(len(THRESHOLDS))
    right = np.zeros(len(THRESHOLDS))
    total = 0
    for name, (_, path) in oof_paths(run_dir).items():
        mask = torch.from_numpy(load_mask(samples[name]).astype(np.int64))
        top, label = oof_probs(path, tuple(mask.shape)).max(0)
        valid = mask != ignore
        total += int(valid.sum())
        correct = (label == mask) & valid
        for i, t in enumerate(THRESHOLDS):
            confident = (top >= t) & valid
            kept[i] += int(confident.sum())
            right[i] += int((confident & correct).sum())
    share = kept / max(total, 1)
    accuracy = np.where(kept > 0, right / np.maximum(kept, 1), 0.0)
    passing = [i for i in range(len(THRESHOLDS)) if share[i] >= MIN_KEPT]
    pick = passing[-1] if passing else 0
    return {
        "threshold": THRESHOLDS[pick],
        "rule": f"the highest threshold keeping >= {MIN_KEPT:.0%} of OOF pixels",
        "table": [
            {"threshold": t, "kept_share": float(s), "kept_accuracy": float(a)}
            for t, s, a in zip(THRESHOLDS, share, accuracy)
        ],
        "oof_pixels": total,
    }
