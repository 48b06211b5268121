"""Training in several processes (DDP over gloo on the CPU), as real `segarena` commands.

Fabric starts the other processes by running the command line again, so every run here is
a subprocess (`python -m segarena.cli`). One intra-op thread per process: the runs compare
float results, and the test machine's two cores are shared.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import miou_of, only_run_dir, run_cli, write_config
from synthetic import corrupt_pixels, make_mask_folder, tiny_config

from segarena.data.sampling import RankShard

CORES = len(os.sched_getaffinity(0))
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="two CPU processes need two cores")
RUN_TIMEOUT_S = 150  # one training command; a hang fails the test instead of the CI job
SEGARENA = [sys.executable, "-m", "segarena.cli"]
# The launcher variables of an outer job must not reach the runs started here
LAUNCH_VARS = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK",
               "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "GROUP_RANK")  # fmt: skip

# A model whose result does not depend on how the batch is split: GroupNorm instead of
# BatchNorm (per-process batch statistics would differ from the global batch's), a timm
# encoder (its unused stages are dropped, so DDP sees no parameter without a gradient).
GROUP_NORM_MODEL = {
    "arch": "Unet",
    "encoder": "tu-resnet18",
    "kwargs": {
        "encoder_depth": 3,
        "decoder_channels": [32, 16, 8],
        "decoder_use_norm": "identity",
        "norm_layer": "groupnorm",
    },
}


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def segarena(*args, **popen) -> subprocess.Popen:
    """`segarena ARGS` started as a subprocess (stdout and stderr captured as text)."""
    return subprocess.Popen(
        [*SEGARENA, *map(str, args)], env=env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    """Wait for `proc`; (exit code, stdout + stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if _own_group(proc) else proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"no exit within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out + err


def _own_group(proc: subprocess.Popen) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def train(config: Path, *args) -> str:
    code, output = finish(segarena("train", config, *args, start_new_session=True))
    assert code == 0, output
    return output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 17 images: 12 train (3 global batches of 4) and 5 validation, an odd count that two
    # processes share unevenly (3 + 2) with nothing padded
    return make_mask_folder(tmp_path_factory.mktemp("ddp") / "data", n=17, size=32)


def same_batch_config(data: Path, out: Path, devices: int) -> Path:
    """A deterministic config: no augmentation, a global batch of 4 whatever the process
    count, cross-entropy (a per-pixel mean: the mean of two equal halves' means is the mean
    of the whole), GroupNorm; with EMA and SWA, which every process must hold the same."""
    raw = tiny_config(
        data, out,
        split={"method": "holdout", "val_ratio": 0.29},
        loss={"terms": [{"name": "ce"}]},
        train={"epochs": 4, "batch_size": 4, "seed": 0, "accelerator": "cpu",
               "devices": devices, "ema": {"decay": 0.9}, "swa": {"start_epoch": 3}},
    )  # fmt: skip
    raw["model"] = GROUP_NORM_MODEL
    return write_config(out.parent / f"{out.name}.yaml", raw)


def fold_files(run_dir: Path) -> dict:
    """What a run's fold 0 holds: its result, metrics, OOF arrays and per-image matrices."""
    fold = run_dir / "fold_0"
    return {
        "result": json.loads((fold / "result.json").read_text()),
        "metrics": [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()],
        "oof": {p.name: np.load(p) for p in sorted((fold / "oof").glob("*.npy"))},
        "ids": json.loads((fold / "per_image_ids.json").read_text()),
        "cms": np.load(fold / "per_image_cm.npy"),
        "ema": torch.load(fold / "ema.ckpt", weights_only=True)["model"],
        "swa": torch.load(fold / "swa.ckpt", weights_only=True)["model"],
    }


@pytest.fixture(scope="module")
def two_process_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two") / "out"
    output = train(same_batch_config(data, out, devices=2))
    assert len(re.findall("^mIoU ", output, re.M)) == 1, output  # rank 0 alone reports
    return only_run_dir(out)


def test_rank_shards_split_each_batch_of_one_process():
    """Two processes' batches of one step hold the items of one process's batch, and the
    order is the one a one-process loader (same generator, same seed) draws."""
    size, batch = 10, 4
    generator = torch.Generator()
    loader = torch.utils.data.DataLoader(range(size), batch, shuffle=True, generator=generator)
    generator.manual_seed(3)
    one = [b.tolist() for b in loader]
    shards = []
    for rank in (0, 1):
        generator.manual_seed(3)
        shards.append(list(RankShard(size, rank, 2, generator)))
    assert [len(s) for s in shards] == [5, 5]
    flat = [i for b in one for i in b]
    assert shards[0] == flat[0::2] and shards[1] == flat[1::2]  # padded to 10: no repeat
    assert sorted(shards[0][:2] + shards[1][:2]) == sorted(one[0])
    odd = [list(RankShard(5, rank, 2, generator)) for rank in (0, 1)]
    assert len(odd[0]) == len(odd[1]) == 3  # 5 padded to 6 by repeating the first item


@needs_two_cores
@pytest.mark.slow
def test_two_processes_match_one(data, tmp_path, two_process_run):
    """The same config on 1 and 2 processes: the same confusion matrix, per-image matrices
    and OOF files. Each validation image is scored once: 5 images, 3 + 2 per process.
    Tolerance: DDP averages the two halves' gradients, so updates equal one process's up to
    float summation order. Measured here: epoch losses within 1e-7 (relative), weights
    within 4e-7, mIoU, matrices and uint8 OOF files identical. The bounds below leave room
    for other CPUs' float kernels: losses 1e-6, weights 1e-5, OOF probabilities 1/255, and
    the matrices (which count argmaxes) exactly."""
    out = tmp_path / "one"
    train(same_batch_config(data, out, devices=1))
    one, two = fold_files(only_run_dir(out)), fold_files(two_process_run)
    assert len(two["ids"]) == len(set(two["ids"])) == 5
    assert two["ids"] == one["ids"]  # the one-process order
    np.testing.assert_array_equal(two["cms"], one["cms"])
    assert two["result"]["confusion"] == one["result"]["confusion"]
    np.testing.assert_array_equal(two["cms"].sum(0), np.array(two["result"]["confusion"]))
    assert two["oof"].keys() == one["oof"].keys() and len(two["oof"]) == 5
    for name, probs in two["oof"].items():
        diff = np.abs(probs.astype(int) - one["oof"][name].astype(int)).max()
        assert diff <= 1, (name, diff)
    for a, b in zip(one["metrics"], two["metrics"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_miou"] == pytest.approx(b["val_miou"], abs=1e-6)
    for key in ("ema", "swa"):
        for name, tensor in one[key].items():
            torch.testing.assert_close(two[key][name], tensor, rtol=0, atol=1e-5)
    summary = json.loads((two_process_run / "summary.json").read_text())
    assert summary["miou"] == pytest.approx(one["result"]["miou"], abs=1e-6)


@needs_two_cores
@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_same_result(data, tmp_path, two_process_run):
    """SIGKILL every process of a 2-process run after its first epoch was logged, resume:
    the files equal the uninterrupted run's bit for bit (each process's sampler epoch and
    random streams come back with the epoch)."""
    out = tmp_path / "killed"
    config = same_batch_config(data, out, devices=2)
    proc = segarena("train", config, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not list(out.glob("tiny/*/fold_0/metrics.jsonl")) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its child: a lost machine
    proc.communicate()
    run_dir = only_run_dir(out)
    assert not (run_dir / "summary.json").exists()  # it was killed mid-run
    output = train("--resume", run_dir)
    assert "resuming after epoch" in output or "fold 0 epoch 1" in output
    resumed, whole = fold_files(run_dir), fold_files(two_process_run)
    assert resumed["result"]["confusion"] == whole["result"]["confusion"]
    keys = ("epoch", "train_loss", "lr", "val_miou", "val_per_class_iou")
    assert [{k: r[k] for k in keys} for r in resumed["metrics"]] == [
        {k: r[k] for k in keys} for r in whole["metrics"]
    ]
    assert resumed["ids"] == whole["ids"]
    np.testing.assert_array_equal(resumed["cms"], whole["cms"])
    for name, probs in whole["oof"].items():
        np.testing.assert_array_equal(resumed["oof"][name], probs)
    for key in ("ema", "swa"):
        for name, tensor in whole[key].items():
            assert torch.equal(resumed[key][name], tensor), (key, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_two_cores
@pytest.mark.slow
def test_torchrun_two_nodes_record_one_run(data, tmp_path):
    """`torchrun --nnodes 2` as two launchers (node ranks 0 and 1) on 127.0.0.1: one run
    directory, one MLflow run. BatchNorm with EMA and SWA: SWA's BN statistics are
    averaged over both processes' images, and the run checks that both hold the same."""
    out = tmp_path / "out"
    raw = tiny_config(
        data, out, split={"method": "holdout", "val_ratio": 0.29},
        train={"epochs": 2, "batch_size": 4, "seed": 0, "accelerator": "cpu",
               "ema": {"decay": 0.9}, "swa": {"start_epoch": 2}},
        records={"out": str(out), "mlflow": True},
    )  # fmt: skip
    raw["model"] = {**GROUP_NORM_MODEL, "kwargs": {"encoder_depth": 3,
                                                   "decoder_channels": [32, 16, 8]}}  # fmt: skip
    config = write_config(tmp_path / "bn.yaml", raw)
    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run"]  # the `torchrun` command
    options = f"--nnodes 2 --nproc-per-node 1 --master-addr 127.0.0.1 --master-port {port}"
    nodes = [
        subprocess.Popen(
            [*launcher, *options.split(), "--node-rank", str(rank)]
            + ["-m", "segarena.cli", "train", str(config)],
            env=env(),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for rank in (0, 1)
    ]
    results = [finish(node) for node in nodes]
    assert [code for code, _ in results] == [0, 0], results
    run_dir = only_run_dir(out)
    # the job's first process alone prints (Fabric.print would print once per node)
    for line, count in (("^mIoU ", 1), ("^run directory: ", 2), ("^fold 0: ", 1)):
        assert [len(re.findall(line, out, re.M)) for _, out in results] == [count, 0], line
    summary = json.loads((run_dir / "summary.json").read_text())
    swa = np.array(json.loads((run_dir / "fold_0" / "result.json").read_text())["swa_confusion"])
    # the SWA model was scored on both nodes' validation images (3 + 2 of 32 x 32), not on
    # one node's share, and the summary's swa_miou is that matrix's mIoU
    assert swa.sum() == 5 * 32 * 32
    assert 0 < summary["swa_miou"] <= 1
    assert summary["swa_miou"] == pytest.approx(miou_of(swa)[0], abs=1e-12)
    assert len(list((run_dir / "fold_0" / "oof").glob("*.npy"))) == 5
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


@needs_two_cores
@pytest.mark.slow
def test_a_rank_that_fails_stops_the_job(data, tmp_path):
    """Rank 1 alone meets an undecodable validation image (the second: validation image i
    goes to rank i % 2): the job ends at once, exit code 2 (a UserError), with rank 1's
    message; rank 0 says which rank stopped and marks the run failed."""
    broken = tmp_path / "data"
    make_mask_folder(broken, n=17, size=32)
    out = tmp_path / "out"
    config = same_batch_config(broken, out, devices=2)
    assert run_cli("split", config).exit_code == 0
    with (out / "tiny" / "folds.csv").open() as f:
        val = [row["id"] for row in csv.DictReader(f) if row["fold"] == "0"]
    corrupt_pixels(broken / "images" / f"{val[1]}.png")
    start = time.monotonic()
    code, output = finish(segarena("train", config, start_new_session=True), timeout=90)
    assert code == 2, output
    assert time.monotonic() - start < 60
    assert f"rank 1: {broken / 'images' / val[1]}.png: cannot read the image" in output
    assert "process rank 1 stopped with exit code 2" in output
    info = json.loads((only_run_dir(out) / "run.json").read_text())
    assert info["status"] == "failed" and "rank 1" in info["reason"]


def bad(tmp_path: Path, data: Path, debug: bool = False, **train) -> str:
    """A 2-process config refused before any process starts: exit 2 and its one message."""
    raw = tiny_config(data, tmp_path / "out", train={"accelerator": "cpu", **train})
    config = write_config(tmp_path / "bad.yaml", raw)
    result = run_cli("train", config, *(["--debug"] if debug else []))
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out" / "tiny").exists()  # no run directory
    assert result.output.count("error:") == 1
    return result.output


def test_devices_beyond_the_machine_are_refused(data, tmp_path):
    assert f"has {CORES} CPU core(s)" in bad(tmp_path, data, devices=CORES + 1)
    gpus = torch.cuda.device_count()
    output = bad(tmp_path, data, accelerator="gpu", devices=gpus + 1)
    assert f"train.devices={gpus + 1} with train.accelerator=gpu" in output
    assert f"has {gpus} GPU(s)" in output


@needs_two_cores
def test_a_batch_that_does_not_split_is_refused(data, tmp_path):
    output = bad(tmp_path, data, devices=2, batch_size=5)
    assert "train.batch_size=5 does not divide across the 2 processes" in output
    assert "expected a multiple of 2" in output


@needs_two_cores
def test_debug_subsets_smaller_than_the_processes_are_refused(data, tmp_path):
    output = bad(tmp_path, data, debug=True, devices=2, debug_samples=3)
    assert "--debug with 2 processes: train.debug_samples=3" in output
    assert "expected train.debug_samples >= 4" in output


@needs_two_cores
@pytest.mark.slow
def test_images_any_process_skips_are_all_listed(tmp_path):
    """data.on_bad_image: skip with 2 processes: 4 of the 12 training images cannot be
    decoded; each epoch deals them to both processes, and summary.json lists all 4, not
    only those rank 0 met."""
    broken = tmp_path / "data"
    make_mask_folder(broken, n=17, size=32)
    out = tmp_path / "out"
    config = same_batch_config(broken, out, devices=2)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["on_bad_image"] = "skip"
    config = write_config(config, raw)
    assert run_cli("split", config).exit_code == 0
    with (out / "tiny" / "folds.csv").open() as f:
        train_ids = [row["id"] for row in csv.DictReader(f) if row["fold"] != "0"]
    for image_id in train_ids[:4]:
        corrupt_pixels(broken / "images" / f"{image_id}.png")
    train(config)
    skipped = json.loads((only_run_dir(out) / "summary.json").read_text())["skipped_images"]
    expected = sorted(str(broken / "images" / f"{i}.png") for i in train_ids[:4])
    assert skipped == {"count": 4, "paths": expected}
