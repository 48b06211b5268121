"""Whether runs used the same split: their folds.csv, byte for byte.

Tools that pair or pool runs image by image (tune-weights' out-of-fold ensembles, an
ablation's arms against the baseline, a pseudo-labelled run's gain over its source run)
need runs of one split; two runs of an experiment share OUT/<experiment>/folds.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segarena.errors import UserError
from segarena.run_dir.layout import FOLDS


def same_folds(run_a: Path, run_b: Path) -> bool:
    """Whether both runs hold a folds.csv and the two are the same bytes."""
    a, b = Path(run_a) / FOLDS, Path(run_b) / FOLDS
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def check_same_folds(
    run_dirs: Sequence[Path], expected: str, context: str = "", reference: str = ""
) -> None:
    """UserError unless every run holds the first run's folds.csv, byte for byte.

    The message names the file that differs (or is missing) and the first run's, starts
    with `context` (e.g. "arm 'lr': ") and ends with `expected` (why the caller needs one
    split); `reference` says what the first run is (e.g. "the baseline's ")."""
    first = Path(run_dirs[0]) / FOLDS
    if not first.is_file():
        raise UserError(f"{context}{run_dirs[0]}: no {FOLDS}; expected a run directory")
    for run_dir in run_dirs[1:]:
        path = Path(run_dir) / FOLDS
        if not path.is_file():
            raise UserError(f"{context}{run_dir}: no {FOLDS}; expected a run directory")
        if not same_folds(run_dirs[0], run_dir):
            raise UserError(f"{context}{path}: differs from {reference}{first}; {expected}")
