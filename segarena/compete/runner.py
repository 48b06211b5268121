"""The stages of `segarena compete`, run (or resumed) in order within the budget.

    plan -> folds -> tta -> pseudo -> ensemble -> swa -> submit

Every stage after `folds` is judged against the current *choice* (runs, checkpoint,
weights, inference options) on OOF per-image matrices, and the choice changes only when
the stage is kept (segarena.compete.oof: interval above 0). Optional stages (tta,
pseudo, ensemble, swa) are skipped with a reason when the plan left them out or the time
left cannot fit them: each stage's planned seconds, times how much slower (or faster)
the fold run was than planned, plus the submission's, must fit what is left.

Each stage is an ordinary run directory, evaluation or pseudo folder: the runs are
ordinary runs of the experiment under records.out (`segarena runs`, `compare`,
`evaluate`, `predict` read them), the pseudo folder is `segarena pseudo`'s, the OOF
matrices are `OUT/oof/*.npz` (segarena.ablate.infer_arms format).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segarena.compete.checks import (
    check_channels,
    check_out,
    check_split,
    data_facts,
    identity,
    test_images,
)
from segarena.compete.page import write_page
from segarena.compete.plan import CompetePlan, plan_competition, plan_lines
from segarena.compete.probe import Speed, measure_speed
from segarena.compete.record import Competition
from segarena.compete.stages import Stages
from segarena.config import Config
from segarena.data.readers import read_samples
from segarena.train.fold import TrainHooks
from segarena.train.precision import resolve_precision, with_precision

Probe = Callable[[Config, tuple[int, int]], Speed]


@dataclass
class SubmitOptions:
    """The submission's format, as `segarena predict` takes it."""

    fmt: str = "csv"
    sample: Path | None = None
    size: tuple[int, int] | None = None


log = logging.getLogger(__name__)


def default_out(config: Config) -> Path:
    return Path(config.records.out) / config.experiment / "compete"


def compete(
    config: Config,
    test_folder: Path,
    budget_min: float,
    *,
    out: Path | None = None,
    resume: bool = False,
    config_path: Path | None = None,
    submit: SubmitOptions | None = None,
    probe: Probe | None = None,
    hooks: TrainHooks | None = None,
    device: str = "auto",
    n_boot: int = 2000,
    echo: Callable[[str], None] | None = None,
) -> Competition:
    """Run the playbook (module docstring) and return the finished competition.

    Bad input raises UserError before anything is written. `probe(config, size)` measures
    the speed (default: segarena.compete.probe.measure_speed); `hooks` reach into every
    training loop (tests stop a run with them)."""
    echo = echo or log.info  # the library logs; the CLI passes typer.echo
    started = time.monotonic()
    budget_s = budget_min * 60
    check_split(config)
    items = test_images(test_folder)
    samples = read_samples(config.data, config.split)
    check_channels(samples, items, Path(test_folder))
    out = Path(out) if out is not None else default_out(config)
    ident = identity(config, test_folder)
    recorded = check_out(out, ident, resume)
    if recorded is None:
        config, _ = resolve_precision(config)  # train.precision: auto, once per competition
        facts = data_facts(config, samples, len(items))
        speed = (probe or (lambda c, s: measure_speed(c, s, device, samples)))(config, facts.size)
        plan = plan_competition(facts, speed, budget_s - (time.monotonic() - started))
        comp = Competition(out, Path(config.records.out))
        comp.record.update(
            identity=ident,
            config_path=None if config_path is None else str(config_path),
            test_images=str(Path(test_folder).resolve()),
            budget_min=budget_min,
            plan=plan.as_dict(),
            precision=config.train.precision,
        )
        comp.spent_before = time.monotonic() - started  # checks and probe count too
        comp.started = time.monotonic()
        comp.stage("plan").update(status="done", seconds=round(comp.spent_s(), 2))
    else:
        comp = Competition(out, Path(config.records.out), recorded)
        plan = CompetePlan.from_dict(recorded["plan"])
        config = with_precision(config, recorded.get("precision", config.train.precision))
        budget_s = recorded["budget_min"] * 60
        if budget_min != recorded["budget_min"]:
            echo(f"resuming with the recorded budget of {recorded['budget_min']:g} min")
        echo(f"resuming {comp.path} ({comp.spent_before / 60:.1f} min spent so far)")
    for line in plan_lines(plan):
        echo(line)
    comp.save()
    stages = Stages(comp, config, plan, Path(test_folder), budget_s, submit or SubmitOptions(),
                    hooks, device, n_boot, echo)  # fmt: skip
    try:
        stages.run_all()
    finally:
        comp.save()
        write_page(comp)
    return comp
