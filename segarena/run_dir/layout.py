"""RunDir: the one owner of a run directory's layout and of reading and writing its files.

OUT/<experiment>/<run_id>/
    config.yaml      the resolved config (every default filled in)
    folds.csv        the split the run used (a copy of OUT/<experiment>/folds.csv)
    run.json         run id, experiment, folds to train, debug, MLflow run id, pseudo
                     folders, weights, and `format` (the layout version below)
    env.json         versions, git state, device, seed, argv, start time, weights
    summary.json     written last: pooled and per-fold mIoU, per-class IoU, budget
    fold_<k>/        best.ckpt, last.ckpt, [ema.ckpt, swa.ckpt, top/epoch_<n>.ckpt],
                     metrics.jsonl, plan.json, result.json, per_image_cm.npy,
                     per_image_ids.json, oof/<id>.npy
    eval_*.json      written by `segarena evaluate`

A run describes itself: evaluate, predict, audit and the reports need only its directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from segarena.config import Config, config_from_dict, dump_config, load_config
from segarena.data.folds import read_folds
from segarena.data.readers import Sample, read_samples
from segarena.errors import UserError
from segarena.util.files import read_jsonl, write_json_atomic, write_text_atomic

# The layout version this segarena writes into run.json. Runs written before the version
# existed (no `format` key) have the same layout and read as version 1; a run from a newer
# segarena is refused rather than misread.
FORMAT = 1

CONFIG, FOLDS, RUN, ENV, SUMMARY = (
    "config.yaml",
    "folds.csv",
    "run.json",
    "env.json",
    "summary.json",
)
METRICS, RESULT = "metrics.jsonl", "result.json"  # in fold_<k>/


class RunDir:
    """A run directory: its paths, and its files read (validated) and written (atomically)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, out: Path, experiment: str, debug: bool) -> RunDir:
        """A fresh OUT/<experiment>/<timestamp> folder (suffixed if two start in one second)."""
        stamp = time.strftime("%Y%m%d-%H%M%S") + ("-debug" if debug else "")
        base = Path(out) / experiment
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir()
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a run directory under {base}")

    # paths -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def folds_path(self) -> Path:
        return self.path / FOLDS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold_{fold}"

    def fold_dirs(self) -> list[tuple[int, Path]]:
        """(k, fold_k/) of every fold folder, by fold number."""
        found = []
        for path in self.path.glob("fold_*"):
            suffix = path.name.removeprefix("fold_")
            if path.is_dir() and suffix.isdigit():
                found.append((int(suffix), path))
        return sorted(found)

    # reading -----------------------------------------------------------------------------
    def check(self, needs: tuple[str, ...] = (RUN, CONFIG)) -> RunDir:
        """UserError unless this is a run directory (holding `needs`) of a readable format."""
        missing = [name for name in needs if not (self.path / name).is_file()]
        if missing:
            raise UserError(
                f"{self.path}: not a segarena run directory (expected {' and '.join(needs)}, "
                f"as written by `segarena train`; missing {', '.join(missing)})"
            )
        if (self.path / RUN).is_file():
            version = self.info().get("format", 1)
            if not isinstance(version, int) or version > FORMAT:
                raise UserError(
                    f"{self.path / RUN}: run format {version!r}, written by a newer segarena; "
                    f"this one reads formats up to {FORMAT}: upgrade segarena to read it"
                )
        return self

    def config(self, overrides: list[str] | None = None) -> Config:
        """The run's resolved config, validated (with `--set` overrides when given)."""
        self.check((CONFIG,))
        if overrides:
            return load_config(self.config_path, overrides)
        return config_from_dict(self.raw_config(), source=str(self.config_path))

    def raw_config(self) -> dict[str, Any]:
        """config.yaml as plain YAML, not validated: a run written by an older segarena
        is still listed and compared when the config schema has moved on."""
        if not self.config_path.is_file():
            raise UserError(f"{self.path}: not a segarena run directory (no {CONFIG})")
        config = yaml.safe_load(self.config_path.read_text() or "{}") or {}
        if not isinstance(config, dict):
            raise UserError(f"{self.config_path}: expected a mapping of settings")
        return config

    def info(self) -> dict[str, Any]:
        """run.json ({} when missing)."""
        return _read_json(self.path / RUN)

    def env(self) -> dict[str, Any]:
        """env.json ({} when missing)."""
        return _read_json(self.path / ENV)

    def summary(self) -> dict[str, Any]:
        """summary.json ({} while the run is unfinished)."""
        return _read_json(self.summary_path)

    def history(self, fold: int | None = None) -> list[dict[str, Any]]:
        """The epoch records of metrics.jsonl: one fold's, or every fold's in fold order."""
        if fold is not None:
            return read_jsonl(self.fold_dir(fold) / METRICS)
        return [record for _, path in self.fold_dirs() for record in read_jsonl(path / METRICS)]

    def fold_results(self) -> list[dict[str, Any]]:
        """Every finished fold's result.json (best epoch, mIoU, confusion matrix), by fold."""
        return [
            _read_json(path / RESULT) for _, path in self.fold_dirs() if (path / RESULT).is_file()
        ]

    def samples_and_folds(self, config: Config) -> tuple[list[Sample], list[int]]:
        """The run's samples (its data, read and checked again) and their folds.csv folds."""
        samples = read_samples(config.data, config.split)
        return samples, read_folds(self.folds_path, samples, config.split)

    # writing -----------------------------------------------------------------------------
    def write_config(self, config: Config) -> None:
        write_text_atomic(self.config_path, dump_config(config))

    def write_info(self, info: dict[str, Any]) -> None:
        write_json_atomic(self.path / RUN, {**info, "format": FORMAT})

    def write_env(self, env: dict[str, Any]) -> None:
        write_json_atomic(self.path / ENV, env)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path}: not valid JSON ({exc}); expected a file written by segarena"
        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
