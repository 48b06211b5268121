"""train.budget_min: fit the epoch count (and with it the lr schedule) to a wall clock.

A fold first times a few steps of its own training loader (the real workers, augmentations,
precision and model) and a few batches of its validation, then picks the epoch count whose
predicted time, validations and the final scoring included, comes nearest to its share of
the budget. After epoch 1 the count is corrected once from that epoch's own time. The plan
is saved (plan.json) so that a resumed fold keeps its schedule.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from lightning_fabric import Fabric

from segarena.config import Config, TrainConfig
from segarena.errors import UserError
from segarena.model.build import unwrap
from segarena.run_dir.layout import RunDir
from segarena.run_dir.schema import Budget, FoldResult, Plan
from segarena.train.distributed import say
from segarena.train.loop import StepSettings, train_one_epoch, validate
from segarena.train.parts import FoldParts, fold_scheduler
from segarena.train.state import LoopState

PROBE_TRAIN_STEPS = 8  # timed training steps; the first WARM_STEPS are not counted
WARM_STEPS = 2  # worker start, first decodes, allocator and oneDNN warm-up
PROBE_VAL_BATCHES = 3  # the first one (worker start-up) is timed on its own
TOLERANCE = 0.10  # the share of the budget a run may miss by before it says so


class BudgetTooSmall(UserError):
    """train.budget_min cannot fit one epoch; raised before the fold trains at all."""


class FirstBatches:
    """`count` batches of a loader (going round it again if it is shorter), with the
    length the training loop reads."""

    def __init__(self, loader: Any, count: int):
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        given = 0
        while given < self.count:
            for batch in self.loader:
                yield batch
                given += 1
                if given == self.count:
                    return


def time_training(train_steps, parts, steps: int) -> tuple[float, float]:
    """(seconds the first steps take beyond the steady pace, seconds per later step) over
    `steps` real training steps; the model and optimizer are put back afterwards."""
    model_state = copy.deepcopy(unwrap(parts.learner.model).state_dict())
    optimizer_state = copy.deepcopy(parts.learner.optimizer.state_dict())
    marks: list[float] = []
    start = time.perf_counter()
    train_steps(FirstBatches(parts.loader, steps), lambda *_: marks.append(time.perf_counter()))
    unwrap(parts.learner.model).load_state_dict(model_state)
    parts.learner.optimizer.load_state_dict(optimizer_state)
    warm = min(WARM_STEPS, len(marks) - 1)
    first = marks[warm] - start
    per_step = (marks[-1] - marks[warm]) / (len(marks) - 1 - warm) if len(marks) > 1 + warm else 0
    per_step = per_step or first / (warm + 1)
    return max(first - (warm + 1) * per_step, 0.0), per_step


def time_validation(validate_batches, vloader, batch_size: int) -> tuple[float, float]:
    """(seconds of the first batch, seconds per image after it) of the validation pass."""
    marks: list[float] = []
    start = time.perf_counter()
    validate_batches(
        FirstBatches(vloader, PROBE_VAL_BATCHES), lambda *_: marks.append(time.perf_counter())
    )
    first = marks[min(batch_size, len(marks)) - 1] - start
    later = marks[batch_size:]
    per_image = (later[-1] - marks[batch_size - 1]) / len(later) if later else first / len(marks)
    return first, per_image


def validations(epochs: int, val_every: int) -> int:
    """How many epochs of `epochs` validate: every val_every-th, and always the last."""
    return epochs // val_every + (1 if epochs % val_every else 0)


def choose_epochs(
    available_s: float, train_epoch_s: float, val_s: float, finish_s: float, val_every: int,
    *, done: int = 0, least: int = 1,
) -> tuple[int, float]:  # fmt: skip
    """The epoch count (at least `least`) whose predicted time is nearest `available_s`, and
    that time; `done` epochs are already trained and their time is not in `available_s`."""

    def total(epochs: int) -> float:
        vals = validations(epochs, val_every) - validations(done, val_every)
        return (epochs - done) * train_epoch_s + vals * val_s + finish_s

    per_epoch = train_epoch_s + val_s / val_every
    epochs = max(least, done + math.floor((available_s - finish_s) / per_epoch))
    while total(epochs + 1) - available_s < available_s - total(epochs):
        epochs += 1
    while epochs > least and available_s - total(epochs - 1) < total(epochs) - available_s:
        epochs -= 1
    return epochs, total(epochs)


def plan_fold(
    fabric: Fabric, train: TrainConfig, budget_s: float, fold: int, parts, *, train_steps,
    validate_batches,
) -> Plan:  # fmt: skip
    """Measure this fold's speed and choose its epochs for `budget_s` seconds.

    `train_steps(loader, on_step)` trains over a loader and `validate_batches(loader,
    on_probs)` validates one (the fold's own loop functions); `parts` is the fold's
    FoldParts, whose model and optimizer the probe leaves as it found them.
    """
    start = time.perf_counter()
    startup, per_step = time_training(train_steps, parts, PROBE_TRAIN_STEPS)
    # this process's share of the validation images (all of them with one process)
    batch, n_val = parts.vloader.batch_size, len(parts.vloader.sampler)
    val_first, per_val_image = time_validation(validate_batches, parts.vloader, batch)
    train_epoch_s = startup + per_step * len(parts.loader)
    val_s = val_first + per_val_image * max(n_val - batch, 0)
    finish_s = val_s * (2 if train.swa is not None else 1)  # final scoring (and SWA's own)
    probe_s = time.perf_counter() - start
    available = budget_s - probe_s
    one_epoch = train_epoch_s + val_s + finish_s
    if one_epoch > available * (1 + TOLERANCE):
        raise BudgetTooSmall(
            f"train.budget_min: fold {fold}'s share is {budget_s:.0f} s, but one epoch takes "
            f"about {one_epoch:.0f} s here (training {train_epoch_s:.0f} s, validation "
            f"{val_s:.0f} s, final scoring {finish_s:.0f} s, after a {probe_s:.0f} s speed "
            f"probe); give each fold at least {(one_epoch + probe_s) / 60:.1f} min, or lower "
            "data.image_size"
        )
    epochs, planned = choose_epochs(available, train_epoch_s, val_s, finish_s, train.val_every)
    images_per_s = parts.loader.batch_size * fabric.world_size / per_step if per_step else 0.0
    plan = Plan(
        budget_s=budget_s, epochs=epochs, planned_s=planned + probe_s, probe_s=probe_s,
        train_epoch_s=train_epoch_s, val_s=val_s, train_images_per_s=images_per_s,
    )  # fmt: skip
    say(
        fabric,
        f"fold {fold}: budget {budget_s / 60:.1f} min; measured {images_per_s:.1f} img/s, "
        f"{train_epoch_s:.0f} s per epoch, {val_s:.0f} s per validation -> {epochs} epochs "
        f"(planned {plan.planned_s / 60:.1f} min)",
    )
    return plan


def replan(
    plan: Plan, fold_elapsed_s: float, epoch_s: float, val_every: int, *, swa: bool,
    validated: bool,
) -> Plan:  # fmt: skip
    """After epoch 1: the epoch count again, from that epoch's own time. A whole epoch can
    run slower than the probe's steady steps (its tail, loader restarts, a busier
    machine); the lr has barely left its peak, so lengthening or shortening the cosine
    now changes almost nothing else. `validated`: whether epoch 1 was validated."""
    finish_s = plan.val_s * (2 if swa else 1)
    least = 1 if validated else 2  # finishing needs a validated checkpoint
    epochs, left_s = choose_epochs(
        plan.budget_s - fold_elapsed_s,
        epoch_s,
        plan.val_s,
        finish_s,
        val_every,
        done=1,
        least=least,
    )
    return plan.updated(
        epochs=epochs, planned_s=fold_elapsed_s + left_s, train_epoch_s=epoch_s, replanned=True
    )


def plan_budget(
    config: Config, fabric: Fabric, parts: FoldParts, budget_s: float, fold: int
) -> Plan:
    """train.budget_min: time this fold's first steps and validation batches, choose its
    epochs for `budget_s` seconds, and rebuild the lr schedule over them."""
    cfg_train, cfg_data = config.train, config.data

    # the probe trains without the averaging hook: EMA and SWA must not see its steps
    learner = replace(parts.learner, on_update=None)
    settings = StepSettings.of(cfg_train)

    def train_steps(loader, on_step) -> None:
        train_one_epoch(fabric, learner, loader, settings, LoopState(), on_step=on_step)

    def validate_batches(loader, on_probs) -> None:
        with fabric.autocast():
            validate(
                fabric, learner.model, loader, num_classes=cfg_data.num_classes,
                ignore_index=cfg_data.ignore_index, mean_std=learner.norm, on_probs=on_probs,
            )  # fmt: skip

    try:
        plan: Plan | BudgetTooSmall = plan_fold(
            fabric, cfg_train, budget_s, fold, parts,
            train_steps=train_steps, validate_batches=validate_batches,
        )  # fmt: skip
    except BudgetTooSmall as exc:
        plan = exc
    plan = fabric.broadcast(plan, src=0)  # every process follows rank 0's measurement
    if isinstance(plan, BudgetTooSmall):
        raise plan
    if cfg_train.swa is not None and cfg_train.swa.start_epoch > plan.epochs:
        raise BudgetTooSmall(
            f"train.swa.start_epoch={cfg_train.swa.start_epoch}: fold {fold}'s budget fits only "
            f"{plan.epochs} epochs; lower start_epoch or raise train.budget_min"
        )
    parts.learner.scheduler = fold_scheduler(
        config, parts.learner.optimizer, len(parts.loader), plan.epochs
    )
    return plan


def replan_budget(
    config: Config, fabric: Fabric, parts: FoldParts, plan: Plan, state: LoopState, *,
    epoch_s: float, validated: bool, run_dir: RunDir, fold: int,
) -> Plan:  # fmt: skip
    """train.budget_min after epoch 1: correct the epochs from its measured time (`epoch_s`,
    validation aside), rebuild the lr schedule over them at the current update, and save
    the new plan."""
    swa = config.train.swa is not None
    # state.seconds: the fold's time so far, over every session
    plan = replan(
        plan, state.seconds, epoch_s, config.train.val_every, swa=swa, validated=validated
    )
    plan.epochs = fabric.broadcast(plan.epochs, src=0)
    learner = parts.learner
    learner.scheduler = fold_scheduler(config, learner.optimizer, len(parts.loader), plan.epochs)
    learner.scheduler.step_update(state.num_updates)
    if fabric.is_global_zero:
        run_dir.write_plan(fold, plan)
    say(fabric, f"fold {fold}: epoch 1 took {epoch_s:.0f} s -> "
                f"{plan.epochs} epochs (planned {plan.planned_s / 60:.1f} min)")  # fmt: skip
    return plan


def budget_summary(minutes: float, results: list[FoldResult], overhead_s: float) -> Budget:
    """summary.json's `budget`: planned and used seconds, and whether it was kept."""
    used = sum(r.seconds for r in results) + overhead_s
    planned = sum(r.plan.planned_s for r in results if r.plan is not None) + overhead_s
    budget_s = minutes * 60
    return Budget(
        minutes=minutes,
        planned_s=planned,
        used_s=used,
        used_share=used / budget_s,
        within_tolerance=abs(used / budget_s - 1) <= TOLERANCE,
        epochs=[r.epochs for r in results],
    )


def budget_line(budget: Budget) -> str:
    """One line for the terminal; says why when the run missed its budget by over 10%."""
    line = (
        f"budget {budget.minutes:g} min: planned {budget.planned_s / 60:.1f} min, used "
        f"{budget.used_s / 60:.1f} min ({budget.used_share:.0%})"
    )
    if not budget.within_tolerance:
        line += (
            "; outside +-10%: the epochs ran at another speed than the first steps measured "
            "(other load on the machine, or data that decodes slower later on)"
        )
    return line
