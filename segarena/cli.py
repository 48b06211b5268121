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
# Inference options shared by evaluate and predict; None keeps the run's config.infer value.
TtaOption = typer.Option(None, "--tta", help="none, hflip, vflip or d4 (flips x rot90).")
ScalesOption = typer.Option(None, "--scales", help="Input scales, e.g. 0.75,1.0,1.25.")
MergeOption = typer.Option(None, "--merge", help="mean (of probabilities), gmean or logits.")
WindowOption = typer.Option(None, "--window", help="Sliding window H,W (or N) in pixels.")
OverlapOption = typer.Option(None, "--overlap", help="Sliding-window overlap in [0, 1).")
SwBatchOption = typer.Option(None, "--sw-batch-size", help="Windows per forward pass.")


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
    seeds: str = typer.Option(
        None, "--seeds", help="One run per seed, e.g. 0,1,2: a seed ensemble."
    ),
    overrides: list[str] = SetOption,
) -> None:
    """Train a model (one fold, or every fold with --folds all)."""
    from segarena.config import load_config
    from segarena.train.run import train as run_training

    if seeds is not None:
        if resume is not None or config is None:
            raise UserError("--seeds needs a CONFIG and starts new runs (not with --resume)")
        run_dirs = []
        for seed in _parse_seeds(seeds):
            cfg = load_config(config, [*overrides, f"train.seed={seed}"])
            out_dir = out if out is not None else Path(cfg.records.out)
            run_dirs.append(run_training(cfg, out_dir, fold, folds == "all", debug))
            _print_summary(run_dirs[-1])
        typer.echo(
            f"seed ensemble: segarena predict {' '.join(map(str, run_dirs))} --images DIR ..."
        )
        return

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


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2")
    return seeds


def _print_summary(run_dir: Path) -> None:
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    folds = ", ".join(f"{f['fold']}: {f['miou']:.4f}" for f in summary["folds"])
    typer.echo(
        f"mIoU {summary['miou']:.4f} (folds {folds}; mean {summary['miou_mean']:.4f} "
        f"± {summary['miou_std']:.4f})"
    )
    if "pseudo_gain" in summary:  # data.pseudo: did the pseudo-labels help?
        from segarena.pseudo_data import gain_line

        typer.echo(gain_line(summary))
    typer.echo(f"run directory: {run_dir}")


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


@app.command()
@friendly_errors
def runs(
    out: Path = typer.Argument(None, help="Runs folder (default: records.out, 'runs')."),
    as_csv: bool = typer.Option(False, "--csv", help="Write CSV to stdout instead of a table."),
) -> None:
    """List the run directories under OUT: settings, CV and OOF mIoU, training time."""
    from segarena.config import RecordsConfig
    from segarena.runs import list_runs, print_table, write_csv

    out = out if out is not None else Path(RecordsConfig().out)
    rows = list_runs(out)
    if as_csv:
        write_csv(rows, sys.stdout)
        return
    console = Console()
    if not console.is_terminal:  # piped: no terminal to wrap the wide table for
        console.width = 200
    print_table(rows, console, out)


@app.command()
@friendly_errors
def compare(
    run_a: Path = typer.Argument(..., help="The baseline run directory."),
    run_b: Path = typer.Argument(..., help="The run to compare with it."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples of the images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
) -> None:
    """Config diff, per-class IoU deltas and a paired bootstrap interval of B - A."""
    from segarena.compare import compare_runs, print_comparison

    print_comparison(compare_runs(run_a, run_b, n_boot, seed), Console(highlight=False))


@app.command()
@friendly_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `segarena train`."),
    html: Path = typer.Option(None, "--html", help="Page to write (default RUN_DIR/report.html)."),
    examples: int = typer.Option(3, "--examples", help="Best and worst images shown, each."),
) -> None:
    """Write a self-contained HTML report of a run."""
    from segarena.report import write_report

    typer.echo(f"report: {write_report(run_dir, html, examples)}")


@app.command()
@friendly_errors
def eda(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    out: Path = typer.Option(None, "--out", help="Runs folder (default: records.out)."),
    html: Path = typer.Option(None, "--html", help="Page (default OUT/<experiment>/eda.html)."),
    overrides: list[str] = SetOption,
) -> None:
    """Write a self-contained HTML page about the dataset: classes, sizes, groups, folds."""
    from segarena.config import load_config
    from segarena.eda import write_eda

    cfg = load_config(config, overrides)
    out_dir = out if out is not None else Path(cfg.records.out)
    typer.echo(f"eda: {write_eda(cfg, out_dir, html)}")


@app.command()
@friendly_errors
def audit(
    run_dir: Path = typer.Argument(..., help="A run trained with --folds all (OOF written)."),
    top: int = typer.Option(20, "--top", help="Worst images shown in report.html."),
    out: Path = typer.Option(None, "--out", help="Output folder (default RUN_DIR/audit)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override the run's config, e.g. --set data.root=/moved/data."
    ),
) -> None:
    """Rank label issues (confident learning on out-of-fold probabilities)."""
    from segarena.audit import audit_run

    out = out if out is not None else run_dir / "audit"
    manifest = audit_run(run_dir, out, top, overrides)
    images = manifest["images"]
    typer.echo(
        f"audited {len(images)} images ({len(manifest['not_audited'])} without out-of-fold "
        f"probabilities): {manifest['flagged_pixels']} pixels flagged in "
        f"{manifest['images_with_issues']} images"
    )
    typer.echo(f"ranking: {out / 'issues.csv'}\nreport: {out / 'report.html'}")


# evaluate, predict, validate-submission, tune-weights and pseudo live in cli_infer;
# importing it registers them on `app`
from segarena import cli_infer  # noqa: E402, F401

if __name__ == "__main__":
    app()
