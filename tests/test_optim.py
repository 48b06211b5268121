import io
import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from segarena.config import OptimizerConfig, SchedulerConfig
from segarena.errors import UserError
from segarena.train.optim import SCHEDULERS, build_optimizer, build_scheduler

LR, WARMUP_LR, MIN_LR = 0.1, 1e-4, 1e-5
STEPS = 10  # optimizer steps per epoch


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)
    )


# Competition staples; bnb*/fused* need CUDA, kron/muon target other settings.
OPTIMIZERS = [
    "sgd",
    "momentum",
    "nesterov",
    "sgdp",
    "adam",
    "adamw",
    "adamp",
    "radam",
    "nadam",
    "nadamw",
    "adabelief",
    "lamb",
    "lars",
    "lion",
    "adan",
    "madgrad",
    "novograd",
    "rmsprop",
    "rmsproptf",
    "adafactor",
    "adopt",
    "laprop",
    "lookahead_adamw",
    "lookahead_radam",
    "lookahead_sgd",
]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_steps_reduce_a_loss(name):
    model = tiny_model()
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 2, 8, 8)
    optimizer = build_optimizer(model, OptimizerConfig(name=name, lr=1e-2))
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        start = ((model(x) - y) ** 2).mean()
    for _ in range(2):  # adopt's first step only initialises its second moment
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
    with torch.no_grad():
        end = ((model(x) - y) ** 2).mean()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert end < start


@pytest.mark.parametrize("name", ["adamw", "sgd", "lookahead_radam"])
def test_no_weight_decay_on_norms_and_biases(name):
    model = tiny_model()
    optimizer = build_optimizer(model, OptimizerConfig(name=name, weight_decay=0.05))
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for param_name, param in model.named_parameters():
        expected = 0.05 if param.ndim == 4 else 0.0  # conv kernels decay; biases, BN do not
        assert decay_of[id(param)] == expected, param_name
    assert len(decay_of) == len(list(model.parameters()))


def test_optimizer_params_are_passed_on():
    model = tiny_model()
    optimizer = build_optimizer(
        model, OptimizerConfig(name="AdamW", lr=3e-4, params={"betas": (0.8, 0.9), "eps": 1e-6})
    )
    assert type(optimizer).__name__ == "AdamW"
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    assert all(g["lr"] == 3e-4 for g in optimizer.param_groups)


@pytest.mark.parametrize(
    "name,hint", [("adamww", "'adamw'"), ("lookahead_radm", "'lookahead_radam'"), ("foo_adamw", "")]
)
def test_unknown_optimizer_suggests_a_fix(name, hint):
    with pytest.raises(UserError, match=rf"optimizer.name={name!r}.*{hint}.*list_optimizers"):
        build_optimizer(tiny_model(), OptimizerConfig(name=name))


@pytest.mark.parametrize(
    "name,params,message",
    [("sgd", {"momentom": 0.8}, "momentom"), ("adam", {"betas": (1.5, 0.9)}, "beta")],
)
def test_bad_optimizer_params_name_the_key(name, params, message):
    with pytest.raises(UserError, match=rf"optimizer\.params .*{name!r}.*{message}"):
        build_optimizer(tiny_model(), OptimizerConfig(name=name, params=params))


def make_schedule(epochs=5, **cfg):
    optimizer = build_optimizer(tiny_model(), OptimizerConfig(name="sgd", lr=LR))
    return optimizer, build_scheduler(optimizer, SchedulerConfig(**cfg), epochs, STEPS)


def run(optimizer, schedule, epochs, metrics=None, start_epoch=0):
    """The lr used by every update (as the loop sees it), both param groups checked equal."""
    lrs = []
    for epoch in range(start_epoch, epochs):
        for step in range(STEPS):
            group_lrs = {g["lr"] for g in optimizer.param_groups}
            assert len(group_lrs) == 1
            lrs.append(group_lrs.pop())
            schedule.step_update(epoch * STEPS + step + 1)
        schedule.step_epoch(epoch + 1, None if metrics is None else metrics[epoch])
    return lrs


@pytest.mark.parametrize("name", ["cosine", "poly", "step", "plateau", "none"])
@pytest.mark.parametrize("warmup_epochs", [1.0, 0.5])
def test_linear_warmup_reaches_lr(name, warmup_epochs):
    optimizer, schedule = make_schedule(
        name=name, warmup_epochs=warmup_epochs, warmup_lr=WARMUP_LR, min_lr=MIN_LR
    )
    lrs = run(optimizer, schedule, 5, metrics=[0.5] * 5)
    end = round(warmup_epochs * STEPS)
    assert lrs[0] == pytest.approx(WARMUP_LR)
    assert lrs[end // 2] == pytest.approx(WARMUP_LR + (LR - WARMUP_LR) * (end // 2) / end)
    assert lrs[end - 1] < LR
    assert lrs[end] == pytest.approx(LR)


def test_cosine_ends_at_min_lr():
    optimizer, schedule = make_schedule(name="cosine", warmup_epochs=1, min_lr=MIN_LR)
    lrs = run(optimizer, schedule, 5)
    decay = 4 * STEPS  # updates after warmup
    assert lrs[STEPS + decay // 2] == pytest.approx((LR + MIN_LR) / 2)
    # The last update is one cosine step (of 40) short of the end: ~min_lr.
    last = MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * (decay - 1) / decay))
    assert lrs[-1] == pytest.approx(last)
    assert lrs[-1] - MIN_LR < 2e-3 * LR
    assert all(a >= b for a, b in pairwise(lrs[STEPS:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(MIN_LR)  # after the last update


@pytest.mark.parametrize("t", [10, 25, 40])
def test_poly_follows_its_formula(t):
    optimizer, schedule = make_schedule(name="poly", poly_power=0.9, min_lr=0.0)
    lrs = run(optimizer, schedule, 5)
    assert lrs[t] == pytest.approx(LR * (1 - t / 50) ** 0.9, rel=1e-6)


def test_step_decays_at_epoch_boundaries():
    optimizer, schedule = make_schedule(
        name="step", step_epochs=2, decay_rate=0.5, warmup_epochs=0.5
    )
    lrs = run(optimizer, schedule, 5)
    assert lrs[2 * STEPS - 1] == pytest.approx(LR)
    assert lrs[2 * STEPS] == pytest.approx(LR * 0.5)
    assert lrs[4 * STEPS - 1] == pytest.approx(LR * 0.5)
    assert lrs[4 * STEPS] == pytest.approx(LR * 0.25)


def epoch_lrs(optimizer, schedule, metrics):
    """The lr in force after each epoch's step_epoch."""
    out = []
    for epoch, metric in enumerate(metrics):
        schedule.step_update((epoch + 1) * STEPS)
        schedule.step_epoch(epoch + 1, metric)
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_plateau_decays_after_patience_without_improvement():
    optimizer, schedule = make_schedule(name="plateau", patience=2, decay_rate=0.5, epochs=12)
    metrics = [0.1, 0.2, 0.3, 0.4, 0.3, None, 0.35, 0.4, 0.5, 0.5, 0.5, 0.5]
    lrs = epoch_lrs(optimizer, schedule, metrics)
    # Improving: no decay. Then 0.3, 0.35 are bad (None is not a validation) and 0.4
    # does not beat 0.4: the third bad validation decays; 0.5 resets; three more bad.
    assert lrs[:6] == [LR] * 6
    assert lrs[6] == LR
    assert lrs[7] == pytest.approx(LR / 2)
    assert lrs[8:11] == [pytest.approx(LR / 2)] * 3
    assert lrs[11] == pytest.approx(LR / 4)


def test_plateau_ignores_metrics_during_warmup():
    optimizer, schedule = make_schedule(
        name="plateau", patience=0, decay_rate=0.5, warmup_epochs=3, warmup_lr=WARMUP_LR
    )
    lrs = epoch_lrs(optimizer, schedule, [0.9, 0.1, 0.1, 0.5, 0.4])
    assert lrs[:2] == [pytest.approx(WARMUP_LR + (LR - WARMUP_LR) * e / 3) for e in (1, 2)]
    assert lrs[2:4] == [pytest.approx(LR)] * 2  # 0.5 is the first metric seen: the best
    assert lrs[4] == pytest.approx(LR / 2)


@pytest.mark.parametrize("name", ["cosine", "poly", "step", "plateau", "none"])
def test_state_dict_round_trip_resumes_the_same_lrs(name):
    cfg = dict(name=name, warmup_epochs=1.5, patience=1, decay_rate=0.5, step_epochs=2, epochs=8)
    metrics = [0.1, 0.2, 0.3, 0.2, 0.25, 0.2, 0.1, 0.1]  # a plateau decay on each side of 4
    optimizer, schedule = make_schedule(**cfg)
    first = run(optimizer, schedule, 4, metrics)
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    rest = run(optimizer, schedule, 8, metrics, start_epoch=4)

    optimizer2, schedule2 = make_schedule(**cfg)
    buffer.seek(0)
    schedule2.load_state_dict(torch.load(buffer, weights_only=True))
    resumed = run(optimizer2, schedule2, 8, metrics, start_epoch=4)
    assert resumed == rest
    assert len(set(first + rest)) > 2  # the lr really moved (warmup and decay)


def test_warmup_rounding_leaves_an_update_to_decay():
    # One update per epoch and one epoch: half an epoch of warmup rounds to nothing.
    optimizer = build_optimizer(tiny_model(), OptimizerConfig(name="sgd", lr=LR))
    cfg = SchedulerConfig(name="cosine", warmup_epochs=0.5, min_lr=MIN_LR)
    schedule = build_scheduler(optimizer, cfg, epochs=1, steps_per_epoch=1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR)
    schedule.step_update(1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(MIN_LR)


def test_constant_lr_without_warmup():
    optimizer, schedule = make_schedule(name="none")
    assert run(optimizer, schedule, 3, metrics=[0.1, 0.0, 0.0]) == [LR] * 30


@pytest.mark.parametrize(
    "cfg,epochs,steps,message",
    [
        (dict(name="cosine", warmup_epochs=5), 5, STEPS, "scheduler.warmup_epochs=5.0"),
        (dict(name="plateau", decay_rate=1.5), 5, STEPS, "scheduler.decay_rate=1.5"),
        (dict(name="poly"), 5, 0, "steps_per_epoch=0"),
    ],
)
def test_bad_schedule_is_a_user_error(cfg, epochs, steps, message):
    optimizer = build_optimizer(tiny_model(), OptimizerConfig(name="sgd"))
    with pytest.raises(UserError, match=message):
        build_scheduler(optimizer, SchedulerConfig(**cfg), epochs, steps)


def test_cosine_is_per_update_not_per_epoch():
    optimizer, schedule = make_schedule(name="cosine", min_lr=0.0, epochs=2)
    lrs = run(optimizer, schedule, 2)
    assert lrs[1] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi / 20)))
    assert len(set(lrs[:STEPS])) == STEPS


WARMED = WARMUP_LR + (LR - WARMUP_LR) * 5 / 10  # half of the 10 warmup updates


@pytest.mark.parametrize(
    "name,expected",
    [
        # 40 decay updates after warmup: half-way the cosine is at the middle of lr and min_lr
        ("cosine", {5: WARMED, 10: LR, 30: (LR + MIN_LR) / 2, 49: MIN_LR + (LR - MIN_LR) / 2
                    * (1 + math.cos(math.pi * 39 / 40))}),
        ("poly", {5: WARMED, 10: LR, 30: MIN_LR + (LR - MIN_LR) * 0.5**0.9,
                  49: MIN_LR + (LR - MIN_LR) * (1 / 40) ** 0.9}),
        # decays every 2 epochs (20 updates) counted from the start, warmup included
        ("step", {5: WARMED, 10: LR, 19: LR, 20: LR * 0.5, 39: LR * 0.5, 40: LR * 0.25}),
        ("plateau", {5: WARMED, 10: LR, 49: LR}),  # no validation metric: no decay
        ("none", {5: WARMED, 10: LR, 49: LR}),
    ],
)  # fmt: skip
def test_each_registered_schedule_gives_its_hand_computed_lrs(name, expected):
    optimizer, schedule = make_schedule(
        name=name, warmup_epochs=1, warmup_lr=WARMUP_LR, min_lr=MIN_LR, poly_power=0.9,
        step_epochs=2, decay_rate=0.5,
    )  # fmt: skip
    lrs = run(optimizer, schedule, 5)
    assert {t: lrs[t] for t in expected} == pytest.approx(expected, rel=1e-9)


def test_every_registered_schedule_is_tested_by_name():
    assert SCHEDULERS.names() == ["cosine", "none", "plateau", "poly", "step"]


def test_unknown_scheduler_suggests_a_fix():
    optimizer = build_optimizer(tiny_model(), OptimizerConfig(name="sgd"))
    with pytest.raises(UserError, match=r"unknown scheduler 'cosin'; did you mean 'cosine'\?"):
        build_scheduler(optimizer, SchedulerConfig(name="cosin"), 5, STEPS)
