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
from segarena.util.files import atomic_output, file_lock, write_json_atomic


@pytest.fixture
def run(tmp_path):
    run = RunDir.create(tmp_path / "runs", "tiny", debug=False)
    run.write_config(config_from_dict(tiny_config(tmp_path / "data", tmp_path / "runs")))
    run.write_info({"run_id": run.name, "folds": [0]})
    return run


def test_a_new_run_records_its_format_and_reads_back(run):
    assert json.loads((run.path / "run.json").read_text())["format"] == FORMAT == 1
    assert run.config().experiment == "tiny"
    assert run.info()["folds"] == [0] and run.summary() == {}


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
