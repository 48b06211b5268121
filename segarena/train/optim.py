"""Optimizers from timm and learning-rate schedules with linear warmup.

Schedules are stepped per optimizer update (`step_update`) so that warmup and decay are
smooth even with few, long epochs; `step_epoch` feeds the validation mIoU to `plateau`.
"""

from __future__ import annotations

from typing import Any

import timm.optim
import torch
from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from segarena.config import OptimizerConfig, SchedulerConfig
from segarena.errors import UserError
from segarena.util.registry import Registry
from segarena.util.text import did_you_mean

LOOKAHEAD = "lookahead_"  # timm wraps any optimizer in Lookahead when its name has this prefix


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """A timm optimizer for `model`; norms and biases get no weight decay."""
    check_optimizer_name(cfg.name)
    try:
        return timm.optim.create_optimizer_v2(
            model,
            opt=cfg.name,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            filter_bias_and_bn=True,
            **cfg.params,
        )
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"optimizer.params {cfg.params!r} are not valid for optimizer {cfg.name!r}: {exc}"
        ) from None
    except (ImportError, AssertionError) as exc:
        # bitsandbytes / apex variants need CUDA and an extra package.
        raise UserError(f"optimizer.name={cfg.name!r} cannot be used here: {exc}") from None


def check_optimizer_name(name: str) -> None:
    """UserError with a did-you-mean unless timm has an optimizer of this name."""
    known = timm.optim.list_optimizers()
    if name.lower().removeprefix(LOOKAHEAD) in known:
        return
    # timm itself would accept `foo_adamw` as adamw (it reads only the last `_` part).
    choices = known + [LOOKAHEAD + n for n in known]
    raise UserError(
        f"optimizer.name={name!r} is not a timm optimizer{did_you_mean(name.lower(), choices)} "
        f"(see timm.optim.list_optimizers(); prefix any name with {LOOKAHEAD!r} "
        "to wrap it in Lookahead)"
    )


class LrSchedule:
    """The learning rate over training: a timm schedule per update, or warmup then plateau.

    The training loop calls `step_update(num_updates)` after every optimizer step and
    `step_epoch(epoch, metric)` after every epoch (`metric` = val mIoU, None when the epoch
    was not validated).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        per_update: Scheduler,
        plateau: ReduceLROnPlateau | None = None,
        warmup_updates: int = 0,
    ):
        self.optimizer = optimizer
        self.per_update = per_update
        self.plateau = plateau
        self.warmup_updates = warmup_updates
        self.num_updates = 0

    def step_update(self, num_updates: int) -> None:
        """Set the lr for the next update; `num_updates` = optimizer steps done so far."""
        self.num_updates = num_updates
        # After warmup the plateau scheduler owns the lr: the constant timm schedule
        # would otherwise undo its reductions.
        if self.plateau is None or num_updates <= self.warmup_updates:
            self.per_update.step_update(num_updates)

    def step_epoch(self, epoch: int, metric: float | None = None) -> None:
        """After `epoch` finished epochs; only `plateau` uses it (metrics during warmup ignored)."""
        warmed_up = self.num_updates >= self.warmup_updates
        if self.plateau is not None and metric is not None and warmed_up:
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values, loadable with torch.load(weights_only=True)."""
        return {
            "num_updates": self.num_updates,
            "lrs": [group["lr"] for group in self.optimizer.param_groups],
            "per_update": self.per_update.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: restores the counters and the lr of every param group."""
        self.num_updates = state["num_updates"]
        self.per_update.load_state_dict(state["per_update"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        # The lr after plateau reductions is not a function of the step count, so the
        # current lrs are saved and put back rather than recomputed.
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr


SCHEDULERS = Registry("scheduler")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LrSchedule:
    """The lr schedule named by `cfg` for `epochs` epochs of `steps_per_epoch` optimizer steps.

    Warmup goes linearly from `cfg.warmup_lr` to the optimizer's lr over `cfg.warmup_epochs`
    (fractions allowed). cosine and poly then decay to `cfg.min_lr` by the last step;
    step multiplies the lr by `cfg.decay_rate` every `cfg.step_epochs` epochs (counted from
    the start of training); plateau multiplies it by `cfg.decay_rate` when val mIoU has not
    improved for more than `cfg.patience` validations; none keeps it constant.

    Each name is a factory in SCHEDULERS, called with (optimizer, cfg, epochs,
    steps_per_epoch); an unknown name is a UserError with a did-you-mean.
    """
    factory = SCHEDULERS.get(cfg.name)
    if steps_per_epoch < 1:
        raise UserError(
            f"steps_per_epoch={steps_per_epoch}: an epoch must have at least one optimizer step "
            "(is the training set smaller than train.batch_size * train.accumulate?)"
        )
    return factory(optimizer=optimizer, cfg=cfg, epochs=epochs, steps_per_epoch=steps_per_epoch)


@SCHEDULERS.register("cosine")
def cosine_schedule(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LrSchedule:
    """Warmup, then a cosine decay to `cfg.min_lr` at the last update."""
    return _decay_to_last_update(CosineLRScheduler, optimizer, cfg, epochs, steps_per_epoch)


@SCHEDULERS.register("poly")
def poly_schedule(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LrSchedule:
    """Warmup, then lr * (1 - t / T) ** `cfg.poly_power` down to `cfg.min_lr`."""
    return _decay_to_last_update(
        PolyLRScheduler, optimizer, cfg, epochs, steps_per_epoch, power=cfg.poly_power
    )


def _decay_to_last_update(
    scheduler: type, optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int, **extra
) -> LrSchedule:
    """A timm per-update `scheduler` after the warmup, ending at `cfg.min_lr` on the last
    update (warmup_prefix: the decay starts from the full lr once the warmup is over)."""
    warmup = _warmup_before_decay(cfg, epochs, steps_per_epoch)
    per_update = scheduler(
        optimizer,
        t_initial=epochs * steps_per_epoch - warmup,
        lr_min=cfg.min_lr,
        warmup_prefix=True,
        **extra,
        **_warmup_args(cfg, warmup),
    )
    return LrSchedule(optimizer, per_update, warmup_updates=warmup)


@SCHEDULERS.register("step")
def step_schedule(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LrSchedule:
    """Warmup; the lr is multiplied by `cfg.decay_rate` every `cfg.step_epochs` epochs."""
    _check_decay_rate(cfg)
    warmup = _warmup_updates(cfg, steps_per_epoch)
    # No warmup_prefix: decays fall on epoch multiples of step_epochs, warmup or not.
    per_update = StepLRScheduler(
        optimizer,
        decay_t=cfg.step_epochs * steps_per_epoch,
        decay_rate=cfg.decay_rate,
        warmup_prefix=False,
        **_warmup_args(cfg, warmup),
    )
    return LrSchedule(optimizer, per_update, warmup_updates=warmup)


@SCHEDULERS.register("plateau")
def plateau_schedule(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LrSchedule:
    """Warmup, then the lr is multiplied by `cfg.decay_rate` when val mIoU stalls."""
    _check_decay_rate(cfg)
    warmup = _warmup_updates(cfg, steps_per_epoch)
    per_update = _constant(optimizer, cfg, warmup)  # made first: it sets the warmup lr
    # torch's ReduceLROnPlateau rather than timm's PlateauLRScheduler wrapper of it: timm's
    # is deprecated, warms up per epoch only, and its state_dict drops the patience
    # counter, so a resumed run would decay at a different epoch.
    on_plateau = ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.decay_rate, patience=cfg.patience, min_lr=cfg.min_lr
    )
    return LrSchedule(optimizer, per_update, on_plateau, warmup)


@SCHEDULERS.register("none")
def constant_schedule(
    optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, epochs: int, steps_per_epoch: int
) -> LrSchedule:
    """Warmup, then a constant lr."""
    warmup = _warmup_updates(cfg, steps_per_epoch)
    return LrSchedule(optimizer, _constant(optimizer, cfg, warmup), warmup_updates=warmup)


def _warmup_updates(cfg: SchedulerConfig, steps_per_epoch: int) -> int:
    """`cfg.warmup_epochs` in whole updates (at least one when there is any warmup)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.warmup_epochs > 0:
        warmup = max(1, warmup)
    return warmup


def _warmup_before_decay(cfg: SchedulerConfig, epochs: int, steps_per_epoch: int) -> int:
    """The warmup of a schedule that decays until the last update: it must leave updates."""
    warmup = _warmup_updates(cfg, steps_per_epoch)
    if cfg.warmup_epochs >= epochs:
        raise UserError(
            f"scheduler.warmup_epochs={cfg.warmup_epochs} leaves no epochs to decay in: "
            f"expected less than train.epochs={epochs} with scheduler.name={cfg.name!r}"
        )
    # Rounding to whole updates (tiny data: 1 update per epoch) must leave one to decay.
    return min(warmup, epochs * steps_per_epoch - 1)


def _check_decay_rate(cfg: SchedulerConfig) -> None:
    if not 0 < cfg.decay_rate < 1:
        raise UserError(
            f"scheduler.decay_rate={cfg.decay_rate}: expected a factor in (0, 1) "
            f"with scheduler.name={cfg.name!r}"
        )


def _warmup_args(cfg: SchedulerConfig, warmup: int) -> dict[str, Any]:
    # timm counts t_initial, warmup_t and decay_t in updates when t_in_epochs=False.
    return dict(warmup_t=warmup, warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)


def _constant(optimizer: torch.optim.Optimizer, cfg: SchedulerConfig, warmup: int) -> Scheduler:
    """Warmup, then constant: a step schedule that never decays."""
    return StepLRScheduler(optimizer, decay_t=1, decay_rate=1.0, **_warmup_args(cfg, warmup))
