"""train.budget_min: fit the epoch count (and with it the lr schedule) to a wall clock.

A fold first times a few steps of its own training loader (the real workers, augmentations,
precision and model) and a few batches of its validation, then picks the epoch count whose
predicted time, validations and the final scoring included, comes nearest to its share of
the budget. The plan is saved (plan.json) so that a resumed fold keeps its schedule.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_fabric import Fabric

from segarena.errors import UserError
from segarena.records import write_json_atomic

PROBE_TRAIN_STEPS = 8  # timed training steps; the first WARM_STEPS are not counted
WARM_STEPS = 2  # worker start, first decodes, allocator and oneDNN warm-up
PROBE_VAL_BATCHES = 3  # the first one (worker start-up) is timed on its own
TOLERANCE = 0.10  # the share of the budget a run may miss by before it says so


@dataclass
class Plan:
    """A fold's measured speed and the epochs chosen for its share of the budget."""

    budget_s: float  # the fold's share, from the start of the fold
    epochs: int
    planned_s: float  # predicted fold time with `epochs`, probe included
    probe_s: float  # time the probe itself took
    train_epoch_s: float
    val_s: float  # one validation pass
    train_images_per_s: float

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Plan | None:
        return cls(**json.loads(path.read_text())) if path.is_file() else None


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
    """(seconds before the first step ends, seconds per later step) over `steps` real
    training steps; the model and optimizer are put back as they were afterwards."""
    from segarena.train.checkpoint import unwrap

    model_state = copy.deepcopy(unwrap(parts.model).state_dict())
    optimizer_state = copy.deepcopy(parts.optimizer.state_dict())
    marks: list[float] = []
    start = time.perf_counter()
    train_steps(FirstBatches(parts.loader, steps), lambda *_: marks.append(time.perf_counter()))
    unwrap(parts.model).load_state_dict(model_state)
    parts.optimizer.load_state_dict(optimizer_state)
    warm = min(WARM_STEPS, len(marks) - 1)
    first = marks[warm] - start
    per_step = (marks[-1] - marks[warm]) / (len(marks) - 1 - warm) if len(marks) > 1 + warm else 0
    return first, (per_step or first / (warm + 1))


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
    available_s: float, train_epoch_s: float, val_s: float, finish_s: float, val_every: int
) -> tuple[int, float]:
    """The epoch count whose predicted time is nearest `available_s`, and that time."""

    def total(epochs: int) -> float:
        return epochs * train_epoch_s + validations(epochs, val_every) * val_s + finish_s

    epochs = max(1, math.floor((available_s - finish_s) / (train_epoch_s + val_s / val_every)))
    while total(epochs + 1) - available_s < available_s - total(epochs):
        epochs += 1
    while epochs > 1 and available_s - total(epochs - 1) < total(epochs) - available_s:
        epochs -= 1
    return epochs, total(epochs)


def plan_fold(
    fabric: Fabric,
    budget_s: float,
    fold: int,
    val_every: int,
    swa: bool,
    train_steps,
    validate_batches,
    parts,
    n_val: int,
    batch_size: int,
) -> Plan:
    """Measure this fold's speed and choose its epochs for `budget_s` seconds."""
    start = time.perf_counter()
    startup, per_step = time_training(train_steps, parts, PROBE_TRAIN_STEPS)
    val_first, per_val_image = time_validation(validate_batches, parts.vloader, batch_size)
    train_epoch_s = startup - per_step + per_step * len(parts.loader)
    val_s = val_first + per_val_image * max(n_val - batch_size, 0)
    finish_s = val_s * (2 if swa else 1)  # the final scoring (and SWA's own)
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
    epochs, planned = choose_epochs(available, train_epoch_s, val_s, finish_s, val_every)
    images_per_s = parts.loader.batch_size / per_step if per_step else 0.0
    plan = Plan(budget_s, epochs, planned + probe_s, probe_s, train_epoch_s, val_s, images_per_s)
    fabric.print(
        f"fold {fold}: budget {budget_s / 60:.1f} min; measured {images_per_s:.1f} img/s, "
        f"{train_epoch_s:.0f} s per epoch, {val_s:.0f} s per validation -> {epochs} epochs "
        f"(planned {plan.planned_s / 60:.1f} min)"
    )
    return plan


def budget_summary(minutes: float, results: list[dict[str, Any]], overhead_s: float) -> dict:
    """summary.json's `budget`: planned and used seconds, and whether it was kept."""
    used = sum(r["seconds"] for r in results) + overhead_s
    planned = sum(r["plan"]["planned_s"] for r in results if r.get("plan")) + overhead_s
    budget_s = minutes * 60
    return {
        "minutes": minutes,
        "planned_s": planned,
        "used_s": used,
        "used_share": used / budget_s,
        "within_tolerance": abs(used / budget_s - 1) <= TOLERANCE,
        "epochs": [r["epochs"] for r in results],
    }


def budget_line(budget: dict) -> str:
    """One line for the terminal; says why when the run missed its budget by over 10%."""
    line = (
        f"budget {budget['minutes']:g} min: planned {budget['planned_s'] / 60:.1f} min, used "
        f"{budget['used_s'] / 60:.1f} min ({budget['used_share']:.0%})"
    )
    if not budget["within_tolerance"]:
        line += (
            "; outside +-10%: the epochs ran at another speed than the first steps measured "
            "(other load on the machine, or data that decodes slower later on)"
        )
    return line
