"""Sliding windows: coverage, Gaussian blending, batching, and the evaluate wrapper."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import CallLog, asymmetric_model, pointwise_model
from torch import nn

from segarena.config import InferConfig
from segarena.infer import sliding
from segarena.infer.sliding import (
    gaussian_weights,
    sliding_probs,
    window_starts,
)
from segarena.infer.tta import tta_probs


class ConstantModel(nn.Module):
    """The same logits at every pixel, whatever the input."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.3, -1.0, 2.0]))

    def forward(self, x):
        return self.logits.view(1, -1, 1, 1).expand(len(x), -1, *x.shape[-2:])


class WindowMeanModel(nn.Module):
    """Logits (mean of the window's channel 0, 0): one constant prediction per window."""

    def forward(self, x):
        mean = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, -1, *x.shape[-2:])
        return torch.cat([mean, torch.zeros_like(mean)], dim=1)


@pytest.mark.parametrize(
    ("length", "window", "stride"), [(100, 32, 16), (77, 32, 16), (64, 32, 32), (33, 32, 7)]
)
def test_windows_cover_any_length(length, window, stride):
    starts = window_starts(length, window, stride)
    covered = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        covered[start : start + window] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == length - window
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    assert window_starts(20, 32, 16) == [0]


def test_gaussian_weights_peak_at_the_centre_with_sigma_an_eighth():
    weights = gaussian_weights((65, 33))
    assert weights.shape == (65, 33)
    assert weights[32, 16] == pytest.approx(1.0)
    sigma = 65 / 8
    assert weights[32 + 8, 16] == pytest.approx(math.exp(-0.5 * (8 / sigma) ** 2), rel=1e-5)
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))


@pytest.mark.parametrize("window", [(64, 96), (200, 200)])
def test_a_window_the_size_of_the_image_is_one_forward_pass(window):
    model = asymmetric_model()
    image = torch.randn(3, 64, 96)
    with torch.inference_mode():
        whole = tta_probs(model, image[None], "hflip")[0]
        slid = sliding_probs(model, image, InferConfig(window=window, tta="hflip"))
    torch.testing.assert_close(slid, whole, atol=1e-6, rtol=1e-6)


def test_blending_a_constant_model_leaves_no_seams():
    model = ConstantModel()
    with torch.inference_mode():
        probs = sliding_probs(model, torch.randn(3, 100, 77), InferConfig(window=(32, 32)))
    want = model.logits.detach().softmax(0).view(-1, 1, 1).expand_as(probs)
    torch.testing.assert_close(probs, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_pointwise_model_equals_whole_image_at_any_size(overlap):
    model = pointwise_model()
    image = torch.randn(3, 70, 45)  # not a multiple of window or stride
    with torch.inference_mode():
        whole = tta_probs(model, image[None], "d4")[0]
        slid = sliding_probs(
            model, image, InferConfig(window=(32, 24), overlap=overlap, sw_batch_size=3, tta="d4")
        )
    assert torch.isfinite(slid).all()
    torch.testing.assert_close(slid, whole, atol=1e-5, rtol=1e-5)


def test_overlaps_are_gaussian_weighted():
    # two windows along x (0..63 and 32..95) each predict one constant; in between, the
    # result is their average weighted by each window's Gaussian at that pixel
    image = torch.zeros(3, 32, 96)
    image[0, :, 64:] = 3.0
    with torch.inference_mode():
        probs = sliding_probs(WindowMeanModel(), image, InferConfig(window=(32, 64)))
    p_left = torch.tensor([0.0, 0.0]).softmax(0)[0]
    p_right = torch.tensor([1.5, 0.0]).softmax(0)[0]  # window 32..95: mean 3 * 32/64
    g = gaussian_weights((32, 64))[0]
    want = torch.full((96,), float(p_left))
    want[64:] = p_right
    middle = torch.arange(32, 64)
    w_left, w_right = g[middle], g[middle - 32]
    want[32:64] = (w_left * p_left + w_right * p_right) / (w_left + w_right)
    torch.testing.assert_close(probs[0, 5], want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(want[32:64], (p_left + p_right) / 2)  # not a plain average


def test_windows_go_in_bounded_batches():
    model = CallLog(pointwise_model())
    with torch.inference_mode():
        sliding_probs(
            model,
            torch.randn(3, 96, 96),
            InferConfig(window=(32, 32), sw_batch_size=4, tta="hflip"),
        )
    # 5 x 5 windows = 25, at most 4 per pass, each with its 2 views
    assert sum(s[0] for s in model.shapes) == 25 * 2
    assert max(s[0] for s in model.shapes) == 4 * 2 and len(model.shapes) == 7


def test_raw_pixels_prepared_per_window_equal_a_prepared_image():
    """predict keeps the image uint8 and normalises each batch of windows on the device."""
    model = pointwise_model()
    pixels = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)

    def prepare(x):
        return (x.float() / 255 - 0.5) / 0.25

    with torch.inference_mode():
        options = InferConfig(window=(32, 40), sw_batch_size=3, tta="hflip")
        want = sliding_probs(model, prepare(pixels), options)
        got = sliding_probs(model, pixels, options, prepare=prepare)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_huge_outputs_are_float16(monkeypatch):
    """Above HALF_OUTPUT_ELEMENTS the probabilities are stored in float16 (half the memory);
    blending still runs in float32, so they agree with float32 to float16's precision."""
    model = pointwise_model()
    image = torch.randn(3, 64, 80)
    with torch.inference_mode():
        full = sliding_probs(model, image, InferConfig(window=(32, 32)))
        monkeypatch.setattr(sliding, "HALF_OUTPUT_ELEMENTS", 4 * 64 * 80 - 1)
        half = sliding_probs(model, image, InferConfig(window=(32, 32)))
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    torch.testing.assert_close(half.float(), full, atol=1e-3, rtol=0)
