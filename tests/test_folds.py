"""Folds: every method, seeding, group safety, stratification, folds.csv round trip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from segarena.config import SplitConfig
from segarena.data.folds import (
    fold_indices,
    load_or_create_folds,
    make_folds,
    read_folds,
    write_folds,
)
from segarena.data.readers import Sample
from segarena.errors import UserError

NUM_CLASSES = 4
RARE = 3  # the class only a few samples hold


def _samples(n=25, group_size=1, rare_every=5, val_every=0) -> list[Sample]:
    """n samples; class 3 in every `rare_every`-th group, so 5 of 25 by default."""
    samples = []
    for i in range(n):
        group = i // group_size
        classes = (0, 1 + i % 2) + ((RARE,) if group % rare_every == 0 else ())
        role = "val" if val_every and i % val_every == 0 else "train"
        samples.append(
            Sample(
                id=f"s{i:03d}",
                image_path=Path(f"s{i:03d}.png"),
                mask_path=None,
                group=f"g{group:02d}",
                classes=classes,
                role=role,
            )
        )
    return samples


def _split(method, **kwargs) -> SplitConfig:
    if method in ("group", "stratified_group"):
        kwargs.setdefault("group_regex", ".*")  # samples carry their groups already
    return SplitConfig(method=method, **kwargs)


K_METHODS = ["kfold", "stratified", "group", "stratified_group"]


@pytest.mark.parametrize("method", K_METHODS)
def test_every_sample_is_validated_in_exactly_one_fold(method):
    samples = _samples(50, group_size=2)
    folds = make_folds(samples, _split(method, n_folds=5), NUM_CLASSES)
    assert len(folds) == len(samples)
    assert set(folds) == {0, 1, 2, 3, 4}  # each fold validates someone, nobody is left out
    for fold in range(5):
        train, val = fold_indices(folds, fold)
        assert sorted(train + val) == list(range(50)) and not set(train) & set(val)


@pytest.mark.parametrize("method", [*K_METHODS, "holdout"])
def test_seed_decides_the_folds(method):
    samples = _samples(60, group_size=2)
    first = make_folds(samples, _split(method, seed=1), NUM_CLASSES)
    assert make_folds(samples, _split(method, seed=1), NUM_CLASSES) == first
    assert make_folds(samples, _split(method, seed=2), NUM_CLASSES) != first


@pytest.mark.parametrize("method", ["group", "stratified_group"])
def test_group_methods_never_split_a_group(method):
    samples = _samples(60, group_size=3)
    folds = make_folds(samples, _split(method, n_folds=4), NUM_CLASSES)
    folds_of_group = {}
    for sample, fold in zip(samples, folds, strict=True):
        folds_of_group.setdefault(sample.group, set()).add(fold)
    assert all(len(f) == 1 for f in folds_of_group.values())
    assert set(folds) == {0, 1, 2, 3}


def test_stratified_spreads_a_rare_class_over_all_folds():
    samples = _samples(25)
    assert sum(RARE in s.classes for s in samples) == 5
    for seed in range(5):
        folds = make_folds(samples, _split("stratified", seed=seed), NUM_CLASSES)
        rare_folds = Counter(f for s, f in zip(samples, folds, strict=True) if RARE in s.classes)
        assert sorted(rare_folds) == [0, 1, 2, 3, 4]


def test_stratified_group_spreads_a_rare_class_over_all_folds():
    samples = _samples(50, group_size=2)  # 25 groups, 5 of them hold the rare class
    folds = make_folds(samples, _split("stratified_group"), NUM_CLASSES)
    rare_folds = {f for s, f in zip(samples, folds, strict=True) if RARE in s.classes}
    assert rare_folds == {0, 1, 2, 3, 4}


def test_holdout_ratio_with_and_without_groups():
    folds = make_folds(_samples(50), _split("holdout", val_ratio=0.2), NUM_CLASSES)
    assert Counter(folds) == {-1: 40, 0: 10}

    samples = _samples(40, group_size=2)  # 20 groups of 2
    folds = make_folds(samples, _split("holdout", val_ratio=0.2, group_regex=".*"), NUM_CLASSES)
    val_groups = {s.group for s, f in zip(samples, folds, strict=True) if f == 0}
    train_groups = {s.group for s, f in zip(samples, folds, strict=True) if f == -1}
    assert len(val_groups) == 4 and not val_groups & train_groups


def test_predefined_uses_roles():
    samples = _samples(12, val_every=3)
    folds = make_folds(samples, _split("predefined"), NUM_CLASSES)
    assert folds == [0 if s.role == "val" else -1 for s in samples]
    assert folds.count(0) == 4
    with pytest.raises(UserError, match="role: val"):
        make_folds(_samples(12), _split("predefined"), NUM_CLASSES)


@pytest.mark.parametrize("method", ["group", "stratified_group"])
def test_fewer_groups_than_folds(method):
    samples = _samples(30, group_size=10)  # 3 groups
    with pytest.raises(UserError, match=r"n_folds=5 .* only 3 groups"):
        make_folds(samples, _split(method, n_folds=5), NUM_CLASSES)


def test_write_read_round_trip(tmp_path):
    samples = _samples(20, group_size=2)
    split = _split("group", n_folds=4)
    folds = make_folds(samples, split, NUM_CLASSES)
    path = tmp_path / "run" / "folds.csv"
    write_folds(path, samples, folds)
    assert read_folds(path, samples, split) == folds
    lines = path.read_text().splitlines()
    assert lines[0] == "id,group,fold,classes"
    assert lines[1] == f"s000,g00,{folds[0]},0 1 3"
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temporary left


def test_load_or_create_writes_once_and_reuses(tmp_path):
    samples = _samples(20)
    path = tmp_path / "folds.csv"
    first = load_or_create_folds(path, samples, _split("kfold", seed=1), NUM_CLASSES)
    assert path.exists()
    # Another seed would give other folds: the stored ones must win.
    assert make_folds(samples, _split("kfold", seed=2), NUM_CLASSES) != first
    assert load_or_create_folds(path, samples, _split("kfold", seed=2), NUM_CLASSES) == first


def _read_error(path, samples, split) -> str:
    with pytest.raises(UserError) as info:
        read_folds(path, samples, split)
    message = str(info.value)
    assert "folds.csv" in message and "delete" in message
    return message


def test_read_folds_rejects_other_ids(tmp_path):
    samples = _samples(10)
    split = _split("kfold")
    path = tmp_path / "folds.csv"
    write_folds(path, samples, make_folds(samples, split, NUM_CLASSES))

    extra = samples + [Sample(id="new", image_path=Path("new.png"), mask_path=None)]
    message = _read_error(path, extra, split)
    assert "1 sample id(s) are missing" in message and "new" in message
    message = _read_error(path, samples[1:], split)
    assert "1 id(s) in the csv are not in the data" in message and "s000" in message


def test_read_folds_rejects_other_fold_counts(tmp_path):
    samples = _samples(20)
    path = tmp_path / "folds.csv"
    write_folds(path, samples, make_folds(samples, _split("kfold", n_folds=5), NUM_CLASSES))
    message = _read_error(path, samples, _split("kfold", n_folds=3))
    assert "[3, 4]" in message and "-1..2" in message

    write_folds(path, samples, [i % 4 for i in range(20)])  # four folds where five are needed
    message = _read_error(path, samples, _split("kfold", n_folds=5))
    assert "4 validation fold(s)" in message and "needs 5" in message


def test_read_folds_rejects_malformed_csv_and_split_groups(tmp_path):
    samples = _samples(4)
    path = tmp_path / "folds.csv"
    path.write_text("id,group,fold,classes\ns000,g00,zero,0\n")
    assert "malformed" in _read_error(path, samples, _split("kfold", n_folds=2))
    path.write_text("name,fold\ns000,0\n")
    assert "columns" in _read_error(path, samples, _split("kfold", n_folds=2))

    grouped = [
        Sample(id=s.id, image_path=s.image_path, mask_path=None, group="same") for s in samples
    ]
    write_folds(path, samples, [0, 1, 0, 1])
    assert "several folds" in _read_error(path, grouped, _split("group", n_folds=2))


def test_fold_indices_keep_always_train_samples_in_training():
    train, val = fold_indices([-1, 0, 1, 0, -1], 0)
    assert (train, val) == ([0, 2, 4], [1, 3])
    with pytest.raises(UserError, match=r"fold 2 does not exist; the folds are \[0, 1\]"):
        fold_indices([-1, 0, 1], 2)
