"""Metrics: confusion matrix with ignore_index, IoU scores, bootstrap confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from segarena.metrics import ConfusionMatrix, bootstrap_miou_ci, confusion_matrix, scores

IGNORE = 255


@pytest.fixture
def tiny():
    """Two 3x3 images, 3 classes, one ignored pixel (whose prediction must not count)."""
    target = torch.tensor(
        [
            [[0, 0, 1], [1, 1, 2], [2, 2, IGNORE]],
            [[0, 0, 0], [1, 1, 1], [2, 2, 2]],
        ]
    )
    pred = torch.tensor(
        [
            [[0, 1, 1], [1, 1, 2], [2, 0, 0]],
            [[0, 0, 0], [1, 2, 1], [2, 2, 2]],
        ]
    )
    return pred, target


# counted by hand from `tiny` (rows target, columns prediction)
TINY_CM = [
    [4, 1, 0],  # target 0: 5 pixels, one predicted 1
    [0, 5, 1],  # target 1: 6 pixels, one predicted 2
    [1, 0, 5],  # target 2: 6 pixels, one predicted 0; the ignored pixel's 0 is not counted
]


def test_hand_computed_matrix_and_scores(tiny):
    pred, target = tiny
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=IGNORE)
    assert cm.dtype == torch.int64
    assert cm.tolist() == TINY_CM
    result = scores(cm)
    # IoU = tp / (target + pred - tp): 4/(5+5-4), 5/(6+6-5), 5/(6+6-5)
    expected = [4 / 6, 5 / 7, 5 / 7]
    assert result["per_class_iou"] == pytest.approx(expected)
    assert result["miou"] == pytest.approx(sum(expected) / 3)
    assert result["pixel_acc"] == pytest.approx(14 / 17)
    assert result["mean_acc"] == pytest.approx((4 / 5 + 5 / 6 + 5 / 6) / 3)
    assert result["support"] == [5, 6, 6]


def test_perfect_prediction_scores_one(tiny):
    _, target = tiny
    result = scores(confusion_matrix(target, target, 3, IGNORE))
    assert result["miou"] == result["pixel_acc"] == result["mean_acc"] == 1.0


def test_absent_class_is_excluded_not_zero():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 0], [1, 0]]])
    result = scores(confusion_matrix(pred, target, num_classes=4, ignore_index=IGNORE))
    # class 3 is in neither target nor prediction: IoU undefined, None in JSON
    assert result["per_class_iou"][3] is None
    assert result["per_class_iou"][2] is None
    assert result["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert result["support"] == [2, 2, 0, 0]


def test_class_only_predicted_counts_as_zero_iou():
    target = torch.tensor([[[0, 0], [0, 0]]])
    pred = torch.tensor([[[0, 0], [0, 1]]])
    result = scores(confusion_matrix(pred, target, num_classes=2, ignore_index=IGNORE))
    assert result["per_class_iou"] == [pytest.approx(3 / 4), 0.0]
    assert result["mean_acc"] == pytest.approx(3 / 4)  # recall of class 1 is undefined


def test_empty_matrix_scores_are_nan():
    result = scores(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_acc"])
    assert result["per_class_iou"] == [None, None, None]


def test_accumulating_halves_equals_the_whole(tiny):
    pred, target = tiny
    matrix = ConfusionMatrix(num_classes=3, ignore_index=IGNORE)
    matrix.update(pred[:1], target[:1])
    matrix.update(pred[1:], target[1:])
    assert matrix.matrix.tolist() == TINY_CM
    assert matrix.matrix.device.type == "cpu" and matrix.matrix.dtype == torch.int64
    matrix.update_matrix(np.asarray(TINY_CM))  # e.g. summed from another process
    assert matrix.matrix.tolist() == (2 * np.asarray(TINY_CM)).tolist()
    matrix.reset()
    assert matrix.matrix.sum() == 0


def test_out_of_range_values_are_rejected(tiny):
    pred, target = tiny
    target = target.clone()
    target[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"target.*\[0, 3\).*max 7"):
        confusion_matrix(pred, target, 3, IGNORE)
    with pytest.raises(ValueError, match="pred.*max 5"):
        confusion_matrix(torch.full_like(pred, 5), tiny[1], 3, IGNORE)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(pred[:1], tiny[1], 3, IGNORE)


def test_agrees_with_sklearn_on_random_masks():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 23), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.1] = IGNORE
    pred = torch.randint(0, 5, (3, 17, 23), generator=generator)
    valid = target != IGNORE
    expected = sk_confusion_matrix(target[valid].numpy(), pred[valid].numpy(), labels=range(5))
    assert np.array_equal(confusion_matrix(pred, target, 5, IGNORE).numpy(), expected)


def _noisy_image_cms(n_images: int, seed: int) -> np.ndarray:
    """Per-image confusion matrices of a ~70%-accurate 4-class predictor."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 4, size=(n_images, 64))
    wrong = rng.random(target.shape) < 0.3
    pred = np.where(wrong, rng.integers(0, 4, size=target.shape), target)
    return np.stack(
        [sk_confusion_matrix(t, p, labels=range(4)) for t, p in zip(target, pred, strict=True)]
    )


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_images():
    few, many = _noisy_image_cms(10, seed=1), _noisy_image_cms(400, seed=1)
    widths = []
    for cms in (few, many):
        point = scores(cms.sum(axis=0))["miou"]
        low, high = bootstrap_miou_ci(cms, n_boot=500, seed=0)
        assert low < point < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 3  # ~sqrt(40) narrower in theory
    assert bootstrap_miou_ci(few, n_boot=200, seed=3) == bootstrap_miou_ci(few, n_boot=200, seed=3)


def test_bootstrap_rejects_a_single_matrix():
    with pytest.raises(ValueError, match=r"\[N, C, C\]"):
        bootstrap_miou_ci(np.eye(3))
