"""Shipped recipes validate; early stopping, mixed precision and accumulation really act."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import history
from synthetic import frozen_config, make_mask_folder, tiny_config

from segarena.config import config_from_dict, load_config
from segarena.errors import UserError
from segarena.train.fold import TrainHooks
from segarena.train.run import fit

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path, monkeypatch):
    monkeypatch.setenv("SEGARENA_DATA", "/data/somewhere")
    config = load_config(path)
    assert config.data.root_path() == Path("/data/somewhere")
    assert config.data.num_classes == 11


def test_camvid_recipe_falls_back_to_shared_data(monkeypatch):
    monkeypatch.delenv("SEGARENA_DATA", raising=False)
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml")
    assert config.data.root_path() == Path("../shared/data/camvid")
    assert config.data.ignore_index == 11 and config.split.method == "group"


@pytest.mark.slow  # trains
def test_early_stopping_ends_the_run_after_patience(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    raw = frozen_config(data, tmp_path / "runs", epochs=10, early_stopping=2)
    run_dir = fit(config_from_dict(raw), tmp_path / "runs").path
    assert [r["epoch"] for r in history(run_dir)] == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["folds"][0]["epochs"] == 3 and summary["folds"][0]["best_epoch"] == 1


@pytest.mark.slow  # trains
def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    raw = tiny_config(
        data,
        tmp_path / "runs",
        split={"method": "holdout"},
        train={"epochs": 1, "precision": "bf16-mixed"},
    )
    dtypes: set[torch.dtype] = set()

    def watch_first_conv(epoch, learner):  # an ignored precision would leave float32 here
        conv = next(m for m in learner.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))

    hooks = TrainHooks(on_epoch_start=watch_first_conv)
    run_dir = fit(config_from_dict(raw), tmp_path / "runs", hooks=hooks).path
    assert dtypes == {torch.bfloat16}
    record = history(run_dir)[0]
    assert record["train_loss"] == record["train_loss"]  # not NaN
    env = json.loads((run_dir / "env.json").read_text())
    assert env["device"] == "cpu"


@pytest.mark.slow  # trains
def test_gradient_accumulation_counts_updates(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=12)
    raw = tiny_config(
        data,
        tmp_path / "runs",
        split={"method": "holdout", "val_ratio": 0.34},
        train={"epochs": 1, "batch_size": 2, "accumulate": 2},
    )
    run_dir = fit(config_from_dict(raw), tmp_path / "runs").path
    from segarena.run_dir.checkpoints import load_checkpoint

    state = load_checkpoint(run_dir / "fold_0" / "last.ckpt")["state"]
    # 8 training images, batches of 2 -> 4 steps, one optimizer update every 2 steps
    assert state["num_updates"] == 2


def test_unknown_accelerator_is_a_user_error(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    raw = tiny_config(
        data, tmp_path / "runs", split={"method": "holdout"}, train={"accelerator": "tpu-please"}
    )
    with pytest.raises(UserError, match="tpu-please"):
        fit(config_from_dict(raw), tmp_path / "runs")


def test_auto_workers_are_none_for_cached_images_on_a_cpu_and_two_otherwise(tmp_path, caplog):
    from segarena.data.dataset import loader_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert loader_workers("auto", True, cpu) == 0
    assert loader_workers("auto", False, cpu) == loader_workers("auto", True, gpu) == 2
    assert loader_workers(3, True, cpu) == 3  # a number is taken as given
    raw = tiny_config(make_mask_folder(tmp_path / "data", n=8), tmp_path / "runs")
    raw["data"].update(num_workers="auto", cache=True)
    raw["train"]["epochs"] = 1
    with caplog.at_level("INFO", logger="segarena"):
        fit(config_from_dict(raw), tmp_path / "runs")
    assert "data.num_workers auto: 0 (cache True, cpu)" in caplog.text
    raw["data"]["num_workers"] = "many"
    with pytest.raises(UserError, match="num_workers"):
        config_from_dict(raw)
