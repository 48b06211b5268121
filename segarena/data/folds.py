"""Validation folds: for every sample, the fold that validates it.

make_folds returns one int per sample: the fold whose model is validated on it, or -1
(ALWAYS_TRAIN) for samples that every model trains on (the train part of a holdout or
predefined split). The folds are written to folds.csv once per experiment and reused by
every later run, so that runs, ensembles and out-of-fold predictions agree on the split.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit

from segarena.config import SplitConfig
from segarena.data.readers import Sample
from segarena.errors import UserError
from segarena.util.files import atomic_output, file_lock
from segarena.util.text import examples

ALWAYS_TRAIN = -1
GROUPED = ("group", "stratified_group")


def make_folds(samples: list[Sample], split: SplitConfig, num_classes: int) -> list[int]:
    """The validation fold of every sample (-1: always trained on), seeded by split.seed."""
    if len(samples) < 2:
        raise UserError(f"split: {len(samples)} sample(s) cannot be split; need at least 2")
    if split.method == "predefined":
        return _predefined(samples)
    if split.method == "holdout":
        return _holdout(samples, split)
    n = len(samples)
    x = np.zeros((n, 1))  # the splitters only look at labels and groups
    if split.method == "kfold":
        _enough(n, split.n_folds, "samples", split)
        splits = KFold(split.n_folds, shuffle=True, random_state=split.seed).split(x)
        return _assign(n, splits)
    stratifier = MultilabelStratifiedKFold(split.n_folds, shuffle=True, random_state=split.seed)
    presence = _presence(samples, num_classes)
    if split.method == "stratified":
        _enough(n, split.n_folds, "samples", split)
        return _assign(n, stratifier.split(x, presence))
    names, group_index = np.unique(_groups(samples), return_inverse=True)
    _enough(len(names), split.n_folds, "groups", split)
    if split.method == "group":
        splitter = GroupKFold(split.n_folds, shuffle=True, random_state=split.seed)
        return _assign(n, splitter.split(x, groups=group_index))
    # stratified_group: stratify whole groups on the classes any of their samples holds.
    # A group counts once however many samples it has, which keeps rare classes spread
    # over the folds; fold sizes in samples may then differ when group sizes do.
    group_presence = np.zeros((len(names), num_classes), dtype=np.int64)
    np.maximum.at(group_presence, group_index, presence)
    group_folds = _assign(len(names), stratifier.split(np.zeros((len(names), 1)), group_presence))
    return [group_folds[g] for g in group_index]


def _groups(samples: list[Sample]) -> list[str]:
    return [s.group or s.id for s in samples]


def _enough(count: int, n_folds: int, what: str, split: SplitConfig) -> None:
    if count < n_folds:
        raise UserError(
            f"split.n_folds={n_folds} but the data has only {count} {what} "
            f"(split.method={split.method}); lower split.n_folds"
        )


def _assign(n: int, splits) -> list[int]:
    folds = np.full(n, ALWAYS_TRAIN)
    for fold, (_, val) in enumerate(splits):
        folds[val] = fold
    return folds.tolist()


def _presence(samples: list[Sample], num_classes: int) -> np.ndarray:
    """n_samples x num_classes multi-hot matrix of the classes each sample holds."""
    presence = np.zeros((len(samples), num_classes), dtype=np.int64)
    for row, sample in enumerate(samples):
        bad = [c for c in sample.classes if not 0 <= c < num_classes]
        if bad:
            raise UserError(f"sample {sample.id}: class ids {bad} outside 0..{num_classes - 1}")
        presence[row, list(sample.classes)] = 1
    return presence


def _predefined(samples: list[Sample]) -> list[int]:
    folds = [0 if s.role == "val" else ALWAYS_TRAIN for s in samples]
    if 0 not in folds:
        raise UserError(
            "split.method=predefined but no data source has role: val; "
            "set role: val on the validation source in data.sources"
        )
    if ALWAYS_TRAIN not in folds:
        raise UserError(
            "split.method=predefined but every data source has role: val; "
            "give the training sources role: train"
        )
    return folds


def _holdout(samples: list[Sample], split: SplitConfig) -> list[int]:
    x = np.zeros((len(samples), 1))
    try:
        if split.group_regex or split.group_csv:
            splitter = GroupShuffleSplit(1, test_size=split.val_ratio, random_state=split.seed)
            _, val = next(splitter.split(x, groups=_groups(samples)))
        else:
            splitter = ShuffleSplit(1, test_size=split.val_ratio, random_state=split.seed)
            _, val = next(splitter.split(x))
    except ValueError as exc:  # sklearn: the ratio leaves an empty train or validation part
        raise UserError(
            f"split.val_ratio={split.val_ratio} cannot split {len(samples)} samples: {exc}"
        ) from None
    folds = np.full(len(samples), ALWAYS_TRAIN)
    folds[val] = 0
    return folds.tolist()


def write_folds(path: Path, samples: list[Sample], folds: list[int]) -> None:
    """Write folds.csv (id, group, fold, classes) atomically: readers never see half a file."""
    if len(samples) != len(folds):
        raise ValueError(f"{len(samples)} samples but {len(folds)} folds")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "group", "fold", "classes"])
        for sample, fold in zip(samples, folds, strict=True):
            classes = " ".join(str(c) for c in sample.classes)
            writer.writerow([sample.id, sample.group or sample.id, fold, classes])


def read_folds(path: Path, samples: list[Sample], split: SplitConfig) -> list[int]:
    """The folds stored in folds.csv, in sample order; UserError if they do not fit the data."""
    path = Path(path)
    fix = f"delete {path} to split again, or use a new experiment name"
    fold_of = _read_rows(path, fix)
    ids = [s.id for s in samples]
    extra = sorted(set(fold_of) - set(ids))
    missing = [i for i in ids if i not in fold_of]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} id(s) in the csv are not in the data: {examples(extra)}")
        if missing:
            parts.append(
                f"{len(missing)} sample id(s) are missing from the csv: {examples(missing)}"
            )
        raise UserError(f"{path} does not match the dataset: {'; '.join(parts)}; {fix}")
    folds = [fold_of[i] for i in ids]
    bad = sorted({f for f in folds if not ALWAYS_TRAIN <= f < split.fold_count})
    if bad:
        raise UserError(
            f"{path}: fold numbers {bad} are outside -1..{split.fold_count - 1} "
            f"(split.method={split.method}, {split.fold_count} fold(s)); {fix}"
        )
    found = len({f for f in folds if f != ALWAYS_TRAIN})
    if found != split.fold_count:
        raise UserError(
            f"{path} has {found} validation fold(s) but split.method={split.method} "
            f"needs {split.fold_count}; {fix}"
        )
    if split.method in GROUPED:
        _check_groups(path, samples, folds, fix)
    return folds


def _read_rows(path: Path, fix: str) -> dict[str, int]:
    """id -> fold from folds.csv; UserError for a malformed file."""
    fold_of: dict[str, int] = {}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not {"id", "fold"} <= set(reader.fieldnames or []):
                raise UserError(
                    f"{path}: columns {reader.fieldnames}, expected id,group,fold,classes; {fix}"
                )
            for line, row in enumerate(reader, 2):
                if row["id"] in fold_of:
                    raise UserError(f"{path} line {line}: id {row['id']!r} appears twice; {fix}")
                fold_of[row["id"]] = int(row["fold"])
    except FileNotFoundError:
        raise UserError(f"{path}: folds file not found") from None
    except (csv.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: malformed folds csv ({exc}); {fix}") from None
    return fold_of


def _check_groups(path: Path, samples: list[Sample], folds: list[int], fix: str) -> None:
    """A group validated in two folds leaks: the groups changed since folds.csv was written."""
    folds_of = defaultdict(set)
    for group, fold in zip(_groups(samples), folds, strict=True):
        folds_of[group].add(fold)
    split_groups = sorted(g for g, fs in folds_of.items() if len(fs) > 1)
    if split_groups:
        raise UserError(
            f"{path}: {len(split_groups)} group(s) lie in several folds "
            f"({examples(split_groups)}); the grouping changed since it was "
            f"written; {fix}"
        )


def load_or_create_folds(
    path: Path, samples: list[Sample], split: SplitConfig, num_classes: int
) -> list[int]:
    """The folds in `path` if it exists (checked against the data), else new ones written there."""
    path = Path(path)
    # made before the lock: a split the data cannot fill fails before any folder or file
    folds = None if path.exists() else make_folds(samples, split, num_classes)
    # two runs started together in a fresh folder: one writes, the other reads what it
    # wrote (the lock file .folds.csv.lock stays beside folds.csv)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if path.exists():
            return read_folds(path, samples, split)
        folds = folds if folds is not None else make_folds(samples, split, num_classes)
        write_folds(path, samples, folds)
        return folds


def fold_indices(folds: list[int], fold: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices) for `fold`; samples of other folds and -1 train."""
    val = [i for i, f in enumerate(folds) if f == fold]
    if fold < 0 or not val:
        existing = sorted(set(folds) - {ALWAYS_TRAIN})
        raise UserError(f"fold {fold} does not exist; the folds are {existing}")
    train = [i for i, f in enumerate(folds) if f != fold]
    return train, val
