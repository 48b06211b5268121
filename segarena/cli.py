"""The `segarena` command line: thin Typer commands over the library.

Bad input exits with code 2 and one clear message; a run that cannot go on exits with 1.
Heavy imports (torch, SMP, MLflow) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from segarena.errors import TrainingError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay whole lines

SetOption = typer.Option(
    [], "--set", help="Override a config value, e.g. --set train.epochs=5 (repeatable)."
)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError into exit code 2 and TrainingError into 1, each with one message."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err.print(f"[bold red]error:[/] {exc}")
            sys.exit(2)
        except TrainingError as exc:
            err.print(f"[bold red]training stopped:[/] {exc}")
            sys.exit(1)

    return wrapper


@app.command()
@friendly_errors
def train(
    config: Path = typer.Argument(None, help="Experiment YAML (not needed with --resume)."),
    fold: int = typer.Option(None, "--fold", help="Train this fold only (default 0)."),
    folds: str = typer.Option(None, "--folds", help="'all' trains every fold and writes OOF."),
    debug: bool = typer.Option(False, "--debug", help="Small subset, 2 epochs, loss must fall."),
    resume: Path = typer.Option(None, "--resume", help="Continue a killed run directory."),
    out: Path = typer.Option(None, "--out", help="Runs folder (default: records.out)."),
    overrides: list[str] = SetOption,
) -> None:
    """Train a model (one fold, or every fold with --folds all)."""
    from segarena.config import load_config
    from segarena.train.run import train as run_training

    if folds not in (None, "all"):
        raise UserError(f"--folds {folds!r}: expected 'all' (use --fold N for one fold)")
    if resume is not None:
        if overrides:
            raise UserError("--set cannot change a resumed run; start a new run instead")
        run_dir = run_training(None, resume.parent.parent, resume=resume)
    else:
        if config is None:
            raise UserError("train: give a CONFIG file, or --resume RUN_DIR")
        cfg = load_config(config, overrides)
        out_dir = out if out is not None else Path(cfg.records.out)
        run_dir = run_training(cfg, out_dir, fold, folds == "all", debug)
    _print_summary(run_dir)


def _print_summary(run_dir: Path) -> None:
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    folds = ", ".join(f"{f['fold']}: {f['miou']:.4f}" for f in summary["folds"])
    typer.echo(
        f"mIoU {summary['miou']:.4f} (folds {folds}; mean {summary['miou_mean']:.4f} "
        f"± {summary['miou_std']:.4f})"
    )
    typer.echo(f"run directory: {run_dir}")


@app.command()
@friendly_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `segarena train`."),
    split: str = typer.Option("val", "--split", help="val (each fold's own), train or all."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
) -> None:
    """Recompute a run's metrics from its checkpoints."""
    from segarena.evaluate import evaluate as run_evaluate

    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint {checkpoint!r}: expected best or last")
    result = run_evaluate(run_dir, split, checkpoint)
    typer.echo(f"{split} mIoU {result['miou']:.4f}")


@app.command()
@friendly_errors
def split(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    out: Path = typer.Option(None, "--out", help="Runs folder (default: records.out)."),
    overrides: list[str] = SetOption,
) -> None:
    """Write (or check) the experiment's folds.csv and print each fold's size and groups."""
    from collections import Counter

    from segarena.config import load_config
    from segarena.data.folds import load_or_create_folds
    from segarena.data.readers import read_samples

    cfg = load_config(config, overrides)
    samples = read_samples(cfg.data, cfg.split)
    path = (out if out is not None else Path(cfg.records.out)) / cfg.experiment / "folds.csv"
    folds = load_or_create_folds(path, samples, cfg.split, cfg.data.num_classes)
    counts = Counter(folds)
    for k in sorted(counts):
        groups = sorted({s.group for s, f in zip(samples, folds) if f == k})
        shown = ", ".join(groups[:5]) + (" ..." if len(groups) > 5 else "")
        label = "train only" if k == -1 else f"fold {k}"
        typer.echo(f"{label}: {counts[k]} images, {len(groups)} groups ({shown})")
    typer.echo(f"folds: {path}")


if __name__ == "__main__":
    app()
