"""SIGKILL at seeded points of a run, then `--resume`: the same final results (issue 13).

A real `segarena train` process (tests/kill_at.py) is killed, as the OOM killer would kill
it, the N-th time it reaches a point: an optimizer update, a validation pass, the write of
last.ckpt (its temporary file half written), SWA's BN update and the write of an
out-of-fold file. N is drawn for each point by a seeded RNG. `segarena train --resume`
must then finish the run with the same summary metrics, per fold and per class, and the
same out-of-fold files, byte for byte, as an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import history, miou_of, only_run_dir, write_config
from kill_at import POINTS
from synthetic import make_mask_folder, tiny_config

from segarena.util.files import append_jsonl, read_jsonl

pytestmark = pytest.mark.slow  # every test trains

KILL_AT = Path(__file__).with_name("kill_at.py")
# 8 images in 2 folds, batches of 2, 2 epochs, SWA from epoch 2: how often each point is
# reached in the whole run (both folds)
UPDATES = 2 * 2 * 2  # folds x epochs x batches of 4 training images
VALIDATIONS = 2 * (2 + 2) * 2  # folds x (epochs + SWA and best rescored) x batches
REACHED = {"train-step": UPDATES, "validation": VALIDATIONS, "checkpoint": 2 * 2,
           "swa-bn": 2, "oof": 2 * 4}  # fmt: skip
rng = random.Random(13)
KILLS = [(point, rng.randint(1, REACHED[point])) for point in POINTS]
# what must not change (timings, speeds and seconds do)
STABLE_SUMMARY = ("miou", "miou_mean", "miou_std", "per_class_iou", "pixel_acc", "folds",
                  "epochs", "swa_miou")  # fmt: skip
STABLE_EPOCH = ("epoch", "train_loss", "lr", "val_miou", "val_per_class_iou")


def segarena(point: str, n: int, *args) -> subprocess.CompletedProcess:
    command = [sys.executable, str(KILL_AT), point, str(n), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def config_file(root: Path) -> Path:
    raw = tiny_config(make_mask_folder(root / "data", n=8, size=32), root / "runs")
    raw["train"].update(epochs=2, batch_size=2, swa={"start_epoch": 2, "lr": 1e-3})
    return write_config(root / "c.yaml", raw)


def results(run_dir: Path) -> dict:
    """What an interrupted and resumed run must reproduce exactly."""
    summary = json.loads((run_dir / "summary.json").read_text())
    folds = sorted(run_dir.glob("fold_*"))
    return {
        "summary": json.dumps({k: summary.get(k) for k in STABLE_SUMMARY}),
        "history": [history(run_dir, int(f.name[5:]), STABLE_EPOCH) for f in folds],
        "oof": {
            p.relative_to(run_dir).as_posix(): p.read_bytes()
            for p in sorted(run_dir.glob("fold_*/oof/*.npy"))
        },  # fmt: skip
        "per_image": [(f / "per_image_cm.npy").read_bytes() for f in folds],
    }


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("straight")
    done = segarena("none", 0, "train", config_file(root), "--folds", "all")
    assert done.returncode == 0, done.stderr
    run = only_run_dir(root / "runs")
    found = results(run)
    assert len(found["oof"]) == 8
    # swa_miou pools both folds' SWA confusion matrices (4 validation images of 32 x 32
    # each), so the runs compared below do compare a real SWA score
    swa = [
        np.array(json.loads((run / f"fold_{k}" / "result.json").read_text())["swa_confusion"])
        for k in (0, 1)
    ]
    assert [m.sum() for m in swa] == [4 * 32 * 32] * 2
    swa_miou = json.loads(found["summary"])["swa_miou"]
    assert 0 < swa_miou <= 1
    assert swa_miou == pytest.approx(miou_of(swa[0] + swa[1])[0], abs=1e-12)
    return found


def test_the_kill_points_are_seeded_and_cover_every_point():
    assert len(KILLS) >= 5 and {point for point, _ in KILLS} == set(POINTS)
    rerun = random.Random(13)
    assert KILLS == [(p, rerun.randint(1, REACHED[p])) for p in POINTS]


@pytest.mark.parametrize(("point", "n"), KILLS, ids=[f"{p}-{n}" for p, n in KILLS])
def test_a_run_killed_at_a_point_resumes_to_the_same_results(point, n, straight, tmp_path):
    killed = segarena(point, n, "train", config_file(tmp_path), "--folds", "all")
    assert killed.returncode == -signal.SIGKILL, f"{point} #{n} never reached:\n{killed.stderr}"
    run_dir = only_run_dir(tmp_path / "runs")
    assert not (run_dir / "summary.json").exists()
    if point == "checkpoint":  # the kill came mid-write: the rename never happened
        assert list(run_dir.glob("fold_*/.last.ckpt.tmp"))
    for path in run_dir.glob("fold_*/oof/*.npy"):  # a killed write leaves no torn file
        np.load(path)

    resumed = segarena("none", 0, "train", "--resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert only_run_dir(tmp_path / "runs") == run_dir  # resumed in place, nothing new
    assert results(run_dir) == straight
    assert not list(run_dir.rglob("*.tmp"))  # the half-written files are gone
    assert "status" not in json.loads((run_dir / "run.json").read_text())


def test_a_metrics_line_torn_by_a_kill_is_left_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1})
    with path.open("a") as f:
        f.write('{"epoch": 2, "train_lo')  # killed mid-append
    assert read_jsonl(path) == [{"epoch": 1}]
