"""Confident learning for segmentation, streamed image by image.

Why hand-written: cleanlab (the reference implementation of Northcutt et al.) is AGPL, so
the product must not import it; and cleanlab wants every image's probabilities in one
(N, K, H, W) array, which full-resolution masks of a real dataset do not fit in memory.
This module follows the semantics of cleanlab 2.9's defaults (checked against it in
tests/test_audit.py):

`cleanlab.segmentation.filter.find_label_issues` (filter by low self-confidence):
  1. per-class threshold t_k = mean of p_k over the pixels labelled k, clipped below at
     2e-6 (a class no pixel is labelled with gets 2e-6);
  2. the number of issues n = pixels whose predicted class j = argmax p differs from the
     label while p_j >= t_j - 1e-6 (confidently another class);
  3. the n pixels of the whole dataset with the lowest self-confidence p_label are the
     candidates, minus those whose argmax is the label.
`cleanlab.segmentation.rank.get_label_quality_scores` (method "softmin", temperature 0.1):
  an image's score is sum(s * softmax((1 - s) / T)) over its pixels' self-confidences s,
  close to its lowest pixel scores; in [0, 1], lower is worse.

Differences from cleanlab: pixels labelled ignore_index take no part (cleanlab has no
ignore label; an image with only ignored pixels scores 1); ties at the cutoff of step 3
are broken in dataset order (image, row, column), where cleanlab's unstable argsort
breaks them arbitrarily. Ties only happen with quantised (uint8) probabilities.

The n lowest self-confidences are found without sorting every pixel of the dataset:
non-negative float32 values order like their bit patterns read as integers, so two 16-bit
histograms (a radix select) give the exact cutoff. Every pass reads the images again, so
memory holds one image at a time whatever the size of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

TEMPERATURE = 0.1  # cleanlab's softmin default
THRESHOLD_FLOOR = 2e-6  # cleanlab's CONFIDENT_THRESHOLDS_LOWER_BOUND
TOLERANCE = 1e-6  # cleanlab's FLOATING_POINT_COMPARISON
HALF = 16  # bits of the sort key resolved by each radix-select histogram
NO_CUTOFF = -1  # sort keys are >= 0, so no pixel is below it

# A callable that yields (probs float[K, H, W], labels int[H, W]) for every image, in the
# same order on every call: each pass of the algorithm calls it once.
Pairs = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class ImageIssues:
    """One image's result: flagged pixels, the model's class and its probability (HxW)."""

    issues: np.ndarray  # bool; never True on ignore_index pixels
    pred: np.ndarray  # int64 argmax class
    conf: np.ndarray  # float32 probability of `pred`
    labels: np.ndarray  # the given labels, as read


def self_confidence(
    probs: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid pixel mask HxW, their labels, p_label of each) for the non-ignored pixels."""
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).long()  # ignored pixels read class 0, then dropped
    own = probs.gather(0, safe[None])[0][valid].float()
    return valid.numpy(), labels[valid].long().numpy(), own.numpy()


def sort_keys(values: np.ndarray) -> np.ndarray:
    """int32 keys that order like the float32 values (all >= 0; -0.0 maps to 0)."""
    return np.maximum(values.astype(np.float32).view(np.int32), 0)


def softmin_score(self_conf: np.ndarray, temperature: float = TEMPERATURE) -> float:
    """cleanlab's softmin image score: self-confidences weighted by softmax((1 - s) / T)."""
    if self_conf.size == 0:
        return 1.0
    s = self_conf.astype(np.float64)
    x = (1.0 - s) / temperature
    weights = np.exp(x - x.max())
    return float((s * weights).sum() / weights.sum())


class LabelIssueFinder:
    """Confident learning over a dataset streamed image by image.

    `fit(pairs)` makes three passes: thresholds, image scores and a histogram of the
    self-confidences; the number of issues; the exact cutoff. `issues(pairs)` then yields
    each image's flagged pixels in a fourth pass, in the order of `pairs`.
    """

    def __init__(self, num_classes: int, ignore_index: int, temperature: float = TEMPERATURE):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.temperature = temperature

    def fit(self, pairs: Pairs) -> LabelIssueFinder:
        """Estimate thresholds, image scores, the number of issues and the cutoff."""
        sums = np.zeros(self.num_classes)
        counts = np.zeros(self.num_classes, dtype=np.int64)
        high = np.zeros(2**HALF, dtype=np.int64)
        scores = []
        for probs, labels in pairs():
            _, given, own = self_confidence(probs, labels, self.ignore_index)
            sums += np.bincount(given, weights=own, minlength=self.num_classes)
            counts += np.bincount(given, minlength=self.num_classes)
            high += np.bincount(sort_keys(own) >> HALF, minlength=2**HALF)
            scores.append(softmin_score(own, self.temperature))
        self.pixels_per_class = counts
        self.thresholds = np.clip(sums / np.maximum(counts, 1), THRESHOLD_FLOOR, None)
        self.scores = np.asarray(scores)
        self.num_issues = sum(self._confidently_other(p, y) for p, y in pairs())
        self.cutoff, self.ties = self._cutoff(pairs, high)
        return self

    def _confidently_other(self, probs: torch.Tensor, labels: torch.Tensor) -> int:
        valid, given, _ = self_confidence(probs, labels, self.ignore_index)
        pred, conf = (a[valid] for a in argmax_with_confidence(probs))
        other = (pred != given) & (conf >= self.thresholds[pred] - TOLERANCE)
        return int(other.sum())

    def _cutoff(self, pairs: Pairs, high: np.ndarray) -> tuple[int, int]:
        """The sort key of the num_issues-th lowest self-confidence, and how many pixels
        holding exactly that key are still candidates."""
        k = self.num_issues
        if k == 0:
            return NO_CUTOFF, 0
        cum_high = np.cumsum(high)
        top = int(np.searchsorted(cum_high, k))  # first bucket reaching k pixels
        before = int(cum_high[top - 1]) if top else 0
        low = np.zeros(2**HALF, dtype=np.int64)
        for probs, labels in pairs():
            keys = sort_keys(self_confidence(probs, labels, self.ignore_index)[2])
            low += np.bincount(keys[(keys >> HALF) == top] & (2**HALF - 1), minlength=2**HALF)
        cum_low = before + np.cumsum(low)
        bottom = int(np.searchsorted(cum_low, k))
        below = int(cum_low[bottom - 1]) if bottom else before
        return (top << HALF) | bottom, k - below

    def issues(self, pairs: Pairs) -> Iterator[ImageIssues]:
        """Each image's flagged pixels, in the order of `pairs` (ties depend on it)."""
        ties_left = self.ties
        for probs, labels in pairs():
            valid, given, own = self_confidence(probs, labels, self.ignore_index)
            keys = sort_keys(own)
            chosen = keys < self.cutoff
            if ties_left:
                equal = np.flatnonzero(keys == self.cutoff)[:ties_left]
                chosen[equal] = True
                ties_left -= len(equal)
            pred, conf = argmax_with_confidence(probs)
            flagged = np.zeros(valid.shape, dtype=bool)
            flagged[valid] = chosen & (pred[valid] != given)
            yield ImageIssues(flagged, pred, conf, labels.numpy())


def argmax_with_confidence(probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The argmax class (first of equal maxima, as numpy) and its probability, HxW."""
    conf, pred = probs.max(0)  # 4x faster than argmax over the channel dim on CPU
    return pred.numpy(), conf.float().numpy()
