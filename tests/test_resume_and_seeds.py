"""A killed run resumes to the same result; the same seed gives the same run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import history, run_cli, write_config
from synthetic import make_mask_folder, tiny_config

from segarena.config import config_from_dict
from segarena.errors import TrainingError
from segarena.train.fold import TrainHooks
from segarena.train.run import fit, resume

pytestmark = pytest.mark.slow  # every test trains

# what a resumed or repeated run must reproduce (timings and speeds may differ)
STABLE = ("epoch", "train_loss", "lr", "val_miou")


def test_resume_after_a_kill_gives_the_same_metrics(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=12)
    config = config_from_dict(
        tiny_config(
            data,
            tmp_path / "runs",
            train={"epochs": 3, "batch_size": 4},
            augment={"train": [{"name": "HorizontalFlip", "params": {"p": 0.5}}]},
            scheduler={"name": "cosine", "warmup_epochs": 1},
        )
    )
    straight = fit(config, tmp_path / "runs").path

    def killed_in_epoch_two(epoch, learner):
        if epoch == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a pre-emption does mid-run

    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "runs2", hooks=TrainHooks(on_epoch_start=killed_in_epoch_two))
    killed = next(p for p in (tmp_path / "runs2" / "tiny").iterdir() if p.is_dir())
    assert not (killed / "summary.json").exists()
    assert [r["epoch"] for r in history(killed)] == [1]

    resumed = resume(killed).path
    assert resumed == killed
    assert history(resumed, keys=STABLE) == history(straight, keys=STABLE)
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((resumed / "summary.json").read_text())
    assert b["miou"] == a["miou"] and b["per_class_iou"] == a["per_class_iou"]


def test_same_seed_same_run_with_dataloader_workers(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=12)
    raw = tiny_config(
        data,
        tmp_path / "runs",
        train={"epochs": 2, "batch_size": 4},
        augment={
            "train": [
                {"name": "HorizontalFlip", "params": {"p": 0.5}},
                {"name": "RandomBrightnessContrast", "params": {}},
            ]
        },
    )
    raw["data"]["num_workers"] = 2
    first = fit(config_from_dict(raw), tmp_path / "a").path
    second = fit(config_from_dict(raw), tmp_path / "b").path
    assert history(first, keys=STABLE) == history(second, keys=STABLE)
    raw["train"]["seed"] = 1
    other = fit(config_from_dict(raw), tmp_path / "c").path
    assert history(other, keys=STABLE) != history(first, keys=STABLE)


def test_non_finite_loss_names_epoch_and_step(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    config = config_from_dict(
        tiny_config(data, tmp_path / "runs", split={"method": "holdout"}, train={"batch_size": 2})
    )  # 3 steps an epoch
    calls = {"n": 0}

    def nan_at_step_two(epoch, learner):
        loss = learner.loss_fn

        def forward(logits, target):
            calls["n"] += 1
            value = loss(logits, target)
            return value * float("nan") if calls["n"] == 2 else value

        learner.loss_fn = forward

    with pytest.raises(TrainingError, match=r"epoch 1, step 2"):
        fit(config, tmp_path / "runs", hooks=TrainHooks(on_epoch_start=nan_at_step_two))


def test_sigterm_stops_resumably_and_says_how_to_resume(tmp_path):
    """A scheduler's SIGTERM mid-run: exit 130 with the resume command and no traceback;
    the run is marked killed, and `--resume` finishes it from its saved epochs."""
    data = make_mask_folder(tmp_path / "data", n=8)
    raw = tiny_config(data, tmp_path / "runs", split={"method": "holdout"})
    raw["train"].update(epochs=15, batch_size=4)
    path = write_config(tmp_path / "exp.yaml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "segarena.cli", "train", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        metrics = next((tmp_path / "runs" / "tiny").glob("*/fold_0/metrics.jsonl"), None)
        if metrics is not None and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    run_dir = metrics.parent.parent
    assert proc.returncode == 130, err
    assert f"segarena train --resume {run_dir}" in err.replace("\n", "")
    assert "Traceback" not in err
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "killed"
    last = run_dir / "fold_0" / "last.ckpt"  # absent when stopped inside epoch 1
    saved = torch.load(last, weights_only=True)["state"]["epoch"] if last.is_file() else 0
    assert 0 <= saved < 15  # metrics.jsonl is written just before last.ckpt

    result = run_cli("train", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in history(run_dir)] == list(range(1, 16))
    assert "status" not in json.loads((run_dir / "run.json").read_text())
