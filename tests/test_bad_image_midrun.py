"""An image that breaks after the start-up scan, mid-training (data.on_bad_image, issue 13).

The file is cut in half just before epoch 2 trains, in the main process, so the
DataLoader workers (num_workers 2) meet it as they would a file a sync or a full disk
broke. `stop` (the default) exits 2 naming it; `skip` leaves it out with one warning and
lists it in summary.json; a validation image stops the run either way.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import history, only_run_dir, run_cli, write_config
from synthetic import corrupt_pixels, make_mask_folder, tiny_config

from segarena.config import load_config
from segarena.train import parts
from segarena.train.fold import FoldTrainer, TrainHooks
from segarena.train.run import fit, resume

pytestmark = pytest.mark.slow  # every test trains


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header stays


@pytest.fixture
def break_before_epoch_2(monkeypatch):
    """break_before_epoch_2(split) cuts the first image of the fold's `split` ("train" or
    "val") just before epoch 2; returns a dict that will hold the broken path."""
    broken = {}

    def arm(split: str) -> dict:
        real = FoldTrainer.train_epoch

        def train_epoch(self):
            if self.state.epoch == 1 and not broken:
                broken["path"] = getattr(self.data, split)[0].image_path
                truncate(broken["path"])
            return real(self)

        monkeypatch.setattr(FoldTrainer, "train_epoch", train_epoch)
        return broken

    return arm


def config(tmp_path: Path, workers: int, **data) -> Path:
    raw = tiny_config(make_mask_folder(tmp_path / "data", n=8, size=32), tmp_path / "runs")
    raw["split"] = {"method": "holdout", "val_ratio": 0.25}
    raw["train"].update(epochs=3, batch_size=2)
    raw["data"].update(num_workers=workers, **data)
    return write_config(tmp_path / "c.yaml", raw)


@pytest.mark.parametrize("workers", [0, 2])
def test_stop_ends_the_run_naming_the_file(tmp_path, break_before_epoch_2, workers):
    broken = break_before_epoch_2("train")
    result = run_cli("train", config(tmp_path, workers))
    assert result.exit_code == 2, result.output
    assert f"error: {broken['path']}: cannot read the image" in result.output
    assert "Traceback" not in result.output and "DataLoader worker" not in result.output
    run_dir = only_run_dir(tmp_path / "runs")
    assert [r["epoch"] for r in history(run_dir)] == [1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["reason"].startswith(str(broken["path"]))


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_leaves_the_image_out_and_lists_it(tmp_path, break_before_epoch_2, workers):
    broken = break_before_epoch_2("train")
    result = run_cli("train", config(tmp_path, workers, on_bad_image="skip"))
    assert result.exit_code == 0, result.output
    path = str(broken["path"])
    warnings = [line for line in result.output.splitlines() if "warning: skipped" in line]
    assert len(warnings) == 1 and path in warnings[0], result.output  # epochs 2 and 3 met it
    assert "data.on_bad_image: skip" in warnings[0]
    run_dir = only_run_dir(tmp_path / "runs")
    assert [r["epoch"] for r in history(run_dir)] == [1, 2, 3]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_images"] == {"count": 1, "paths": [path]}
    fold = json.loads((run_dir / "fold_0" / "result.json").read_text())
    assert fold["skipped_images"] == [path]


def test_skip_counts_nothing_when_every_image_reads(tmp_path):
    result = run_cli("train", config(tmp_path, 0, on_bad_image="skip"), "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    assert summary["skipped_images"] == {"count": 0, "paths": []}
    assert "warning" not in result.output


def test_a_validation_image_stops_the_run_even_with_skip(tmp_path, break_before_epoch_2):
    broken = break_before_epoch_2("val")
    result = run_cli("train", config(tmp_path, 2, on_bad_image="skip"))
    assert result.exit_code == 2, result.output
    assert f"error: {broken['path']}: cannot read the image" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("on_bad_image", ["stop", "skip"])
def test_with_data_cache_an_undecodable_image_stops_or_is_skipped(
    tmp_path, monkeypatch, on_bad_image
):
    """data.cache decodes every training image before epoch 1; one that passes the scan
    but cannot be decoded stops the run (stop) or is left out like a mid-run break (skip)."""
    broken = {}
    real = parts.train_dataset

    def train_dataset(config, samples):
        broken["path"] = samples[0].image_path
        corrupt_pixels(broken["path"])
        return real(config, samples)

    monkeypatch.setattr(parts, "train_dataset", train_dataset)
    result = run_cli("train", config(tmp_path, 2, cache=True, on_bad_image=on_bad_image))
    summary = only_run_dir(tmp_path / "runs") / "summary.json"
    if on_bad_image == "stop":
        assert result.exit_code == 2, result.output
        assert f"error: {broken['path']}: cannot read the image" in result.output
        assert not summary.exists()
    else:
        assert result.exit_code == 0, result.output
        skipped = json.loads(summary.read_text())["skipped_images"]
        assert skipped == {"count": 1, "paths": [str(broken["path"])]}
    assert "Traceback" not in result.output


def test_a_resumed_run_still_lists_what_it_skipped_before_the_kill(tmp_path):
    """The skipped paths travel in last.ckpt: an image skipped in epoch 2 and repaired
    before the resume is still listed (epoch 2 did train without it)."""
    skip = load_config(config(tmp_path, 0, on_bad_image="skip"), [])
    broken = {}

    def hook(epoch, learner):
        if epoch == 2:  # a training image (holdout: fold 0 validates) breaks
            with (tmp_path / "runs" / "tiny" / "folds.csv").open(newline="") as f:
                image_id = next(r["id"] for r in csv.DictReader(f) if r["fold"] != "0")
            broken["path"] = tmp_path / "data" / "images" / f"{image_id}.png"
            broken["bytes"] = broken["path"].read_bytes()
            truncate(broken["path"])
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(skip, tmp_path / "runs", hooks=TrainHooks(on_epoch_start=hook))
    run_dir = only_run_dir(tmp_path / "runs")
    broken["path"].write_bytes(broken["bytes"])  # repaired before the resume
    resume(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_images"] == {"count": 1, "paths": [str(broken["path"])]}
