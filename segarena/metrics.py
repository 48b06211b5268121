"""Confusion-matrix metrics on full-resolution masks, and bootstrap confidence intervals.

Rows of a confusion matrix are the target class, columns the predicted class. Pixels whose
target is `ignore_index` are left out. IoU of a class absent from both target and prediction
is undefined (NaN): it is excluded from the mIoU rather than counted as 0 or 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Confusion matrix [C, C] (int64, on the inputs' device) of `pred` against `target`.

    Both are integer class maps of the same shape (e.g. [N, H, W]). Target pixels equal
    to `ignore_index` are skipped; any other value outside [0, C) raises ValueError (the
    readers should have rejected it), as does a predicted class outside [0, C).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = target != ignore_index
    target = target[valid].long()
    pred = pred[valid].long()
    for name, values in (("target", target), ("pred", pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} holds classes outside [0, {num_classes}) other than "
                f"ignore_index={ignore_index}: min {int(values.min())}, max {int(values.max())}"
            )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class ConfusionMatrix:
    """A confusion matrix accumulated over batches, kept on the CPU as int64.

    int64 on the CPU so that counts from any device add up without overflow (a float32
    sum of pixel counts loses precision past 2**24 pixels).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the pixels of one batch of predicted and target class maps."""
        self.update_matrix(confusion_matrix(pred, target, self.num_classes, self.ignore_index))

    def update_matrix(self, cm: Tensor | np.ndarray) -> None:
        """Add an already computed [C, C] confusion matrix (e.g. from another process)."""
        cm = torch.as_tensor(cm).to("cpu", torch.int64)
        if cm.shape != self.matrix.shape:
            raise ValueError(f"matrix shape {tuple(cm.shape)} != {tuple(self.matrix.shape)}")
        self.matrix += cm

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        self.matrix.zero_()

    def scores(self) -> dict:
        """`scores` of the accumulated matrix."""
        return scores(self.matrix)


def _iou(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """IoU per class along the last axis; NaN where the class is in neither target nor pred."""
    union = support + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean over the non-NaN entries; NaN (without numpy's warning) when there are none."""
    finite = ~np.isnan(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def mious(matrices: np.ndarray) -> np.ndarray:
    """mIoU of each confusion matrix in a stack [..., C, C], by the rule of `scores`."""
    tp = np.diagonal(matrices, axis1=-2, axis2=-1).astype(np.float64)
    return _nanmean(_iou(tp, matrices.sum(-1), matrices.sum(-2)), axis=-1)


def scores(cm: Tensor | np.ndarray) -> dict:
    """Segmentation scores of a [C, C] confusion matrix (rows target, columns prediction).

    Returns a JSON-ready dict:
    - `miou`: mean IoU over the classes whose IoU is defined. A class that appears in
      neither target nor prediction has IoU NaN and is left out (a class only predicted
      has IoU 0 and counts).
    - `per_class_iou`: list of floats, None where the IoU is NaN.
    - `pixel_acc`: correct pixels / counted pixels.
    - `mean_acc`: per-class recall averaged over classes present in the target; it runs
      well above mIoU because false positives do not lower it.
    - `support`: target pixels per class.
    """
    if isinstance(cm, Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    iou = _iou(tp, support, cm.sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        pixel_acc = tp.sum() / cm.sum()
    return {
        "miou": float(_nanmean(iou)),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "pixel_acc": float(pixel_acc),
        "mean_acc": float(_nanmean(recall)),
        "support": [int(v) for v in support],
    }


def bootstrap_miou_ci(
    per_image_cms: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile (1 - alpha) confidence interval of the dataset mIoU, resampling images.

    Each resample draws N images with replacement and sums their confusion matrices, as
    the point estimate `scores(per_image_cms.sum(0))["miou"]` does. Only the diagonal and
    row/column sums of each image are needed, so all resamples are one matrix product.
    """
    cms = np.asarray(per_image_cms, dtype=np.float64)
    if cms.ndim != 3 or cms.shape[1] != cms.shape[2] or len(cms) == 0:
        raise ValueError(f"expected per-image confusion matrices [N, C, C], got {cms.shape}")
    mious = resampled_mious(cms, draw_counts(np.random.default_rng(seed), len(cms), n_boot))
    low, high = np.nanpercentile(mious, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_miou_diff_ci(
    cms_a: np.ndarray, cms_b: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Paired percentile (1 - alpha) interval of mIoU(B) - mIoU(A), resampling images.

    `cms_a[i]` and `cms_b[i]` are the two runs' confusion matrices of the same image i. Each
    resample draws the same images for both runs, so what the images share (easy or hard
    scenes) cancels out of the difference and only the runs' disagreement is left.
    """
    a = np.asarray(cms_a, dtype=np.float64)
    b = np.asarray(cms_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[1] != a.shape[2] or len(a) == 0:
        raise ValueError(f"expected two [N, C, C] arrays of one shape, got {a.shape}, {b.shape}")
    draws = draw_counts(np.random.default_rng(seed), len(a), n_boot)
    diffs = resampled_mious(b, draws) - resampled_mious(a, draws)
    low, high = np.nanpercentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def draw_counts(rng: np.random.Generator, n_images: int, n_boot: int) -> np.ndarray:
    """How many times each image is drawn in each of `n_boot` resamples of `n_images`
    images with replacement: [n_boot, N] (every bootstrap of segarena draws through here)."""
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot)


def resampled_mious(cms: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The pooled mIoU of each resample, `draws[r, i]` copies of image i's matrix summed:
    only the diagonal and row/column sums are needed, so all resamples are one matrix
    product ([n_boot, C] each, whatever the number of classes)."""
    cms = np.asarray(cms, dtype=np.float64)
    tp = draws @ np.diagonal(cms, axis1=1, axis2=2)
    support = draws @ cms.sum(axis=2)
    predicted = draws @ cms.sum(axis=1)
    return _nanmean(_iou(tp, support, predicted), axis=1)
