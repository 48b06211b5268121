"""End to end through the CLI: train 2 folds x 2 epochs on each reader kind, then evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import history, miou_of, only_run_dir, run_cli, write_config
from synthetic import make_coco, make_mask_folder, tiny_config

from segarena.config import config_from_dict
from segarena.data.readers import load_mask, read_samples
from segarena.run_dir.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow  # every test here runs `segarena train`


@pytest.mark.parametrize("kind", ["mask_folder", "coco"])
def test_train_all_folds_then_evaluate(tmp_path, kind):
    data = (make_mask_folder if kind == "mask_folder" else make_coco)(tmp_path / "data", n=12)
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data, out, kind))

    result = run_cli("train", cfg, "--folds", "all")
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(out)
    for name in ("config.yaml", "folds.csv", "env.json", "run.json", "summary.json"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1]
    assert summary["epochs"] == 2 and summary["train_images_per_s"] > 0
    assert set(summary["per_class_iou"]) == {"background", "red", "green", "blue"}
    # the folds' confusion matrices count every mask pixel once, under its true class ...
    results = [json.loads((run_dir / f"fold_{k}" / "result.json").read_text()) for k in (0, 1)]
    pooled = np.sum([r["confusion"] for r in results], axis=0)
    config = config_from_dict(tiny_config(data, out, kind))
    masks = [load_mask(s) for s in read_samples(config.data, config.split)]
    support = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=4)
    np.testing.assert_array_equal(pooled.sum(1), support)
    # ... and the summary scores their sum: pooled (OOF) mIoU, not the mean of the folds
    miou, ious = miou_of(pooled)
    assert summary["miou"] == pytest.approx(miou, abs=1e-12)
    assert list(summary["per_class_iou"].values()) == pytest.approx(ious, abs=1e-12)
    for fold_result, fold in zip(results, summary["folds"], strict=True):
        per_image = np.load(run_dir / f"fold_{fold['fold']}" / "per_image_cm.npy")
        np.testing.assert_array_equal(per_image.sum(0), fold_result["confusion"])
        assert fold["miou"] == pytest.approx(miou_of(fold_result["confusion"])[0], abs=1e-12)
    assert summary["miou_std"] == pytest.approx(np.std([f["miou"] for f in summary["folds"]]))

    oof_files = []
    for k in (0, 1):
        fold_dir = run_dir / f"fold_{k}"
        assert (fold_dir / "best.ckpt").is_file() and (fold_dir / "last.ckpt").is_file()
        assert [r["epoch"] for r in history(run_dir, k)] == [1, 2]
        oof_files += sorted((fold_dir / "oof").glob("*.npy"))
    # every image is validated exactly once across the folds, at half resolution in uint8
    assert len(oof_files) == 12 and len({p.name for p in oof_files}) == 12
    probs = np.load(oof_files[0])
    assert probs.dtype == np.uint8 and probs.shape == (4, 32, 32)
    assert np.all(np.abs(probs.astype(int).sum(0) - 255) <= 4)  # probabilities sum to one

    env = json.loads((run_dir / "env.json").read_text())
    # the installed torch, whichever it is (no test pins torch's version)
    assert env["versions"]["torch"] == metadata.version("torch") and env["seed"] == 0

    result = run_cli("evaluate", run_dir, "--split", "val")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "eval_val.json").read_text())
    # the same best checkpoints on the same images reproduce the training-time scores
    assert evaluation["miou"] == pytest.approx(summary["miou"], abs=1e-6)
    for got, want in zip(evaluation["folds"], summary["folds"]):
        assert got["miou"] == pytest.approx(want["miou"], abs=1e-6)


def test_mlflow_records_the_run(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    out = tmp_path / "runs"
    config = tiny_config(
        data,
        out,
        split={"method": "holdout", "val_ratio": 0.25},
        records={"out": str(out), "mlflow": True},
        train={"epochs": 1},
    )
    result = run_cli("train", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.params["train.epochs"] == "1"
    summary = json.loads((only_run_dir(out) / "summary.json").read_text())
    assert runs[0].data.metrics["miou"] == pytest.approx(summary["miou"])
    assert "fold0/train_loss" in runs[0].data.metrics
    # the summary is logged as an artifact inside OUT, not in the working directory
    assert list((out / "mlflow-artifacts").rglob("summary.json"))
    assert not Path("mlruns").exists()


def test_a_learnable_dataset_is_learned(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=32)
    out = tmp_path / "runs"
    config = tiny_config(
        data,
        out,
        split={"method": "holdout", "val_ratio": 0.25},
        optimizer={"name": "adamw", "lr": 0.01},
        train={"epochs": 10, "batch_size": 4},
    )
    result = run_cli("train", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run_dir(out) / "summary.json").read_text())
    assert summary["miou"] > 0.5, summary  # chance is ~0.1


def test_debug_run_passes_when_loss_falls(tmp_path):
    # 32 images in 2 folds: 16 training and 16 validation images in fold 0, more than the
    # debug subset takes (8 and 4), so a subset that is ignored shows
    data = make_mask_folder(tmp_path / "data", n=32)
    out = tmp_path / "runs"
    config = tiny_config(data, out, train={"epochs": 50, "debug_samples": 8, "batch_size": 4})
    result = run_cli("train", write_config(tmp_path / "c.yaml", config), "--debug")
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(out)
    assert run_dir.name.endswith("-debug")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2  # --debug overrides train.epochs
    records = history(run_dir)
    assert len(records) == 2 and records[1]["train_loss"] < records[0]["train_loss"]
    # the seeded subset: 8 training images (2 batches of 4 per epoch, 2 epochs: 4 updates)
    # and 8 // 2 validation images
    state = load_checkpoint(run_dir / "fold_0" / "last.ckpt")["state"]
    assert state["num_updates"] == 2 * 2
    assert len(json.loads((run_dir / "fold_0" / "per_image_ids.json").read_text())) == 4


def test_debug_run_fails_when_loss_does_not_fall(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=16)
    out = tmp_path / "runs"
    # one full batch and a learning rate too small to move float32 weights: loss stays put
    config = tiny_config(
        data,
        out,
        optimizer={"name": "sgd", "lr": 1e-20},
        scheduler={"name": "none", "warmup_epochs": 0},
        train={"debug_samples": 8, "batch_size": 8},
    )
    result = run_cli("train", write_config(tmp_path / "c.yaml", config), "--debug")
    assert result.exit_code == 1
    assert "did not fall" in result.output


def test_bad_config_key_exits_2_from_a_real_process(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=4)
    config = tiny_config(data, tmp_path / "runs")
    config["train"]["epochz"] = 3
    path = write_config(tmp_path / "c.yaml", config)
    proc = subprocess.run(
        [sys.executable, "-m", "segarena.cli", "train", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "train.epochz" in proc.stderr and "did you mean 'epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_value_type_and_bad_override_exit_2(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=4)
    path = write_config(tmp_path / "c.yaml", tiny_config(data, tmp_path / "runs"))
    result = run_cli("train", path, "--set", "train.batch_size=lots")
    assert result.exit_code == 2
    assert "train.batch_size" in result.output and "lots" in result.output
    result = run_cli("train", path, "--set", "train.epochs")
    assert result.exit_code == 2 and "key.sub=value" in result.output


def test_folds_csv_that_does_not_match_the_dataset_exits_2(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    out = tmp_path / "runs"
    path = write_config(tmp_path / "c.yaml", tiny_config(data, out))
    assert run_cli("split", path).exit_code == 0
    assert (out / "tiny" / "folds.csv").is_file()
    make_mask_folder(tmp_path / "data", n=10, seed=1)  # two more images appear
    result = run_cli("train", path)
    assert result.exit_code == 2
    assert "folds.csv" in result.output


def test_missing_data_folder_exits_2(tmp_path):
    path = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "nowhere", tmp_path / "runs"))
    result = run_cli("train", path)
    assert result.exit_code == 2
    assert "nowhere" in result.output


def test_seeds_train_one_run_per_seed(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data, out))
    result = run_cli("train", cfg, "--seeds", "3,4", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in (out / "tiny").iterdir() if p.is_dir())
    seeds = [yaml.safe_load((r / "config.yaml").read_text())["train"]["seed"] for r in runs]
    assert sorted(seeds) == [3, 4]
    assert "seed ensemble: segarena predict" in result.output
    assert all(str(r) in result.output for r in runs)
    result = run_cli("train", cfg, "--seeds", "3,x")
    assert result.exit_code == 2 and "--seeds '3,x'" in result.output
