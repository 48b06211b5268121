"""RunDir (the one owner of a run directory) and the atomic writes every file goes through."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from synthetic import tiny_config

from segarena.config import config_from_dict
from segarena.errors import UserError
from segarena.run_dir.folds import check_same_folds, same_folds
from segarena.run_dir.layout import FORMAT, RunDir
from segarena.run_dir.schema import RunInfo
from segarena.util.files import atomic_output, file_lock, write_json_atomic


@pytest.fixture
def run(tmp_path):
    run = RunDir.create(tmp_path / "runs", "tiny", debug=False)
    run.write_config(config_from_dict(tiny_config(tmp_path / "data", tmp_path / "runs")))
    run.write_info(RunInfo(run_id=run.name, experiment="tiny", folds=[0], debug=False))
    return run


def test_a_new_run_records_its_format_and_reads_back(run):
    assert json.loads((run.path / "run.json").read_text())["format"] == FORMAT == 1
    assert run.config().experiment == "tiny"
    assert run.info().folds == [0] and run.summary() is None


def test_a_run_from_before_the_format_version_reads_as_version_1(run):
    info = json.loads((run.path / "run.json").read_text())
    del info["format"]
    (run.path / "run.json").write_text(json.dumps(info))
    assert run.check().config().experiment == "tiny"


def test_a_run_of_a_newer_format_is_refused_with_the_versions(run):
    write_json_atomic(run.path / "run.json", {"run_id": run.name, "format": FORMAT + 1})
    with pytest.raises(UserError) as err:
        run.config()
    message = str(err.value)
    assert str(run.path / "run.json") in message
    assert f"run format {FORMAT + 1}" in message and f"up to {FORMAT}" in message


def test_a_folder_that_is_not_a_run_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match=r"not a segarena run directory.*missing run\.json"):
        RunDir(tmp_path).check()


def test_two_runs_started_in_one_second_get_their_own_folders(tmp_path):
    first = RunDir.create(tmp_path, "exp", debug=True)
    second = RunDir.create(tmp_path, "exp", debug=True)
    assert first.path != second.path and second.name == f"{first.name}-2"


def test_fold_dirs_sort_by_number_not_by_name(run):
    for k in (10, 2, 0):
        run.fold_dir(k).mkdir()
    (run.path / "fold_x").mkdir()
    assert [k for k, _ in run.fold_dirs()] == [0, 2, 10]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "pseudo"
    out.mkdir()
    (out / "stale.png").write_text("x")
    with atomic_output(out) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo"]


# A format-1 run as segarena wrote it before the records were typed: literal JSON, the key
# sets of train/experiment.py + records/team.py (run.json), train/fold.py (result.json),
# train/state.py (metrics.jsonl) and train/summary.py (summary.json).
OLD_RUN_JSON = """{"run_id": "20260101-000001", "experiment": "tiny", "folds": [0], "debug": false,
 "mlflow_run_id": "abc123", "pseudo": [], "user": "ana",
 "fingerprint": {"sha256": "f00d", "config": {}, "data": "beef"},
 "store": {"uri": "sqlite:///runs/mlflow.db", "pending_sync": null}, "repeat_of": [],
 "weights": {"encoder": "resnet18", "encoder_weights": null, "file": null, "sha256": null}}"""
OLD_RESULT_JSON = """{"fold": 0, "best_epoch": 2, "epochs": 2, "miou": 0.5,
 "scores": {"miou": 0.5, "per_class_iou": [1.0, 0.0, null], "pixel_acc": 0.75},
 "confusion": [[3, 1, 0], [1, 0, 0], [0, 0, 0]], "train_images_per_s": 12.5,
 "data_wait_share": 0.1, "train_loss": [1.2, 0.9], "seconds": 4.2, "plan": null,
 "skipped_images": []}"""
OLD_METRICS_JSONL = (
    '{"epoch": 1, "train_loss": 1.2, "lr": 0.01, "images_per_s": 12.0, '
    '"data_wait_share": 0.1, "seconds": 2.0}\n'
    '{"epoch": 2, "train_loss": 0.9, "lr": 0.005, "images_per_s": 13.0, '
    '"data_wait_share": 0.1, "seconds": 2.2, "val_miou": 0.5, "val_pixel_acc": 0.75, '
    '"val_per_class_iou": [1.0, 0.0, null]}\n'
)
OLD_SUMMARY_JSON = """{"miou": 0.5, "miou_mean": 0.5, "miou_std": 0.0,
 "per_class_iou": {"background": 1.0, "a": 0.0, "b": null}, "pixel_acc": 0.75,
 "folds": [{"fold": 0, "miou": 0.5, "best_epoch": 2, "epochs": 2}], "epochs": 2,
 "train_images_per_s": 12.5, "data_wait_share": 0.1}"""


def old_run(tmp_path, **files: str) -> RunDir:
    """A format-1 run directory written by hand (run.json without `format`)."""
    run = RunDir(tmp_path / "runs" / "tiny" / "20260101-000001")
    run.fold_dir(0).mkdir(parents=True)
    raw = tiny_config(tmp_path / "data", tmp_path / "runs")
    run.write_config(config_from_dict(raw))
    texts = {
        "run.json": OLD_RUN_JSON,
        "summary.json": OLD_SUMMARY_JSON,
        "fold_0/result.json": OLD_RESULT_JSON,
        "fold_0/metrics.jsonl": OLD_METRICS_JSONL,
        **{name.replace("__", "/"): text for name, text in files.items()},
    }
    for name, text in texts.items():
        (run.path / name).write_text(text)
    return run


def test_a_format_1_run_reads_into_the_typed_records(tmp_path):
    run = old_run(tmp_path).check()
    info = run.info()
    assert (info.run_id, info.folds, info.debug, info.format) == ("20260101-000001", [0], False, 1)
    assert info.store.uri == "sqlite:///runs/mlflow.db" and info.store.synced_from is None
    summary = run.summary()
    assert summary.miou == 0.5 and summary.folds[0].best_epoch == 2
    assert summary.per_class_iou["b"] is None and summary.budget is None
    (result,) = run.fold_results()
    assert result.confusion[0] == [3, 1, 0] and result.plan is None and result.swa_miou is None
    assert [r.epoch for r in run.history(0)] == [1, 2] and run.history()[1].validated


def test_a_format_1_run_is_listed_and_rewritten_with_the_same_keys(tmp_path):
    from segarena.report.runs_table import run_row

    run = old_run(tmp_path)
    row = run_row(run.path)
    assert (row["status"], row["oof_miou"], row["train_seconds"]) == ("finished", 0.5, 4.2)
    old_keys = set(json.loads(OLD_RUN_JSON))
    run.write_info(run.info())  # as sync and resume do
    assert set(json.loads((run.path / "run.json").read_text())) == old_keys | {"format"}
    run.write_summary(run.summary())
    assert json.loads((run.path / "summary.json").read_text()) == json.loads(OLD_SUMMARY_JSON)
    run.write_fold_result(0, run.fold_result(0))
    assert json.loads(run.fold_dir(0).joinpath("result.json").read_text()) == json.loads(
        OLD_RESULT_JSON
    )


def test_keys_this_version_does_not_know_are_ignored(tmp_path):
    summary = json.loads(OLD_SUMMARY_JSON) | {"calibration": {"ece": 0.1}}
    info = json.loads(OLD_RUN_JSON) | {"host": "gpu-7"}
    run = old_run(tmp_path, **{"summary.json": json.dumps(summary), "run.json": json.dumps(info)})
    assert run.check().summary().miou == 0.5 and run.info().user == "ana"
    run.write_info(run.info())  # written with this version's keys only
    assert "host" not in json.loads((run.path / "run.json").read_text())


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("summary.json", OLD_SUMMARY_JSON.replace('"miou": 0.5,', '"miou": "abc",', 1), "miou"),
        ("fold_0__result.json", OLD_RESULT_JSON.replace('"epochs": 2', '"epochs": []'), "epochs"),
        ("run.json", OLD_RUN_JSON.replace('"folds": [0]', '"folds": "all"'), "folds"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_file_and_the_key(tmp_path, name, text, where):
    run = old_run(tmp_path, **{name: text})
    with pytest.raises(UserError) as err:
        run.info(), run.summary(), run.fold_results()
    message = str(err.value)
    assert message.startswith(str(run.path / name.replace("__", "/")) + ": ")
    assert f"{where}: " in message


def test_runs_of_one_split_pass_and_another_split_is_named(tmp_path):
    base, same, other, bare = (tmp_path / name for name in ("base", "same", "other", "bare"))
    for run, text in (
        (base, "id,fold\na,0\n"),
        (same, "id,fold\na,0\n"),
        (other, "id,fold\na,1\n"),
    ):
        run.mkdir()
        (run / "folds.csv").write_text(text)
    bare.mkdir()
    assert same_folds(base, same) and not same_folds(base, other) and not same_folds(base, bare)
    check_same_folds([base, same], "expected one split")
    with pytest.raises(UserError) as error:
        check_same_folds([base, other], "expected one split", "arm 'x': ", "the baseline's ")
    assert str(error.value) == (
        f"arm 'x': {other / 'folds.csv'}: differs from the baseline's {base / 'folds.csv'}; "
        "expected one split"
    )
    for runs in ([bare, base], [base, bare]):
        with pytest.raises(UserError, match="no folds.csv; expected a run directory"):
            check_same_folds(runs, "expected one split")


def test_a_file_lock_holds_off_another_process_until_released(tmp_path):
    lock, mark = tmp_path / "new" / ".x.lock", tmp_path / "released"  # its folder is created
    hold = "with file_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(0.6)\n"
    child = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, sys, time\nfrom segarena.util.files import "
         f"file_lock\n{hold}    pathlib.Path(sys.argv[2]).touch()", str(lock), str(mark)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline() == "held\n"
        with file_lock(lock):
            assert mark.exists()  # we got in only once the child was done
    finally:
        child.wait(timeout=30)
    assert lock.is_file()  # left in place: waiters lock the same file
