"""Helpers shared by the test modules: the CLI run in-process, a run's files read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from click.testing import Result


def run_cli(*args: Any) -> Result:
    """`segarena ARGS...` in-process; every argument is str()-ed (paths, numbers).

    The click Result holds `exit_code`, `output` (stdout and stderr interleaved, as a user
    sees them) and `exception`.
    """
    from typer.testing import CliRunner  # imported here: helpers of file-only tests stay light

    from segarena.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(path: Path, config: dict) -> Path:
    """`config` as YAML at `path`; returns the path."""
    path.write_text(yaml.safe_dump(config))
    return path


def only_run_dir(out: Path, experiment: str = "tiny") -> Path:
    """The single run directory under OUT/<experiment> (asserts there is exactly one)."""
    runs = [p for p in (out / experiment).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def history(run_dir: Path, fold: int = 0, keys: tuple[str, ...] | None = None) -> list[dict]:
    """The epoch records of fold_<fold>/metrics.jsonl, in order; only `keys` when given
    (e.g. to compare two runs without their timings)."""
    lines = (Path(run_dir) / f"fold_{fold}" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if keys is not None:
        records = [{k: v for k, v in r.items() if k in keys} for r in records]
    return records


def miou_of(matrix: np.ndarray) -> tuple[float, list[float | None]]:
    """(mIoU, per-class IoU) of a confusion matrix [C, C], written out here rather than
    taken from segarena.metrics: the IoU of each class present in the target or the
    prediction, averaged over those classes (None for a class in neither)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    ious: list[float | None] = []
    for c in range(len(matrix)):
        union = matrix[c, :].sum() + matrix[:, c].sum() - matrix[c, c]
        ious.append(float(matrix[c, c] / union) if union > 0 else None)
    defined = [v for v in ious if v is not None]
    return float(sum(defined) / len(defined)), ious
