import math

import pytest
import torch
import torch.nn.functional as F

from segarena.config import LossConfig, LossTerm
from segarena.errors import UserError
from segarena.train.losses import LOSSES, build_loss

C, IGNORE = 4, 255


def make_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and a target whose first 3 rows are ignored (every class present)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 16, 16, generator=gen)
    target = torch.randint(0, C, (2, 16, 16), generator=gen)
    target[:, :3] = IGNORE
    return logits, target


def loss_and_grad(loss, logits, target):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    return value.detach(), logits.grad


# Every registered loss, plus parameter variants that take other code paths.
VARIANTS = [(name, {}) for name in LOSSES.names()] + [
    ("lovasz", {"per_image": True}),
    ("ce", {"class_weights": [1.0, 2.0, 0.5, 3.0], "label_smoothing": 0.1}),
    ("focal", {"alpha": 0.25}),
    ("dice", {"log_loss": True}),
]
IDS = [f"{name}-{params}" if params else name for name, params in VARIANTS]


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_scalar_finite_with_gradient(name, params):
    loss = LOSSES.create(name, num_classes=C, ignore_index=IGNORE, **params)
    value, grad = loss_and_grad(loss, *make_batch())
    assert value.shape == ()
    assert torch.isfinite(value)
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_perfect_logits_beat_wrong_logits(name, params):
    loss = LOSSES.create(name, num_classes=C, ignore_index=IGNORE, **params)
    _, target = make_batch()
    onehot = F.one_hot(target.clamp(max=C - 1), C).permute(0, 3, 1, 2).float()
    # +10 on the right class, -10 elsewhere: confident for softmax and sigmoid losses alike.
    perfect = loss(20.0 * onehot - 10.0, target)
    wrong = loss(20.0 * onehot.roll(1, dims=1) - 10.0, target)
    assert perfect < wrong / 2


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_ignored_pixels_have_no_influence(name, params):
    loss = LOSSES.create(name, num_classes=C, ignore_index=IGNORE, **params)
    logits, target = make_batch()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    changed = logits.clone()
    changed[ignored] = 20.0 * torch.randn(int(ignored.sum()))

    value, grad = loss_and_grad(loss, logits, target)
    value2, grad2 = loss_and_grad(loss, changed, target)
    assert torch.allclose(value, value2, atol=1e-6)
    assert torch.allclose(grad[~ignored], grad2[~ignored], atol=1e-7)
    assert grad[ignored].abs().max() == 0
    assert grad2[ignored].abs().max() == 0


@pytest.mark.parametrize("name,params", VARIANTS, ids=IDS)
def test_all_ignored_batch_is_zero_not_nan(name, params):
    loss = LOSSES.create(name, num_classes=C, ignore_index=IGNORE, **params)
    logits, target = make_batch()
    value, grad = loss_and_grad(loss, logits, torch.full_like(target, IGNORE))
    assert value.shape == ()
    assert value.item() == 0.0
    assert torch.all(grad == 0)


def test_lovasz_per_image_skips_a_fully_ignored_image():
    logits, target = make_batch()
    target[0] = IGNORE
    per_image = LOSSES.create("lovasz", num_classes=C, ignore_index=IGNORE, per_image=True)
    whole = LOSSES.create("lovasz", num_classes=C, ignore_index=IGNORE)
    # Only image 1 counts, so per-image and per-batch agree on it (SMP itself returns [0, C]).
    assert torch.allclose(per_image(logits, target), whole(logits[1:], target[1:]))


def test_ce_matches_torch_weights_and_smoothing():
    logits, target = make_batch()
    weights = [1.0, 2.0, 0.5, 3.0]
    plain = LOSSES.create("ce", num_classes=C, ignore_index=IGNORE)
    tuned = LOSSES.create(
        "ce", num_classes=C, ignore_index=IGNORE, class_weights=weights, label_smoothing=0.2
    )
    expected_plain = F.cross_entropy(logits, target, ignore_index=IGNORE)
    expected_tuned = F.cross_entropy(
        logits, target, weight=torch.tensor(weights), ignore_index=IGNORE, label_smoothing=0.2
    )
    assert torch.allclose(plain(logits, target), expected_plain, atol=1e-6)
    assert torch.allclose(tuned(logits, target), expected_tuned, atol=1e-6)
    assert not torch.allclose(expected_plain, expected_tuned, atol=1e-3)


def test_ce_class_weights_length_checked():
    with pytest.raises(
        UserError, match="class_weights has 3 values.*expected one per class \\(4\\)"
    ):
        LOSSES.create("ce", num_classes=C, ignore_index=IGNORE, class_weights=[1, 2, 3])


def test_topk_100_is_plain_ce():
    logits, target = make_batch()
    topk = LOSSES.create("topk", num_classes=C, ignore_index=IGNORE, k=100)
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert torch.allclose(topk(logits, target), expected, atol=1e-6)


def test_topk_10_is_mean_of_hardest_tenth():
    logits, target = make_batch()
    topk = LOSSES.create("topk", num_classes=C, ignore_index=IGNORE, k=10)
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    valid = sorted(per_pixel[target != IGNORE].tolist(), reverse=True)
    hardest = valid[: int(len(valid) * 0.1)]  # 416 valid pixels -> 41
    assert len(hardest) == 41
    assert math.isclose(topk(logits, target).item(), sum(hardest) / len(hardest), rel_tol=1e-5)
    assert topk(logits, target) > F.cross_entropy(logits, target, ignore_index=IGNORE)


def test_compound_is_weighted_sum_of_parts():
    logits, target = make_batch()
    cfg = LossConfig(
        terms=[
            LossTerm(name="ce", weight=0.5),
            LossTerm(name="dice", weight=2.0),
            LossTerm(name="ce", weight=1.0, params={"label_smoothing": 0.1}),
        ]
    )
    compound = build_loss(cfg, num_classes=C, ignore_index=IGNORE)
    total = compound(logits, target)

    ce = LOSSES.create("ce", num_classes=C, ignore_index=IGNORE)(logits, target)
    dice = LOSSES.create("dice", num_classes=C, ignore_index=IGNORE)(logits, target)
    ce_smooth = LOSSES.create("ce", num_classes=C, ignore_index=IGNORE, label_smoothing=0.1)(
        logits, target
    )
    assert torch.allclose(total, 0.5 * ce + 2.0 * dice + ce_smooth, atol=1e-6)
    assert set(compound.last_terms) == {"ce[0]", "dice", "ce[2]"}
    assert math.isclose(compound.last_terms["dice"], dice.item(), rel_tol=1e-6)
    assert math.isclose(compound.last_terms["ce[2]"], ce_smooth.item(), rel_tol=1e-6)


def test_compound_single_term_is_that_loss():
    logits, target = make_batch()
    compound = build_loss(LossConfig(), num_classes=C, ignore_index=IGNORE)  # default: ce
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert torch.allclose(compound(logits, target), expected, atol=1e-6)
    assert list(compound.last_terms) == ["ce"]


def test_unknown_loss_name_suggests_a_fix():
    cfg = LossConfig(terms=[LossTerm(name="dise")])
    with pytest.raises(UserError, match="unknown loss 'dise'; did you mean 'dice'"):
        build_loss(cfg, num_classes=C, ignore_index=IGNORE)


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("dice", {"smoth": 1.0}, "unexpected keyword argument 'smoth'"),
        ("topk", {"k": 0}, "k=0: expected a percentage"),
        ("focal", {"class_weights": [1.0]}, "class_weights has 1 values"),
        ("ce", {"label_smoothing": 2.0}, "label_smoothing=2.0"),
    ],
)
def test_bad_params_name_the_term(name, params, message):
    cfg = LossConfig(terms=[LossTerm(name="ce"), LossTerm(name=name, params=params)])
    with pytest.raises(UserError, match=rf"loss\.terms\[1\]\.params .*{name!r}.*{message}"):
        build_loss(cfg, num_classes=C, ignore_index=IGNORE)


SMP_TWINS = [
    ("focal", {}), ("focal", {"alpha": 0.25, "gamma": 1.5}),
    ("focal", {"class_weights": [1.0, 2.0, 0.5, 3.0]}), ("focal", {"reduced_threshold": 0.5}),
    ("dice", {}), ("dice", {"smooth": 1.0}), ("dice", {"log_loss": True}),
    ("dice", {"class_weights": [1.0, 2.0, 0.5, 3.0]}),
]  # fmt: skip


@pytest.mark.parametrize("name,params", SMP_TWINS)
def test_one_pass_focal_and_dice_equal_smps_in_value_and_gradient(name, params):
    """segarena's one-pass Focal and Dice replace SMP's (loss_kernels): same numbers."""
    import segmentation_models_pytorch as smp

    ours = LOSSES.create(name, num_classes=C, ignore_index=IGNORE, **params)
    assert type(getattr(ours, "loss", ours)).__name__ in ("OneVsRestFocal", "SoftDice")
    twin = {"focal": smp.losses.FocalLoss, "dice": smp.losses.DiceLoss}[name]
    reference = twin(mode="multiclass", ignore_index=IGNORE, **params)
    logits, target = make_batch(3)
    target[target == 3] = 1  # a class absent from the batch: dice leaves it out, both alike
    logits = logits.contiguous(memory_format=torch.channels_last)  # the recipe's format
    value, grad = loss_and_grad(ours, logits, target)
    expected, expected_grad = loss_and_grad(reference, logits, target)
    assert value == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


def test_options_the_one_pass_losses_lack_keep_smps_own():
    import segmentation_models_pytorch as smp

    focal = LOSSES.create("focal", num_classes=C, ignore_index=IGNORE, normalized=True)
    assert isinstance(focal.loss, smp.losses.FocalLoss)
    dice = LOSSES.create("dice", num_classes=C, ignore_index=IGNORE, classes=[1, 2])
    assert isinstance(dice, smp.losses.DiceLoss)
