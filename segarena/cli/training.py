"""The training commands: init, train and split."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from segarena.cli.common import SetOption, friendly_errors, parse_seeds
from segarena.errors import UserError


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
    force: bool = typer.Option(
        False, "--force", help="Train even when the store holds this experiment (a repeat)."
    ),
    overrides: list[str] = SetOption,
) -> None:
    """Train a model (one fold, or every fold with --folds all)."""
    # SIGTERM (a scheduler's pre-emption, `kill`) stops like Ctrl-C: the run keeps its
    # saved epochs and says how to resume
    signal.signal(signal.SIGTERM, _stop)
    from segarena.config import load_config
    from segarena.train.distributed import is_rank_zero
    from segarena.train.run import fit, fit_seeds
    from segarena.train.run import resume as resume_run

    if folds not in (None, "all"):
        raise UserError(f"--folds {folds!r}: expected 'all' (use --fold N for one fold)")
    if resume is not None:
        if overrides:
            raise UserError("--set cannot change a resumed run; start a new run instead")
        if config is not None or seeds is not None:
            raise UserError(
                "--resume continues a run with its own config.yaml: give no CONFIG or --seeds"
            )
        _print_summary(resume_run(resume).path)
        return
    if config is None:
        raise UserError("train: give a CONFIG file, or --resume RUN_DIR")
    cfg = load_config(config, overrides)
    chosen = "all" if folds == "all" else check_fold(cfg, fold)
    if seeds is None:
        run = fit(cfg, out, folds=chosen, debug=debug, force=force)
        _print_summary(run.path)
        return
    runs = fit_seeds(cfg, parse_seeds(seeds), out, folds=chosen, debug=debug, force=force)
    for run in runs:
        _print_summary(run.path)
    if is_rank_zero():  # the other processes of a job (train.devices) stay quiet
        paths = " ".join(str(run.path) for run in runs)
        typer.echo(f"seed ensemble: segarena predict {paths} --images DIR ...")


def check_fold(config, fold: int | None) -> int:
    """--fold N (default 0), checked against the config's split."""
    count = config.split.fold_count
    fold = 0 if fold is None else fold
    if not 0 <= fold < count:
        raise UserError(
            f"--fold {fold}: expected 0..{count - 1} for split.method="
            f"{config.split.method} with {count} fold(s)"
        )
    return fold


def _print_summary(run_dir: Path) -> None:
    from segarena.run_dir.layout import RunDir
    from segarena.train.distributed import is_rank_zero

    if not is_rank_zero():  # the other processes of a job (train.devices) stay quiet
        return
    summary = RunDir(run_dir).summary()
    folds = ", ".join(f"{f.fold}: {f.miou:.4f}" for f in summary.folds)
    typer.echo(
        f"mIoU {summary.miou:.4f} (folds {folds}; mean {summary.miou_mean:.4f} "
        f"± {summary.miou_std:.4f})"
    )
    if summary.pseudo:  # data.pseudo: did the pseudo-labels help?
        from segarena.train.pseudo_gain import gain_line

        typer.echo(gain_line(summary))
    typer.echo(f"run directory: {run_dir}")


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


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


@friendly_errors
def init(
    data: Path = typer.Argument(
        ..., help="The dataset folder: COCO jsons, or image + mask folders."
    ),
    coco: Path = typer.Option(
        None, "--coco", help="The COCO json (file_name relative to its folder)."
    ),
    budget_min: float = typer.Option(
        None,
        "--budget-min",
        help="Training minutes: train.budget_min, and the input size a speed probe fits to it.",
    ),
    out: Path = typer.Option(Path("exp.yaml"), "--out", help="The config to write."),
    name: str = typer.Option(None, "--name", help="experiment (default: the folder's name)."),
    device: str = typer.Option("auto", "--device", help="The device to size the input for."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it exists."),
) -> None:
    """Look at a dataset and write a commented config that runs as written."""
    from segarena.init import init_config

    if budget_min is not None and budget_min <= 0:
        raise UserError(f"--budget-min {budget_min:g}: expected minutes above 0")
    lines = init_config(data, out, coco=coco, budget_min=budget_min, name=name, device=device,
                        force=force, command=f"segarena init {data}")  # fmt: skip
    for line in lines:
        typer.echo(line)
    typer.echo(f"wrote {out}; next: segarena split {out}, then segarena train {out}")
