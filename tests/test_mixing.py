"""Batch mixing: MixUp's loss, exact CutMix / SnapMix / copy-paste labels, SnapMix's box
choice, copy-paste's rare-class oversampling, reproducibility, and a free 'off' switch.

Channel 0 of every test image holds each pixel's unique id (image, row, column), so after
mixing each pixel tells where it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import history
from synthetic import make_mask_folder, tiny_config
from torch import nn

from segarena.config import LossConfig, MixingConfig, config_from_dict
from segarena.data.mixing import BatchMixer, MixupTargets, build_mixer
from segarena.errors import UserError
from segarena.train.losses import build_loss
from segarena.train.run import fit

N, SIZE, CLASSES, IGNORE = 8, 32, 4, 255


def id_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channel 0 is the pixel id; random masks with some ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(N * SIZE * SIZE, dtype=torch.float32).view(N, 1, SIZE, SIZE)
    images = torch.cat([ids, torch.randn(N, 2, SIZE, SIZE, generator=gen)], 1)
    masks = torch.randint(0, CLASSES, (N, SIZE, SIZE), generator=gen)
    masks[torch.rand(N, SIZE, SIZE, generator=gen) < 0.1] = IGNORE
    return images, masks


def origins(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source image, row and column of every pixel, read from its id."""
    ids = images[:, 0].long()
    return ids // (SIZE * SIZE), ids % (SIZE * SIZE) // SIZE, ids % SIZE


def mixer_for(**fields) -> BatchMixer:
    return BatchMixer(MixingConfig(**fields), CLASSES, IGNORE)


def test_disabled_mixing_builds_nothing_and_changes_nothing():
    assert build_mixer(MixingConfig(), CLASSES, IGNORE) is None
    images, masks = id_batch()
    torch.manual_seed(0)
    out_images, out_masks = mixer_for()(images, masks)
    assert out_images is images and out_masks is masks
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3)), "an idle mixer must not draw from the RNG"


def test_mixup_loss_is_the_lam_weighted_sum_of_both_masks():
    images, masks = id_batch()
    torch.manual_seed(1)
    mixed, targets = mixer_for(mixup_p=1.0)(images, masks)
    assert isinstance(targets, MixupTargets) and targets.masks is masks
    lam = targets.lam
    assert 0.0 < lam < 1.0
    partner = [
        next(j for j in range(N) if torch.equal(targets.partner[i], masks[j])) for i in range(N)
    ]
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[partner])

    logits = torch.randn(N, CLASSES, SIZE, SIZE)
    loss_fn = build_loss(LossConfig(), CLASSES, IGNORE)
    by_hand = lam * F.cross_entropy(logits, masks, ignore_index=IGNORE) + (1 - lam) * (
        F.cross_entropy(logits, masks[partner], ignore_index=IGNORE)
    )
    torch.testing.assert_close(BatchMixer.loss(loss_fn, logits, targets), by_hand)
    plain = torch.randint(0, CLASSES, (N, SIZE, SIZE))
    torch.testing.assert_close(BatchMixer.loss(loss_fn, logits, plain), loss_fn(logits, plain))


def test_cutmix_pastes_a_box_in_place_with_its_exact_mask():
    images, masks = id_batch()
    torch.manual_seed(2)
    mixed, mixed_masks = mixer_for(cutmix_p=1.0)(images, masks)
    source, rows, cols = origins(mixed)
    assert torch.equal(rows, torch.arange(SIZE).view(1, SIZE, 1).expand_as(rows))
    assert torch.equal(cols, torch.arange(SIZE).view(1, 1, SIZE).expand_as(cols))
    assert torch.equal(mixed_masks, masks[source, rows, cols])
    assert torch.equal(mixed[:, 1:], images[source, 1:, rows, cols].permute(0, 3, 1, 2))
    pasted = source != torch.arange(N).view(N, 1, 1)
    assert pasted.any()
    for i in range(N):
        if pasted[i].any():  # a full box from one other image
            ys, xs = torch.nonzero(pasted[i], as_tuple=True)
            box = pasted[i, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            assert box.all() and len(set(source[i][pasted[i]].tolist())) == 1


class FixedLogits(nn.Module):
    """A stand-in model: the same logits whatever the input; records its train/eval mode."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.modes: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.logits


def box_sum_extremes(loss: np.ndarray, box_h: int, box_w: int) -> tuple[float, float]:
    """Smallest and largest sum of `loss` [H,W] over a box, by brute force."""
    windows = np.lib.stride_tricks.sliding_window_view(loss, (box_h, box_w)).sum((-1, -2))
    return float(windows.min()), float(windows.max())


def test_snapmix_pastes_the_sources_hardest_box_over_the_targets_easiest():
    images, masks = id_batch()
    model = FixedLogits(
        torch.randn(N, CLASSES, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    )
    loss = F.cross_entropy(model.logits, masks, ignore_index=IGNORE, reduction="none").double()
    model.train()
    torch.manual_seed(4)
    mixed, mixed_masks = mixer_for(snapmix_p=1.0)(images, masks, model)
    assert model.modes == [False] and model.training, "scored in eval mode, then restored"
    source, rows, cols = origins(mixed)
    own = torch.arange(N * SIZE * SIZE).view(N, SIZE, SIZE)
    moved = mixed[:, 0].long() != own
    assert moved.sum() > 0
    checked = 0
    for i in range(N):
        if not moved[i].any():
            continue
        ys, xs = torch.nonzero(moved[i], as_tuple=True)
        ty, tx, box_h, box_w = (
            ys.min(),
            xs.min(),
            int(ys.max() - ys.min() + 1),
            int(xs.max() - xs.min() + 1),
        )
        assert moved[i, ty : ty + box_h, tx : tx + box_w].all()
        j, sy, sx = source[i, ty, tx], rows[i, ty, tx], cols[i, ty, tx]
        easiest, _ = box_sum_extremes(loss[i].numpy(), box_h, box_w)
        _, hardest = box_sum_extremes(loss[j].numpy(), box_h, box_w)
        assert loss[i, ty : ty + box_h, tx : tx + box_w].sum() == pytest.approx(easiest)
        assert loss[j, sy : sy + box_h, sx : sx + box_w].sum() == pytest.approx(hardest)
        target_box = mixed_masks[i, ty : ty + box_h, tx : tx + box_w]
        assert torch.equal(target_box, masks[j, sy : sy + box_h, sx : sx + box_w])
        checked += 1
    assert checked >= N // 2


def object_batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 background with boxes of classes 1 and 2 in every image; one image of the 8
    also holds a small box of the rare class 3. Images carry pixel ids as in id_batch."""
    masks = np.zeros((N, SIZE, SIZE), dtype=np.int64)
    for i in range(N):
        for cls, x in ((1, rng.integers(0, 6)), (2, rng.integers(16, 22))):  # apart
            y = rng.integers(0, SIZE - 10)
            masks[i, y : y + 10, x : x + 10] = cls
    rare = rng.integers(N)
    y, x = rng.integers(0, SIZE - 5, size=2)
    masks[rare, y : y + 5, x : x + 5] = 3
    images, _ = id_batch()
    return images, torch.from_numpy(masks)


def rare_share(batches: int, **fields) -> tuple[float, float]:
    """Share of rare-class pixels before and after copy-paste, over many batches."""
    mixer = mixer_for(copy_paste_p=1.0, **fields)
    rng = np.random.default_rng(5)
    torch.manual_seed(5)
    before = after = 0.0
    for _ in range(batches):
        images, masks = object_batch(rng)
        mixed, mixed_masks = mixer(images, masks)
        source, rows, cols = origins(mixed)
        assert torch.equal(mixed_masks, masks[source, rows, cols]), "labels move with pixels"
        assert torch.equal(rows, torch.arange(SIZE).view(1, SIZE, 1).expand_as(rows))
        assert not (source == torch.arange(N).view(N, 1, 1)).all(), "something was pasted"
        before += float((masks == 3).float().mean()) / batches
        after += float((mixed_masks == 3).float().mean()) / batches
    return before, after


def test_copy_paste_oversamples_the_rare_class():
    before, after = rare_share(30)  # default: inverse pixel share, power 1
    _, uniform = rare_share(30, copy_paste_power=0.0)
    assert after > 4 * before
    assert after > 1.5 * uniform > 0


def test_copy_paste_honours_class_weights_and_max_area():
    images, masks = object_batch(np.random.default_rng(6))
    torch.manual_seed(6)
    _, only_green = mixer_for(copy_paste_p=1.0, copy_paste_class_weights=[0, 0, 1, 0])(
        images, masks
    )
    changed = only_green != masks
    assert changed.any() and set(only_green[changed].tolist()) == {2}
    # 10x10 boxes are over 5% of a 32x32 image: only the 5x5 rare box may move
    _, small = mixer_for(copy_paste_p=1.0, copy_paste_max_area=0.05)(images, masks)
    changed = small != masks
    assert changed.any() and set(small[changed].tolist()) == {3}


def test_bad_mixing_config_is_a_user_error(tmp_path):
    raw = tiny_config(tmp_path, tmp_path, augment={"mixing": {"mixup_p": 0.6, "cutmix_p": 0.6}})
    with pytest.raises(UserError, match="augment.mixing.*expected a sum <= 1"):
        config_from_dict(raw)
    with pytest.raises(UserError, match=r"copy_paste_class_weights has 2 values"):
        build_mixer(MixingConfig(copy_paste_p=1.0, copy_paste_class_weights=[1, 2]), 4, IGNORE)


@pytest.mark.parametrize("method", ["mixup_p", "cutmix_p", "snapmix_p", "copy_paste_p"])
def test_the_same_seed_mixes_the_same_way(method):
    images, masks = object_batch(np.random.default_rng(7))
    model = FixedLogits(torch.randn(N, CLASSES, SIZE, SIZE))
    mixer = mixer_for(**{method: 1.0})
    runs = []
    for _ in range(2):
        torch.manual_seed(8)
        mixed, targets = mixer(images, masks, model)
        runs.append((mixed, targets.partner if isinstance(targets, MixupTargets) else targets))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], images)


def test_each_batch_gets_at_most_one_method_at_its_rate():
    mixer = mixer_for(mixup_p=0.3, copy_paste_p=0.2)
    counts = {"mixup": 0, "copy_paste": 0}
    applied: list[str] = []  # the methods applied to the current batch

    def counting(name):
        def method(images, masks, model):
            counts[name] += 1
            applied.append(name)
            return images, masks

        return method

    mixer.methods = [(0.3, counting("mixup")), (0.2, counting("copy_paste"))]
    torch.manual_seed(9)
    images, masks = id_batch()
    per_batch = []
    for _ in range(1000):
        applied.clear()
        mixer(images, masks)
        per_batch.append(len(applied))
    assert max(per_batch) == 1  # never two methods on one batch
    assert abs(per_batch.count(0) - 500) < 50  # the rest go unmixed
    assert abs(counts["mixup"] - 300) < 50 and abs(counts["copy_paste"] - 200) < 45


@pytest.mark.slow  # trains
def test_training_with_presets_and_mixing_is_reproducible(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8, size=32)
    mixing = {"mixup_p": 0.25, "cutmix_p": 0.25, "snapmix_p": 0.25, "copy_paste_p": 0.25}
    raw = tiny_config(
        data,
        tmp_path / "runs",
        split={"method": "holdout"},
        train={"epochs": 2, "batch_size": 2},
        augment={"preset": "heavy", "mixing": mixing},
    )
    losses = []
    for out in ("a", "b"):
        run_dir = fit(config_from_dict(raw), tmp_path / out).path
        losses.append([r["train_loss"] for r in history(run_dir)])
    assert losses[0] == losses[1] and all(np.isfinite(losses[0]))
