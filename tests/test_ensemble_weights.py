"""OOF-tuned ensemble weights: the lattice, the per-candidate matrices and the tuner."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import run_cli
from synthetic import make_mask_folder, tiny_config

from segarena.config import config_from_dict, dump_config
from segarena.data.folds import load_or_create_folds
from segarena.data.readers import load_mask, read_samples
from segarena.errors import UserError
from segarena.infer.tune_weights import candidate_matrices, mious, simplex_grid, tune_weights
from segarena.metrics import confusion_matrix, scores
from segarena.run_dir.per_image import oof_name

C = 4  # tiny_config's classes
IGNORE = 255


def test_simplex_grid_holds_the_mean_first_and_every_member_alone():
    grid = simplex_grid(3, 10)
    assert grid.shape == (67, 3)  # C(12, 2) = 66 lattice points + the mean (10 % 3 != 0)
    np.testing.assert_allclose(grid[0], [1 / 3] * 3)
    assert grid.shape[0] == 1 + len({tuple(r) for r in grid[1:]})
    np.testing.assert_allclose(grid.sum(1), 1.0)
    for unit in np.eye(3):
        assert any(np.allclose(row, unit) for row in grid)
    assert simplex_grid(2, 4).shape == (5, 2)  # 0.5 is on the lattice: not added twice


def test_candidate_matrices_match_confusion_matrices_of_the_mixed_argmax():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(2, C, 9, 11, generator=gen).softmax(1)
    target = torch.randint(0, C, (9, 11), generator=gen)
    target[0, :4] = IGNORE
    grid = simplex_grid(2, 4)
    cms = candidate_matrices(grid, probs, target, IGNORE)
    for weights, cm in zip(grid, cms):
        mixed = (torch.tensor(weights, dtype=torch.float32)[:, None, None, None] * probs).sum(0)
        expected = confusion_matrix(mixed.argmax(0), target, C, IGNORE).numpy()
        np.testing.assert_array_equal(cm, expected)
        assert mious(cm[None])[0] == pytest.approx(scores(cm)["miou"])


def _runs_with_oof(tmp_path, make_probs):
    """Two 2-fold runs of one experiment whose OOF probabilities are make_probs(run, mask)."""
    data = make_mask_folder(tmp_path / "data", n=12)
    raw = tiny_config(data, tmp_path / "runs")
    config = config_from_dict(raw)
    samples = read_samples(config.data, config.split)
    folds_csv = tmp_path / "folds.csv"
    folds = load_or_create_folds(folds_csv, samples, config.split, C)
    run_dirs = []
    for run in range(2):
        run_dir = tmp_path / "runs" / f"run{run}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(dump_config(config))
        info = {"run_id": run_dir.name, "experiment": config.experiment, "folds": [0, 1]}
        (run_dir / "run.json").write_text(json.dumps(info))
        shutil.copyfile(folds_csv, run_dir / "folds.csv")
        for sample, fold in zip(samples, folds):
            oof = run_dir / f"fold_{fold}" / "oof"
            oof.mkdir(parents=True, exist_ok=True)
            probs = make_probs(run, load_mask(sample).astype(np.int64))
            np.save(oof / f"{oof_name(sample.id)}.npy", (probs * 255).round().astype(np.uint8))
        run_dirs.append(run_dir)
    return run_dirs, samples


def test_tuning_moves_weight_to_the_good_run_and_reports_the_mean(tmp_path):
    rng = np.random.default_rng(0)

    def make_probs(run, mask):  # run 0 is right everywhere, run 1 guesses at random
        labels = mask if run == 0 else rng.integers(0, C, mask.shape)
        return np.eye(C, dtype=np.float32)[np.minimum(labels, C - 1)].transpose(2, 0, 1)

    run_dirs, samples = _runs_with_oof(tmp_path, make_probs)
    result = tune_weights(run_dirs, steps=10)
    assert result["images"] == len(samples) and result["candidates"] == 11
    # any weight above 1/2 makes run 0 win every pixel; the tie goes nearest the mean
    assert result["weights"] == pytest.approx([0.6, 0.4])
    assert result["miou_tuned"] == pytest.approx(1.0)
    assert result["miou_each"][0] == pytest.approx(1.0) and result["miou_each"][1] < 0.5
    assert result["miou_mean"] < 0.9  # at 1/2 each, ties go to the lower class id
    assert result["miou_crossfit"] == pytest.approx(1.0)
    assert set(result["crossfit_fold_weights"]) == {"0", "1"}


def test_complementary_runs_beat_each_alone_with_the_mean(tmp_path):
    def make_probs(run, mask):  # run 0 is sure of classes 0-1, run 1 of classes 2-3
        mine = (mask < 2) if run == 0 else (mask >= 2)
        wrong = 0 if run == 0 else 3
        probs = np.full((C, *mask.shape), 0.0, dtype=np.float32)
        onehot = np.eye(C, dtype=np.float32)[np.minimum(mask, C - 1)].transpose(2, 0, 1)
        probs += np.where(mine, 0.9, 0.4) * onehot
        probs[wrong] += np.where(mine, 0.0, 0.6) + np.where(mine & (mask != wrong), 0.1, 0.0)
        return probs

    run_dirs, _ = _runs_with_oof(tmp_path, make_probs)
    result = tune_weights(run_dirs, steps=4)
    assert result["miou_mean"] == pytest.approx(1.0)
    assert max(result["miou_each"]) < 0.9
    assert result["weights"] == pytest.approx([0.5, 0.5])


def test_tuning_refuses_runs_of_other_folds(tmp_path):
    run_dirs, _ = _runs_with_oof(tmp_path, lambda run, mask: np.full((C, *mask.shape), 0.25))
    with pytest.raises(UserError, match="tune-weights: give at least two"):
        tune_weights(run_dirs[:1])
    folds = run_dirs[1] / "folds.csv"
    rows = list(csv.DictReader(folds.open()))
    rows[-1]["fold"] = str(1 - int(rows[-1]["fold"]))  # one image moved to the other fold
    with folds.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_cli("tune-weights", *run_dirs)
    assert result.exit_code == 2 and "folds.csv: differs from" in result.output
