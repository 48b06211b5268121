"""RunDir: the one owner of a run directory's layout and of reading and writing its files.

The tree of a run directory is drawn once, in ARCHITECTURE.md ("Run-directory contract");
this class names each of its files.

A run describes itself: evaluate, predict, audit and the reports need only its directory.
The JSON records read and write as the typed models of segarena.run_dir.schema (RunInfo,
Summary, FoldResult, Plan, EpochRecord); nothing else names these files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from segarena.config import Config, config_from_dict, dump_config, load_config
from segarena.data.folds import read_folds
from segarena.data.readers import Sample, read_samples
from segarena.errors import UserError
from segarena.run_dir.schema import EpochRecord, FoldResult, Plan, Record, RunInfo, Summary
from segarena.util.files import append_jsonl, read_jsonl, write_json_atomic, write_text_atomic

# The layout version this segarena writes into run.json. Runs written before the version
# existed (no `format` key) have the same layout and read as version 1; a run from a newer
# segarena is refused rather than misread. The typed records (run_dir.schema) kept every
# file's key names, so their files are still version 1.
FORMAT = 1

CONFIG, FOLDS, RUN, ENV, SUMMARY = (
    "config.yaml",
    "folds.csv",
    "run.json",
    "env.json",
    "summary.json",
)
METRICS, RESULT, PLAN = "metrics.jsonl", "result.json", "plan.json"  # in fold_<k>/
OOF = "oof"  # fold_<k>/oof/<id>.npy

R = TypeVar("R", bound=Record)


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

    @property
    def info_path(self) -> Path:
        return self.path / RUN

    @property
    def env_path(self) -> Path:
        return self.path / ENV

    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold_{fold}"

    def checkpoint_path(self, fold: int, kind: str) -> Path:
        """fold_<k>/<kind>.ckpt: best, last, ema or swa."""
        return self.fold_dir(fold) / f"{kind}.ckpt"

    def oof_dir(self, fold: int) -> Path:
        """fold_<k>/oof/: the fold's out-of-fold probabilities, one <id>.npy per image."""
        return self.fold_dir(fold) / OOF

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
        if self.info_path.is_file():  # the version first: a newer run.json may differ
            version = _read_json(self.info_path).get("format", 1)
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

    def info(self) -> RunInfo:
        """run.json (UserError when missing: not a run directory)."""
        if not self.info_path.is_file():
            raise UserError(f"{self.path}: not a segarena run directory (no {RUN})")
        return _read_record(self.info_path, RunInfo)

    def env(self) -> dict[str, Any]:
        """env.json ({} when missing)."""
        return _read_json(self.env_path)

    def summary(self) -> Summary | None:
        """summary.json (None while the run is unfinished)."""
        return _read_record(self.summary_path, Summary) if self.summary_path.is_file() else None

    def history(self, fold: int | None = None) -> list[EpochRecord]:
        """The epoch records of metrics.jsonl: one fold's, or every fold's in fold order."""
        folds = [fold] if fold is not None else [k for k, _ in self.fold_dirs()]
        return [record for k in folds for record in self._history(k)]

    def _history(self, fold: int) -> list[EpochRecord]:
        path = self.fold_dir(fold) / METRICS
        return [_validated(line, EpochRecord, path) for line in read_jsonl(path)]

    def fold_result(self, fold: int) -> FoldResult | None:
        """fold_<k>/result.json (None while the fold is unfinished)."""
        path = self.fold_dir(fold) / RESULT
        return _read_record(path, FoldResult) if path.is_file() else None

    def fold_results(self) -> list[FoldResult]:
        """Every finished fold's result.json (best epoch, mIoU, confusion matrix), by fold."""
        found = [self.fold_result(k) for k, _ in self.fold_dirs()]
        return [result for result in found if result is not None]

    def plan(self, fold: int) -> Plan | None:
        """fold_<k>/plan.json, train.budget_min's plan (None before it is made)."""
        path = self.fold_dir(fold) / PLAN
        return _read_record(path, Plan) if path.is_file() else None

    def samples_and_folds(self, config: Config) -> tuple[list[Sample], list[int]]:
        """The run's samples (its data, read and checked again) and their folds.csv folds."""
        samples = read_samples(config.data, config.split)
        return samples, read_folds(self.folds_path, samples, config.split)

    # writing -----------------------------------------------------------------------------
    def write_config(self, config: Config) -> None:
        write_text_atomic(self.config_path, dump_config(config))

    def write_info(self, info: RunInfo) -> None:
        write_json_atomic(self.info_path, {**info.to_json(), "format": FORMAT})

    def write_env(self, env: dict[str, Any]) -> None:
        write_json_atomic(self.env_path, env)

    def write_summary(self, summary: Summary) -> None:
        write_json_atomic(self.summary_path, summary.to_json())

    def write_fold_result(self, fold: int, result: FoldResult) -> None:
        write_json_atomic(self.fold_dir(fold) / RESULT, result.to_json())

    def write_plan(self, fold: int, plan: Plan) -> None:
        write_json_atomic(self.fold_dir(fold) / PLAN, plan.to_json())

    def append_metrics(self, fold: int, record: EpochRecord) -> None:
        """One epoch's line at the end of fold_<k>/metrics.jsonl."""
        append_jsonl(self.fold_dir(fold) / METRICS, record.to_json())

    def keep_metrics(self, fold: int, through_epoch: int) -> None:
        """Drop the metrics.jsonl lines after epoch `through_epoch` (a resume trains them
        again)."""
        kept = [r for r in self._history(fold) if r.epoch <= through_epoch]
        lines = "".join(json.dumps(r.to_json()) + "\n" for r in kept)
        write_text_atomic(self.fold_dir(fold) / METRICS, lines)


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


def _validated(data: Any, model: type[R], path: Path) -> R:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'the record'}: {err['msg']}"
            for err in exc.errors()
        )
        raise UserError(
            f"{path}: {problems}; expected a {model.__name__} record as segarena writes it"
        ) from None


def _read_record(path: Path, model: type[R]) -> R:
    return _validated(_read_json(path), model, path)
