"""data.cleanse: training masks cleansed by an audit (ignore, relabel, drop); validation
masks never; a missing or mismatched audit is a UserError."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import run_cli, write_config
from label_noise import fake_run
from PIL import Image

from segarena.config import config_from_dict
from segarena.data.cleanse import cleanse_training
from segarena.data.folds import read_folds
from segarena.data.readers import load_mask, read_samples
from segarena.errors import UserError
from segarena.labels.audit import audit_run
from segarena.train import parts
from segarena.train.experiment import fold_data

IGNORE = 255


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A fake run with 4 of 24 masks corrupted and its audit folder."""
    tmp = tmp_path_factory.mktemp("cleanse")
    run_dir, config, swapped, truth = fake_run(tmp)
    audit_run(run_dir, top=0)
    return run_dir, config, swapped, truth


def with_cleanse(config: dict, **cleanse) -> dict:
    config = json.loads(json.dumps(config))
    config["data"]["cleanse"] = cleanse
    return config


def cleansed(config: dict):
    """(given, cleansed) masks of every sample, by id, with everything taken as training."""
    cfg = config_from_dict(config)
    samples = read_samples(cfg.data)
    kept = cleanse_training(samples, cfg.data)
    given = {s.id: load_mask(s) for s in samples}
    return given, {s.id: load_mask(s) for s in kept}


def issues_of(run_dir, sample_id):
    manifest = json.loads((run_dir / "audit" / "audit.json").read_text())
    record = manifest["images"][sample_id]
    if record["file"] is None:
        return None
    return np.load(run_dir / "audit" / record["file"])


def test_ignore_sets_exactly_the_flagged_pixels_to_ignore_index(audited):
    run_dir, config, swapped, _ = audited
    given, new = cleansed(with_cleanse(config, audit=str(run_dir / "audit"), action="ignore"))
    assert given.keys() == new.keys()
    for sample_id, mask in given.items():
        stored = issues_of(run_dir, sample_id)
        flagged = np.zeros(mask.shape, bool) if stored is None else stored["issues"]
        np.testing.assert_array_equal(new[sample_id][~flagged], mask[~flagged])
        assert np.all(new[sample_id][flagged] == IGNORE)
    for sample_id in swapped:  # the corrupted masks lost their flagged pixels
        assert (new[sample_id] == IGNORE).sum() > 50


def test_relabel_restores_confident_pixels_and_ignores_the_rest(audited):
    run_dir, config, swapped, truth = audited
    spec = {"audit": str(run_dir / "audit"), "action": "relabel", "relabel_confidence": 0.6}
    given, new = cleansed(with_cleanse(config, **spec))
    restored = total = 0
    for sample_id in swapped:
        stored = issues_of(run_dir, sample_id)
        flagged, pred, conf = stored["issues"], stored["pred"], stored["conf"]
        sure = flagged & (conf >= 0.6 * 255 - 0.5)
        assert sure.any() and np.all(new[sample_id][sure] == pred[sure])
        assert np.all(new[sample_id][flagged & ~sure] == IGNORE)
        assert np.array_equal(new[sample_id][~flagged], given[sample_id][~flagged])
        restored += (new[sample_id][sure] == truth[sample_id][sure]).sum()
        total += sure.sum()
    assert restored / total > 0.95  # the model knows the truth: relabelled = true class


def test_drop_leaves_out_the_worst_ranked_images(audited):
    run_dir, config, _, _ = audited
    cfg = config_from_dict(with_cleanse(config, audit=str(run_dir / "audit"), action="drop",
                                        drop_top=3))  # fmt: skip
    samples = read_samples(cfg.data)
    with (run_dir / "audit" / "issues.csv").open() as f:
        worst = [row["id"] for row in csv.DictReader(f)][:3]
    kept = cleanse_training(samples, cfg.data)
    assert [s.id for s in kept] == [s.id for s in samples if s.id not in worst]
    assert all(s.mask_fix is None for s in kept)


@pytest.mark.parametrize("action", ["ignore", "relabel", "drop"])
def test_validation_masks_are_never_cleansed(audited, action):
    run_dir, config, swapped, _ = audited
    extra = {"drop_top": 4} if action == "drop" else {}
    cfg = config_from_dict(
        with_cleanse(config, audit=str(run_dir / "audit"), action=action, **extra)
    )
    samples = read_samples(cfg.data, cfg.split)
    folds = read_folds(run_dir / "folds.csv", samples, cfg.split)
    raw = {s.id: load_mask(s) for s in samples}
    for fold in (0, 1):
        data = fold_data(samples, folds, fold, cfg, debug=False)
        val_ids = {s.id for s, f in zip(samples, folds) if f == fold}
        assert {s.id for s in data.val} == val_ids  # dropping never shrinks validation
        for sample in data.val:
            assert sample.mask_fix is None
            np.testing.assert_array_equal(load_mask(sample), raw[sample.id])
        corrupted_in_train = [s for s in data.train if s.id in swapped]
        if action == "drop":
            assert not corrupted_in_train  # the 4 corrupted images are the 4 worst
        else:
            assert corrupted_in_train
            assert all(not np.array_equal(load_mask(s), raw[s.id]) for s in corrupted_in_train)


def test_missing_or_mismatched_audit_is_a_user_error(audited, tmp_path):
    run_dir, config, swapped, _ = audited
    audit = run_dir / "audit"
    with pytest.raises(UserError, match="not an audit folder"):
        cleansed(with_cleanse(config, audit=str(tmp_path / "nowhere")))

    other = json.loads(json.dumps(config))
    other["data"]["classes"] = ["background", "red", "green", "yellow"]
    with pytest.raises(UserError, match=r"audit is of classes .*but data.classes is"):
        cleansed(with_cleanse(other, audit=str(audit)))

    partial = tmp_path / "partial"
    shutil.copytree(audit, partial)
    manifest = json.loads((partial / "audit.json").read_text())
    first = sorted(manifest["images"])[0]
    del manifest["images"][first]
    (partial / "audit.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=f"1 training sample.*not audited: {first}"):
        cleansed(with_cleanse(config, audit=str(partial)))

    with pytest.raises(UserError, match="drop_top"):
        config_from_dict(with_cleanse(config, audit=str(audit), action="drop"))


def test_a_mask_edited_after_the_audit_is_a_user_error(audited, tmp_path):
    run_dir, config, swapped, _ = audited
    data_copy = tmp_path / "data"
    shutil.copytree(config["data"]["root"], data_copy)
    edited = json.loads(json.dumps(config))
    edited["data"]["root"] = str(data_copy)
    target = sorted(swapped)[0]
    path = data_copy / "masks" / f"{target}.png"
    mask = np.array(Image.open(path))
    mask[0, 0] = 3 if mask[0, 0] != 3 else 2
    Image.fromarray(mask).save(path)
    with pytest.raises(UserError, match=f"mask of '{target}'.*changed since the audit"):
        cleansed(with_cleanse(edited, audit=str(run_dir / "audit")))
    (run_dir / "audit" / "issues.csv").rename(tmp_path / "moved.csv")
    try:
        with pytest.raises(UserError, match="issues.csv: the audit's ranking is missing"):
            cleansed(with_cleanse(config, audit=str(run_dir / "audit"), action="drop",
                                  drop_top=2))  # fmt: skip
    finally:
        (tmp_path / "moved.csv").rename(run_dir / "audit" / "issues.csv")


@pytest.mark.slow  # runs `segarena train`
def test_training_runs_on_cleansed_labels(audited, tmp_path, monkeypatch):
    run_dir, config, _, _ = audited
    config = with_cleanse(config, audit=str(run_dir / "audit"), action="relabel")
    config["train"].update(epochs=1)
    config["records"]["out"] = str(tmp_path / "runs")
    trained_on = []
    real = parts.train_dataset

    def spy(cfg, samples):  # the samples the fold's training dataset is built from
        trained_on.extend(samples)
        return real(cfg, samples)

    monkeypatch.setattr(parts, "train_dataset", spy)
    result = run_cli("train", write_config(tmp_path / "c.yaml", config), "--fold", "0")
    assert result.exit_code == 0, result.output
    given, fixed = cleansed(config)
    assert trained_on and all(np.array_equal(load_mask(s), fixed[s.id]) for s in trained_on)
    assert any(not np.array_equal(fixed[s.id], given[s.id]) for s in trained_on)
    (run,) = (tmp_path / "runs" / "tiny").glob("*/config.yaml")
    assert yaml.safe_load(run.read_text())["data"]["cleanse"]["action"] == "relabel"
