"""The ablation command: a baseline and one run per arm, in one table."""

from __future__ import annotations

from pathlib import Path

import typer

from segarena.cli.common import SetOption, friendly_errors, parse_seeds
from segarena.errors import UserError


@friendly_errors
def ablate(
    config: Path = typer.Argument(..., help="Experiment YAML: the baseline."),
    arm: list[str] = typer.Option(
        [], "--arm", help="NAME=key=value[,key=value...]: baseline + these overrides."
    ),
    infer_arm: list[str] = typer.Option(
        [],
        "--infer-arm",
        help="NAME=tta=hflip,scales=0.75,1.0,merge=gmean,checkpoint=ema: no training.",
    ),
    arms_file: Path = typer.Option(None, "--arms-file", help="YAML: arm name -> settings."),
    out: Path = typer.Option(None, "--out", help="Runs folder (default: records.out)."),
    folds: str = typer.Option("0", "--folds", help="A fold number (default 0), or 'all'."),
    seeds: str = typer.Option(None, "--seeds", help="Train every arm once per seed, e.g. 0,1."),
    allow_unpaired: bool = typer.Option(
        False, "--allow-unpaired", help="Allow arms that change split.* or data.sources."
    ),
    name: str = typer.Option(None, "--name", help="Ablation name (default: CONFIG's stem)."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples."),
    device: str = typer.Option("auto", "--device", help="Inference arms: auto, cpu, cuda."),
    overrides: list[str] = SetOption,
) -> None:
    """Train a baseline and one run per arm (one change each) on the same folds; print
    each arm's gain with a paired-bootstrap interval and a verdict."""
    from rich.console import Console

    from segarena.ablate.arms import parse_arm, read_arms_file
    from segarena.ablate.plan import make_plan
    from segarena.ablate.runner import run_ablation
    from segarena.ablate.table import write_report

    if n_boot < 100:
        raise UserError(f"--n-boot {n_boot}: expected at least 100 resamples")
    chosen_folds = _parse_folds(folds)
    arms = [parse_arm(text, "train") for text in arm]
    arms += [parse_arm(text, "infer") for text in infer_arm]
    arms += read_arms_file(arms_file) if arms_file is not None else []
    chosen_seeds = [None] if seeds is None else parse_seeds(seeds)  # None: train.seed
    plan = make_plan(config, overrides, arms, chosen_seeds, allow_unpaired=allow_unpaired)
    outcome = run_ablation(
        plan, out=out, name=name or config.stem, folds=chosen_folds, device=device
    )
    console = Console(highlight=False)
    if not console.is_terminal:  # piped: no terminal to wrap the wide table for
        console.width = 200
    paths = write_report(outcome, n_boot, console)
    typer.echo(f"ablation: {', '.join(map(str, paths))}")


def _parse_folds(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--folds {text!r}: expected a fold number (e.g. 0) or 'all'") from None
