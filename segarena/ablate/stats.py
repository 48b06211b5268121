"""The gain of an arm over the baseline, paired image by image, with its 95% interval.

One seed: the images both runs validated are paired by id and the interval is
`metrics.bootstrap_miou_diff_ci` (the same numbers `segarena compare BASELINE ARM` gives).

Several seeds (`--seeds 0,1`): the gain is the mean over seeds of each seed's gain
mIoU(arm_s) - mIoU(baseline_s), the baseline and the arm of a seed paired by (seed, image).
Its interval is a two-level bootstrap, so that it holds seed variance as well as image
variance: each resample draws S seeds with replacement, then for each drawn seed its own
resample of the images (the same images for the baseline and the arm of that seed), and
averages the drawn seeds' gains. With few seeds the seed level is coarse (two seeds give
three distinct seed draws), which makes the interval, if anything, too narrow; it is still
wider than pooling the seeds' images as if they were one larger set.
"""

from __future__ import annotations

import numpy as np

from segarena.metrics import bootstrap_miou_diff_ci, draw_counts, resampled_mious, scores
from segarena.run_dir.per_image import RunMatrices, paired_matrices


def paired(base: RunMatrices, arm: RunMatrices, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The two runs' per-image matrices [N, C, C] of the images both hold, in one order."""
    return paired_matrices(base, arm, f"arm {name!r} and the baseline")


def pooled_miou(cms: np.ndarray) -> float:
    return scores(cms.sum(0))["miou"]


def gain_interval(
    pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """(gain, 95% interval) of mIoU(arm) - mIoU(baseline) over per-seed (base, arm) pairs."""
    gain = float(np.mean([pooled_miou(arm) - pooled_miou(base) for base, arm in pairs]))
    if len(pairs) == 1:
        base, arm = pairs[0]
        return gain, bootstrap_miou_diff_ci(base, arm, n_boot=n_boot, seed=seed)
    return gain, seed_bootstrap(pairs, n_boot=n_boot, seed=seed)


def seed_bootstrap(
    pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Two-level percentile 95% interval (seeds, then images within each drawn seed)."""
    rng = np.random.default_rng(seed)
    count = len(pairs)
    picks = rng.integers(count, size=(n_boot, count))  # the seeds drawn by each resample
    gains = np.zeros(n_boot)
    for slot in range(count):
        for s, (base, arm) in enumerate(pairs):
            rows = np.flatnonzero(picks[:, slot] == s)
            if rows.size:
                draws = draw_counts(rng, len(base), rows.size)
                gains[rows] += resampled_mious(arm, draws) - resampled_mious(base, draws)
    low, high = np.nanpercentile(gains / count, [2.5, 97.5])
    return float(low), float(high)
