"""The record-reading commands: runs, compare, report, eda and audit."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from segarena.cli.common import SetOption, friendly_errors


@friendly_errors
def runs(
    out: Path = typer.Argument(None, help="Runs folder (default: records.out, 'runs')."),
    as_csv: bool = typer.Option(False, "--csv", help="Write CSV to stdout instead of a table."),
) -> None:
    """List the run directories under OUT: settings, CV and OOF mIoU, LB scores, train time."""
    from segarena.config import RecordsConfig
    from segarena.report.runs_table import list_runs, print_table, write_csv

    out = out if out is not None else Path(RecordsConfig().out)
    rows = list_runs(out)
    if as_csv:
        write_csv(rows, sys.stdout)
        return
    console = Console()
    if not console.is_terminal:  # piped: no terminal to wrap the wide table for
        console.width = 200
    print_table(rows, console, out)


@friendly_errors
def compare(
    run_a: Path = typer.Argument(..., help="The baseline run directory."),
    run_b: Path = typer.Argument(..., help="The run to compare with it."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples of the images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
) -> None:
    """Config diff, per-class IoU deltas and a paired bootstrap interval of B - A."""
    from segarena.report.compare import compare_runs, print_comparison

    print_comparison(compare_runs(run_a, run_b, n_boot, seed), Console(highlight=False))


@friendly_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `segarena train`."),
    html: Path = typer.Option(None, "--html", help="Page to write (default RUN_DIR/report.html)."),
    examples: int = typer.Option(3, "--examples", help="Best and worst images shown, each."),
) -> None:
    """Write a self-contained HTML report of a run."""
    from segarena.report.run_page import write_report

    typer.echo(f"report: {write_report(run_dir, html, examples)}")


@friendly_errors
def eda(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    out: Path = typer.Option(None, "--out", help="Runs folder (default: records.out)."),
    html: Path = typer.Option(None, "--html", help="Page (default OUT/<experiment>/eda.html)."),
    overrides: list[str] = SetOption,
) -> None:
    """Write a self-contained HTML page about the dataset: classes, sizes, groups, folds."""
    from segarena.config import load_config
    from segarena.report.eda import write_eda

    cfg = load_config(config, overrides)
    out_dir = out if out is not None else Path(cfg.records.out)
    typer.echo(f"eda: {write_eda(cfg, out_dir, html)}")


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
    from segarena.labels.audit import audit_run

    out = out if out is not None else run_dir / "audit"
    manifest = audit_run(run_dir, out, top, overrides)
    images = manifest["images"]
    typer.echo(
        f"audited {len(images)} images ({len(manifest['not_audited'])} without out-of-fold "
        f"probabilities): {manifest['flagged_pixels']} pixels flagged in "
        f"{manifest['images_with_issues']} images"
    )
    typer.echo(f"ranking: {out / 'issues.csv'}\nreport: {out / 'report.html'}")
