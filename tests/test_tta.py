"""TTA views, their batching into forward passes, multi-scale and the three merge rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import CallLog, asymmetric_model, pointwise_model

from segarena.errors import UserError
from segarena.infer.tta import PRESETS, VIEWS, apply_view, invert_view, tta_probs


def test_views_are_the_named_transforms_and_invert():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    assert torch.equal(apply_view(x, "hflip"), x.flip(-1))
    assert torch.equal(apply_view(x, "vflip"), x.flip(-2))
    assert torch.equal(apply_view(x, "rot180"), x.flip(-1).flip(-2))
    assert torch.equal(apply_view(x, "transpose"), x.transpose(-2, -1))
    assert torch.equal(apply_view(x, "rot90"), torch.rot90(x, 1, (-2, -1)))
    # d4 holds 8 distinct views, and each is undone by its inverse
    assert len({tuple(apply_view(x, n).flatten().tolist()) for n in PRESETS["d4"]}) == 8
    for name in VIEWS:
        assert torch.equal(invert_view(apply_view(x, name), name), x), name


@pytest.mark.parametrize("tta", ["hflip", "vflip", "d4"])
@pytest.mark.parametrize("merge", ["mean", "gmean", "logits"])
@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_equivariant_model_keeps_its_plain_probabilities(tta, merge, size):
    model = pointwise_model()
    images = torch.randn(2, 3, *size)
    with torch.inference_mode():
        plain = model(images).softmax(1)
        merged = tta_probs(model, images, tta, merge=merge)
    assert merged.shape == plain.shape
    torch.testing.assert_close(merged, plain, atol=1e-5, rtol=1e-5)


def test_hflip_merges_the_mirrored_prediction():
    model = asymmetric_model()
    images = torch.randn(2, 3, 32, 64)  # multiples of 32: forward_logits pads nothing
    with torch.inference_mode():
        plain = model(images)
        mirrored = model(images.flip(-1)).flip(-1)
        assert not torch.allclose(plain.softmax(1), mirrored.softmax(1), atol=1e-3)
        mean = (plain.softmax(1) + mirrored.softmax(1)) / 2
        logits = ((plain + mirrored) / 2).softmax(1)
        gmean = ((plain.log_softmax(1) + mirrored.log_softmax(1)) / 2).softmax(1)
        for merge, want in (("mean", mean), ("logits", logits), ("gmean", gmean)):
            got = tta_probs(model, images, "hflip", merge=merge)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("tta", "size", "scales", "passes"),
    [
        ("d4", (32, 32), [1.0], [8]),  # square: all 8 views in one pass
        ("d4", (32, 64), [1.0], [4, 4]),  # non-square: kept shape, then swapped shape
        ("hflip", (32, 64), [0.5, 1.0], [2, 2]),  # one pass per scale
        ("none", (32, 64), [1.0], [1]),
    ],
)
def test_views_are_batched_per_forward_pass(tta, size, scales, passes):
    model = CallLog(pointwise_model())
    with torch.inference_mode():
        tta_probs(model, torch.randn(3, 3, *size), tta, scales)
    assert [shape[0] for shape in model.shapes] == [3 * n for n in passes]


def test_multi_scale_merges_at_input_size_then_resizes_probabilities():
    model = pointwise_model()
    images = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        got = tta_probs(model, images, "none", scales=[0.5, 1.0], out_size=(20, 30))
        half = F.interpolate(images, size=(16, 32), mode="bilinear", align_corners=False)
        back = F.interpolate(model(half), size=(32, 64), mode="bilinear", align_corners=False)
        merged = (back.softmax(1) + model(images).softmax(1)) / 2
        want = F.interpolate(merged, size=(20, 30), mode="bilinear", align_corners=False)
    assert got.shape == (1, 4, 20, 30)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(1, 20, 30))


def test_bad_names_are_user_errors():
    model = pointwise_model()
    with pytest.raises(UserError, match="^tta 'd8'") as caught:
        tta_probs(model, torch.randn(1, 3, 8, 8), "d8")
    assert caught.value.as_flag.startswith("--tta 'd8': expected one of")  # the CLI's words
    with pytest.raises(UserError, match="^merge 'max'"):
        tta_probs(model, torch.randn(1, 3, 8, 8), "none", merge="max")
