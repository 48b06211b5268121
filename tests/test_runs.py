"""segarena runs: every run directory listed, as a table and as CSV that parses back."""

from __future__ import annotations

import csv
import io
import json

from fake_runs import fake_run, masks, predictions
from helpers import run_cli
from synthetic import make_mask_folder


def make_runs(tmp_path):
    """Two finished runs (other lr, other image size) and one that never finished."""
    data = make_mask_folder(tmp_path / "data", n=12, size=32)
    out = tmp_path / "runs"
    truth = masks(data)
    finished = [
        fake_run(out, data, "20260101-000001", predictions(truth, 0.3, seed=1)),
        fake_run(
            out,
            data,
            "20260101-000002",
            predictions(truth, 0.9, seed=2),
            optimizer={"lr": 0.01},
            data={"image_size": [32, 48]},
        ),
    ]
    unfinished = out / "tiny" / "20260101-000003"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((finished[0] / "config.yaml").read_text())
    run_info = {"run_id": unfinished.name, "experiment": "tiny", "folds": [0, 1]}
    (unfinished / "run.json").write_text(json.dumps(run_info))
    (out / "tiny" / "folds.csv").write_text("id,group,fold,classes\n")  # not a run
    return out, finished, unfinished


def test_csv_lists_every_run_and_parses_back(tmp_path):
    out, finished, unfinished = make_runs(tmp_path)
    result = run_cli("runs", out, "--csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["run_id"] for r in rows] == [p.name for p in [*finished, unfinished]]
    for row, run_dir in zip(rows, finished):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert float(row["oof_miou"]) == summary["miou"]
        assert float(row["cv_miou"]) == summary["miou_mean"]
        assert row["status"] == "finished" and row["path"] == str(run_dir)
        assert float(row["train_seconds"]) == 2.5  # fold_0/metrics.jsonl seconds
    assert float(rows[1]["oof_miou"]) > float(rows[0]["oof_miou"])
    assert [r["lr"] for r in rows] == ["0.003", "0.01", "0.003"]
    assert [r["image_size"] for r in rows] == ["native", "32x48", "native"]
    assert rows[0]["loss"] == "ce + 0.5*dice" and rows[0]["encoder"] == "resnet18"
    assert rows[0]["folds"] == "0 of 2" and rows[2]["folds"] == "0 1 of 2"
    assert rows[2]["status"] == "unfinished" and rows[2]["oof_miou"] == ""


def test_table_shows_each_run(tmp_path):
    out, finished, unfinished = make_runs(tmp_path)
    result = run_cli("runs", out)
    assert result.exit_code == 0, result.output
    for run_dir in [*finished, unfinished]:
        assert run_dir.name in result.output
    summary = json.loads((finished[1] / "summary.json").read_text())
    assert f"{summary['miou']:.4f} ± 0.0000" in result.output
    assert "unfinished" in result.output


def test_missing_folder_is_a_user_error(tmp_path):
    result = run_cli("runs", tmp_path / "nothing")
    assert result.exit_code == 2
    assert f"folder {tmp_path / 'nothing'} does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = run_cli("runs", tmp_path / "empty", "--csv")
    assert result.exit_code == 0 and result.output.startswith("experiment,run_id,")
    assert len(result.output.splitlines()) == 1
