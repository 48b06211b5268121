"""The compete command: the competition playbook within a budget, to a submission."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from segarena.cli.common import SetOption, err, friendly_errors


@friendly_errors
def compete(
    config: Path = typer.Argument(..., help="Experiment YAML (a split with K >= 2 folds)."),
    test_images: Path = typer.Option(
        ..., "--test-images", help="Folder of unlabelled test images."
    ),
    budget_min: float = typer.Option(
        ..., "--budget-min", help="Minutes of wall clock, all stages."
    ),
    out: Path = typer.Option(
        None, "--out", help="Competition folder (default: records.out/<experiment>/compete)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the competition in --out."),
    fmt: str = typer.Option("csv", "--format", help="Submission: csv, rle or png."),
    sample: Path = typer.Option(None, "--sample", help="Sample submission: ids and their order."),
    size: str = typer.Option(None, "--size", help="Mask N or H,W (csv: 256; else image size)."),
    device: str = typer.Option("auto", "--device", help="Inference: auto, cpu, cuda."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples per decision."),
    overrides: list[str] = SetOption,
) -> None:
    """Plan, train K folds, choose TTA, pseudo-labels, weights and SWA on out-of-fold
    scores (kept only when they help), and write a validated submission, within
    --budget-min minutes."""
    from segarena.compete.runner import SubmitOptions
    from segarena.compete.runner import compete as run_compete
    from segarena.config import load_config
    from segarena.errors import UserError
    from segarena.infer.options import parse_size

    if budget_min <= 0:
        raise UserError(f"--budget-min {budget_min:g}: expected minutes > 0")
    if n_boot < 100:
        raise UserError(f"--n-boot {n_boot}: expected at least 100 resamples")
    if fmt not in ("csv", "rle", "png"):
        raise UserError(f"--format {fmt!r}: expected csv, rle or png")
    if sample is not None and not sample.is_file():
        raise UserError(f"--sample {sample}: file not found")
    parsed = load_config(config, overrides)
    options = SubmitOptions(fmt, sample, parse_size(size, "--size"))
    try:
        comp = run_compete(parsed, test_images, budget_min, out=out, resume=resume,
                           config_path=config, submit=options, device=device, n_boot=n_boot,
                           echo=typer.echo)  # fmt: skip
    except KeyboardInterrupt:
        where = out if out is not None else "the same --out"
        err.print(
            f"[bold red]interrupted:[/] compete.json keeps every finished stage; continue "
            f"with: segarena compete {config} --test-images {test_images} --budget-min "
            f"{budget_min:g} --out {where} --resume"
        )
        sys.exit(130)
    typer.echo(f"wrote {comp.record['submission']} (validated), {comp.path}, "
               f"{comp.root / 'compete.html'}")  # fmt: skip
