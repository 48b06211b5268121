"""An experiment's fingerprint: what a run learns from, hashed, so that a team's store can
tell a repeat of an experiment from a new one (segarena.records.team).

Two runs have the same fingerprint when their resolved configs match once the settings
that do not change what is learned are left out (where records go, the experiment's
name, the data folder's absolute path), they train the same folds (and both are, or are
not, --debug runs), and their data matches: the same files by path relative to
data.root, with the same sizes and modification times (or contents, with
records.fingerprint_data: hash), split into the same folds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from segarena.config import Config
from segarena.config.diff import NOT_LEARNED, without
from segarena.data.folds import make_folds, read_folds
from segarena.data.readers import Sample
from segarena.util.files import file_sha256


def _sha256(data: Any) -> str:
    """sha256 of a JSON value (keys sorted, so dict order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def config_part(config: Config) -> dict[str, Any]:
    """The resolved config without the settings that do not change what is learned
    (config.diff.NOT_LEARNED), and without data.root: `data_part` fingerprints the data
    itself, by paths relative to data.root, so where a teammate keeps it does not count."""
    return without(config.model_dump(mode="json"), (*NOT_LEARNED, "data.root"))


def _relative(path: Path, root: Path) -> str:
    """`path` relative to data.root (teammates keep the data in different folders)."""
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def data_files(config: Config, samples: Iterable[Sample]) -> list[Path]:
    """Every file the samples are read from: images, masks, and the sources' COCO json and
    pairs files."""
    root = Path(config.data.root)
    files = {s.image_path for s in samples} | {s.mask_path for s in samples if s.mask_path}
    for source in config.data.sources:
        files |= {root / name for name in (source.coco, source.pairs) if name}
    return sorted(Path(f) for f in files)


def data_part(config: Config, samples: list[Sample], folds: list[int]) -> dict[str, Any]:
    """The data's fingerprint: each file's path, size and mtime (or content hash), and each
    sample's fold."""
    root = Path(config.data.root).resolve()
    by_content = config.records.fingerprint_data == "hash"
    files = []
    for path in data_files(config, samples):
        stat = path.stat()
        seal = file_sha256(path) if by_content else stat.st_mtime_ns
        files.append((_relative(path, root), stat.st_size, seal))
    return {
        "mode": config.records.fingerprint_data,
        "files": _sha256(files),
        "file_count": len(files),
        "folds": _sha256([[s.id, f] for s, f in zip(samples, folds)]),
    }


def experiment_folds(config: Config, out: Path, samples: list[Sample]) -> list[int]:
    """The folds a new run of `config` will use: OUT/<experiment>/folds.csv when it exists,
    else the ones it will write (made here, in memory: nothing is written yet)."""
    path = Path(out) / config.experiment / "folds.csv"
    if path.exists():
        return read_folds(path, samples, config.split)
    return make_folds(samples, config.split, config.data.num_classes)


def fingerprint(
    config: Config, out: Path, samples: list[Sample], folds_to_train: list[int], debug: bool
) -> dict[str, Any]:
    """{"sha256": the experiment's fingerprint, and its parts}: stored in run.json and as
    the MLflow tag segarena.fingerprint."""
    folds = experiment_folds(config, out, samples)
    parts = {
        "config": _sha256(config_part(config)),
        "data": data_part(config, samples, folds),
        "folds_trained": sorted(folds_to_train),
        "debug": debug,
    }
    return {"sha256": _sha256(parts), **parts}
