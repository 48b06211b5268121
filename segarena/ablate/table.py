"""The ablation table: one row per arm, the baseline first.

Columns: the arm, its change, its mIoU (validation of the fold trained, or out of fold with
`--folds all`; the mean over seeds with `--seeds`), the gain over the baseline in mIoU
points with its paired-bootstrap 95% interval (segarena.ablate.stats), training speed
(summary.json `train_images_per_s`) and minutes (the folds' training seconds), and a
verdict: "helps" (interval above 0), "hurts" (below 0) or "can't tell" (it holds 0).
An unpaired arm (--allow-unpaired) has no interval and says why; an inference arm has no
training time of its own. Written as ablation.csv (numbers as plain floats; empty where
there is none) and ablation.html beside ablation.json.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from segarena.ablate.arms import BASELINE, Arm
from segarena.ablate.runner import Outcome
from segarena.ablate.stats import gain_interval, paired, pooled_miou
from segarena.config import Config
from segarena.report.html import note, page, section, table
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import RunMatrices, run_matrices
from segarena.util.files import atomic_output, write_text_atomic

COLUMNS = (
    "arm",
    "kind",
    "change",
    "miou",
    "gain_points",
    "ci_low_points",
    "ci_high_points",
    "images_per_s",
    "minutes",
    "verdict",
    "note",
)


@dataclass
class Row:
    arm: str
    kind: str  # "train" or "infer"
    change: str
    miou: float
    gain_points: float | None = None
    ci_low_points: float | None = None
    ci_high_points: float | None = None
    images_per_s: float | None = None
    minutes: float | None = None
    verdict: str = ""
    note: str = ""


INFERRED = "baseline (infer)"  # not a valid arm name, so no arm can take it


def verdict(low: float, high: float) -> str:
    return "helps" if low > 0 else "hurts" if high < 0 else "can't tell"


def schedule(config: Config) -> str:
    """What every arm gets alike: `budget 5 min` (train.budget_min) or `12 epochs`."""
    if config.train.budget_min is not None:
        return f"budget {config.train.budget_min:g} min"
    epochs = config.train.epochs
    return f"{epochs} epoch{'' if epochs == 1 else 's'}"


def build_rows(outcome: Outcome, n_boot: int = 2000) -> list[Row]:
    """The baseline's row, then one row per arm in the order given."""
    base_runs = outcome.runs[BASELINE]
    base = [run_matrices(run) for run in base_runs]
    miou = float(np.mean([pooled_miou(m.cms) for m in base]))
    rows = [Row(BASELINE, "train", "(the config as given)", miou, **_speed(base_runs))]
    if outcome.reference:
        # the training arms compare validation scores (no TTA); the inference arms compare
        # with the baseline scored as its config infers, which is this row
        miou = float(np.mean([pooled_miou(m.cms) for m in outcome.reference]))
        rows.append(Row(INFERRED, "infer", "the baseline with its own infer options", miou,
                        note="the reference of the inference arms below"))  # fmt: skip
    for arm in outcome.plan.arms:
        if arm.kind == "infer":
            rows.append(_infer_row(arm, outcome.reference, outcome.infer[arm.name], n_boot))
        else:
            rows.append(_train_row(arm, base, outcome, n_boot))
    return rows


def _speed(runs: list[Path]) -> dict[str, float]:
    """Mean over seeds of the training images/s and the folds' training minutes."""
    return {
        "images_per_s": float(np.mean([RunDir(r).summary().train_images_per_s for r in runs])),
        "minutes": float(
            np.mean([sum(f.seconds for f in RunDir(r).fold_results()) / 60 for r in runs])
        ),
    }


def _paired_row(arm: Arm, pairs: list[tuple[np.ndarray, np.ndarray]], n_boot: int, **extra) -> Row:
    gain, (low, high) = gain_interval(pairs, n_boot)
    miou = float(np.mean([pooled_miou(cms) for _, cms in pairs]))
    return Row(
        arm.name, arm.kind, arm.change, miou, 100 * gain, 100 * low, 100 * high,
        verdict=verdict(low, high), **extra,
    )  # fmt: skip


def _train_row(arm: Arm, base: list[RunMatrices], outcome: Outcome, n_boot: int) -> Row:
    runs = outcome.runs[arm.name]
    speed = _speed(runs)
    own, shared = schedule(RunDir(runs[0]).config()), schedule(outcome.plan.config(None, None))
    notes = [] if own == shared else [f"own schedule: {own}"]
    if arm.unpaired:
        miou = float(np.mean([RunDir(r).summary().miou for r in runs]))
        notes.append(
            f"unpaired: changes {', '.join(arm.unpaired)}, so its images or folds differ "
            "from the baseline's; no interval (gain = difference of the two mIoUs)"
        )
        gain = 100 * (miou - float(np.mean([pooled_miou(m.cms) for m in base])))
        return Row(arm.name, "train", arm.change, miou, gain, **speed, verdict="n/a",
                   note="; ".join(notes))  # fmt: skip
    pairs = [paired(b, run_matrices(r), arm.name) for b, r in zip(base, runs)]
    return _paired_row(arm, pairs, n_boot, **speed, note="; ".join(notes))


def _infer_row(
    arm: Arm, base: list[RunMatrices], scored: list[tuple[RunMatrices, float]], n_boot: int
) -> Row:
    pairs = [paired(b, matrices, arm.name) for b, (matrices, _) in zip(base, scored)]
    minutes = float(np.mean([seconds for _, seconds in scored])) / 60
    text = f"no training: the baseline's checkpoints, scored in {minutes:.2f} min"
    return _paired_row(arm, pairs, n_boot, note=text)


def caption(outcome: Outcome) -> str:
    """What the numbers are: the schedule every arm got, the metric, seeds, interval."""
    images = len(run_matrices(outcome.runs[BASELINE][0]).ids)
    seeds = len(outcome.seeds)
    metric = "out-of-fold mIoU (all folds)" if outcome.all_folds else "validation mIoU"
    over = "images and seeds" if seeds > 1 else "images"
    return (
        f"{schedule(outcome.plan.config(None, None))} per arm; {metric} on {images} images"
        f"{f', mean of {seeds} seeds' if seeds > 1 else ''}; gain over the baseline in mIoU "
        f"points, 95% interval from a paired bootstrap over {over}; helps / hurts when the "
        "interval excludes 0, else can't tell"
    )


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.4g}"


def _interval(row: Row) -> str:
    if row.ci_low_points is None or row.ci_high_points is None:
        return "n/a" if row.arm not in (BASELINE, INFERRED) else ""
    return f"[{row.ci_low_points:+.2f}, {row.ci_high_points:+.2f}]"


def shown(row: Row) -> list[str]:
    """A row's cells as text, in HEADERS order."""
    return [
        row.arm,
        row.change,
        f"{row.miou:.4f}",
        _number(row.gain_points, signed=True),
        _interval(row),
        _number(row.images_per_s),
        "" if row.minutes is None else f"{row.minutes:.2f}",
        row.verdict,
    ]


HEADERS = ("arm", "change", "mIoU", "gain (pts)", "95% interval", "images/s", "minutes", "verdict")


def print_table(rows: list[Row], title: str, text: str, console: Console) -> None:
    """The table in the terminal, its caption and the rows' notes below it."""
    grid = Table(title=title, caption=text)
    for header in HEADERS:
        grid.add_column(
            header, overflow="fold", justify="left" if header in HEADERS[:2] else "right"
        )
    for row in rows:
        grid.add_row(*shown(row))
    console.print(grid)
    for row in rows:
        if row.note:
            console.print(f"note: {row.arm}: {row.note}", soft_wrap=True)


def write_csv(rows: list[Row], path: Path) -> None:
    """ablation.csv: COLUMNS, numbers as plain floats rounded to 6 decimals, empty if none."""
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            values = asdict(row)
            writer.writerow(
                {
                    k: "" if v is None else round(v, 6) if isinstance(v, float) else v
                    for k, v in values.items()
                }
            )


def write_html(rows: list[Row], path: Path, title: str, text: str) -> None:
    """ablation.html: the same table as a self-contained page."""
    cells = [[*shown(row), row.note] for row in rows]
    body = section("ablation", title, note(text), table([*HEADERS, "note"], cells))
    write_text_atomic(path, page(title, [body]))


def write_report(outcome: Outcome, n_boot: int, console: Console) -> tuple[Path, Path]:
    """Score the arms, print the table, write ablation.csv and ablation.html."""
    rows = build_rows(outcome, n_boot)
    root = outcome.ablation.root
    title = f"Ablation {root.name} ({outcome.plan.config(None, None).experiment})"
    text = caption(outcome)
    print_table(rows, title, text, console)
    write_csv(rows, root / "ablation.csv")
    write_html(rows, root / "ablation.html", title, text)
    return root / "ablation.csv", root / "ablation.html"
