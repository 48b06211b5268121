"""`segarena runs`: one row per run directory under a runs folder, as a table or CSV.

Everything comes from the run directories (run.json, config.yaml, env.json, summary.json,
fold_k/metrics.jsonl), which every run has. MLflow holds the same numbers when
records.mlflow is on, but it is optional, so the listing does not depend on it.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from segarena.errors import UserError
from segarena.records.leaderboard import run_scores
from segarena.run_dir.layout import RUN, RunDir

# (CSV column, table header); the CSV holds raw values, the table formatted ones
COLUMNS = [
    ("experiment", "experiment"),
    ("run_id", "run"),
    ("date", "date"),
    ("status", "status"),
    ("arch", "arch"),
    ("encoder", "encoder"),
    ("image_size", "size"),
    ("loss", "loss"),
    ("lr", "lr"),
    ("epochs", "epochs"),
    ("folds", "folds"),
    ("cv_miou", "CV mIoU ± std"),
    ("cv_miou_std", None),  # shown in the CV column
    ("oof_miou", "OOF mIoU"),
    # segarena lb: the run's latest leaderboard score; the table shows "public / private"
    # in one column (only when a run has one); lb_shared: the score is of an ensemble
    # holding the run (marked "ens")
    ("lb_public", "LB"),
    ("lb_private", None),
    ("lb_shared", None),
    ("train_seconds", "train time"),
    ("path", None),
]


def find_runs(out: Path) -> list[Path]:
    """Run directories (holding run.json) in OUT/<experiment>/<run>, or in OUT itself when
    OUT is one experiment's folder."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(
            f"runs: folder {out} does not exist; expected the runs folder (records.out, "
            "default 'runs') that `segarena train` writes to"
        )
    found = {p.parent for p in [*out.glob(f"*/*/{RUN}"), *out.glob(f"*/{RUN}")]}
    return sorted(found)


def _date(run: RunDir, env: dict[str, Any]) -> str:
    """When the run started (env.json), else when run.json was last written."""
    try:
        started = datetime.strptime(env["started"], "%Y-%m-%dT%H:%M:%S%z")
    except (KeyError, TypeError, ValueError):
        started = datetime.fromtimestamp(run.info_path.stat().st_mtime)
    return started.strftime("%Y-%m-%d %H:%M")


def _loss(config: dict[str, Any]) -> str:
    """Loss terms as 'ce + 0.5*dice' (a weight of 1 is left out)."""
    terms = config.get("loss", {}).get("terms", [])
    return " + ".join(
        t["name"] if t.get("weight", 1.0) == 1.0 else f"{t['weight']:g}*{t['name']}" for t in terms
    )


def run_row(run_dir: Path, lb: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run's settings and scores; scores are None for an unfinished run. `lb` is the
    run's leaderboard entry (segarena.records.leaderboard.run_scores), if scored."""
    lb = lb or {}
    run = RunDir(run_dir)
    config = run.raw_config()  # not validated: older runs are listed too
    info, env, summary = run.info(), run.env(), run.summary()
    model, data, split = config.get("model", {}), config.get("data", {}), config.get("split", {})
    size = data.get("image_size")
    n_folds = 1 if split.get("method") in ("holdout", "predefined") else split.get("n_folds")
    seconds = sum(record.seconds for record in run.history())
    return {
        "experiment": info.experiment,
        "run_id": info.run_id,
        "date": _date(run, env),
        "status": ("finished" if summary else "unfinished") + (" debug" * info.debug),
        "arch": model.get("arch"),
        "encoder": model.get("encoder"),
        "image_size": "native" if size is None else "x".join(str(v) for v in size),
        "loss": _loss(config),
        "lr": config.get("optimizer", {}).get("lr"),
        "epochs": _epochs(config.get("train", {})),
        "folds": " ".join(str(k) for k in info.folds) + (f" of {n_folds}" if n_folds else ""),
        "cv_miou": summary.miou_mean if summary else None,
        "cv_miou_std": summary.miou_std if summary else None,
        "oof_miou": summary.miou if summary else None,
        "lb_public": lb.get("public"),
        "lb_private": lb.get("private"),
        "lb_shared": lb.get("shared"),
        "train_seconds": round(seconds, 1),
        "path": str(run_dir),
    }


def _epochs(train: dict[str, Any]) -> Any:
    """The epoch count, or the budget that chose it (train.budget_min)."""
    return train.get("epochs") or (
        f"{train['budget_min']:g} min" if train.get("budget_min") else None
    )


def list_runs(out: Path) -> list[dict[str, Any]]:
    """A row per run under `out`, oldest first within each experiment."""
    scores = run_scores(out)
    rows = [run_row(p, scores.get(str(p.resolve()))) for p in find_runs(out)]
    return sorted(rows, key=lambda r: (r["experiment"], r["date"], r["run_id"]))


def write_csv(rows: list[dict[str, Any]], stream: IO[str]) -> None:
    """Rows as CSV with a header (csv module quoting; empty cells for missing values)."""
    writer = csv.DictWriter(stream, fieldnames=[key for key, _ in COLUMNS])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row[key]
    if key == "cv_miou":
        return "" if value is None else f"{value:.4f} ± {row['cv_miou_std']:.4f}"
    if key == "oof_miou":
        return "" if value is None else f"{value:.4f}"
    if key == "lb_public":
        if value is None:
            return ""
        private = row["lb_private"]
        shown = f"{value:.4f}" + ("" if private is None else f" / {private:.4f}")
        return shown + (" ens" if row["lb_shared"] else "")
    if key == "train_seconds":
        return _duration(value)
    return "" if value is None else str(value)


def print_table(rows: list[dict[str, Any]], console: Console, out: Path) -> None:
    """Rows as a rich table (train time: the epochs' training seconds, validation left out)."""
    if not rows:
        console.print(f"no run directories under {out}")
        return
    table = Table(title=f"Runs in {out}")
    scored = any(row["lb_public"] is not None for row in rows)
    shown = [k for k, header in COLUMNS if header is not None and (scored or k != "lb_public")]
    for key, header in COLUMNS:
        if key in shown:
            numeric = key in ("lr", "epochs", "cv_miou", "oof_miou", "lb_public", "train_seconds")
            table.add_column(header, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(_cell(key, row) for key in shown))
    console.print(table)
