"""A team's shared store on a real MLflow tracking server: who ran what, no experiment
trained twice, the offline fallback and `sync`, leaderboard scores next to CV.

One `segarena server` (the real `mlflow server`, SQLite and an artifact folder in a
temporary folder, on a free port of 127.0.0.1) serves the whole module; it is stopped at
teardown, also when a test fails. Each test trains with its own seed, so its experiments
are its own on the shared server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import check_page, chromium
from helpers import run_cli, write_config
from synthetic import make_mask_folder, tiny_config

from segarena.records.server import server_installed

NO_SERVER = "the full mlflow package (pip install 'segarena[server]') is not installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`segarena server` on a free port; yields its tracking URI."""
    if not server_installed():
        pytest.skip(NO_SERVER)
    store = tmp_path_factory.mktemp("store")
    port = free_port()
    log = open(store / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "segarena.cli", "server", "--port", str(port), "--store", store],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown stops mlflow's children too
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not healthy(uri):
            assert process.poll() is None, (store / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not answer /health in 120 s"
            time.sleep(0.25)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
        log.close()


def process_tree(root: int) -> set[int]:
    """`root` and every process below it (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended while we looked
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a server
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process tree in /proc")
def test_sigterm_to_segarena_server_stops_the_mlflow_server_and_frees_the_port(tmp_path):
    """A SIGTERM to `segarena server` alone (a service manager's stop, `kill PID`) stops the
    MLflow server it started, workers included: none is left under PID 1 holding the port."""
    if not server_installed():
        pytest.skip(NO_SERVER)
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    command = [sys.executable, "-m", "segarena.cli", "server", "--port", str(port),
               "--store", tmp_path / "store"]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    tree: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not healthy(f"http://127.0.0.1:{port}"):
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not answer /health in 120 s"
            time.sleep(0.25)
        tree = process_tree(process.pid)
        assert len(tree) >= 3  # segarena, mlflow server, its uvicorn
        process.send_signal(signal.SIGTERM)  # to segarena's process only, not its group
        assert process.wait(timeout=30) == 0
        deadline = time.monotonic() + 30
        while left := sorted(pid for pid in tree if running(pid)):
            assert time.monotonic() < deadline, f"left running after 30 s: {left}"
            time.sleep(0.1)
        assert port_is_free(port)
    finally:
        for pid in [p for p in tree if running(p)]:  # the old `segarena server` left them
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=15)
        log.close()


def test_sigint_to_serve_stops_the_whole_process_group(tmp_path):
    """Ctrl-C (SIGINT) to segarena reaches every process the server started, fast."""
    fake_server = ("import subprocess, time; child = subprocess.Popen(['sleep', '60']); "
                   "print(child.pid, flush=True); time.sleep(60)")  # fmt: skip
    command = f"[sys.executable, '-c', {fake_server!r}]"
    runner = ("import os, sys; from segarena.records.server import serve; "
              f"sys.exit(serve({command}, dict(os.environ)))")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    grandchild = None
    try:
        grandchild = int(process.stdout.readline())
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert not running(grandchild)  # `serve` returns once its whole group is gone
    finally:
        for pid in [p for p in (process.pid, grandchild) if p and running(p)]:
            os.kill(pid, signal.SIGKILL)  # what the test left, if it failed
        process.wait(timeout=15)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mask_folder(tmp_path_factory.mktemp("data"), n=4, size=32)


def team_config(data: Path, tmp_path: Path, seed: int, uri: str | None, **records) -> Path:
    """A one-epoch holdout run of seed `seed` recording to `uri`; returns the YAML path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = tiny_config(data, tmp_path / "runs")
    raw["split"] = {"method": "holdout", "val_ratio": 0.25}
    raw["train"] = {**raw["train"], "epochs": 1, "batch_size": 2, "seed": seed}
    raw["records"] = {"out": str(tmp_path / "runs"), "mlflow": True, "tracking_uri": uri,
                      **records}  # fmt: skip
    return write_config(tmp_path / f"seed{seed}.yaml", raw)


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def server_runs(uri: str, seed: int) -> list:
    """The server's active runs trained with `seed`, oldest first."""
    c = client(uri)
    ids = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(ids, f"params.`train.seed` = '{seed}'")
    return sorted(runs, key=lambda r: r.info.start_time)


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "tiny").glob("*") if p.is_dir()) if out.exists() else []


@pytest.mark.slow
def test_second_run_of_an_experiment_is_refused_and_force_marks_a_repeat(
    server, data, tmp_path, monkeypatch
):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    monkeypatch.setenv("USER", "alice")
    result = run_cli("train", team_config(data, alice, 11, server), "--out", alice / "runs")
    assert result.exit_code == 0, result.output
    first = run_dirs(alice / "runs")[0]
    miou = json.loads((first / "summary.json").read_text())["miou"]

    monkeypatch.setenv("USER", "bob")  # bob's own copy of the config, his own runs folder
    config = team_config(data, bob, 11, server)
    result = run_cli("train", config, "--out", bob / "runs")
    assert result.exit_code == 2
    [run] = server_runs(server, 11)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000))
    assert result.output.count("error:") == 1
    assert f"alice's run tiny/{first.name} (started {started}), mIoU {miou:.4f}" in result.output
    assert "--force" in result.output and run_dirs(bob / "runs") == []

    result = run_cli("train", config, "--out", bob / "runs", "--force")
    assert result.exit_code == 0, result.output
    original, repeat = server_runs(server, 11)
    assert original.data.tags["segarena.user"] == "alice" and original.info.status == "FINISHED"
    assert repeat.data.tags["segarena.user"] == "bob"
    assert repeat.data.tags["segarena.repeat_of"] == f"tiny/{first.name}"
    assert repeat.data.tags["segarena.fingerprint"] == original.data.tags["segarena.fingerprint"]
    info = json.loads((run_dirs(bob / "runs")[0] / "run.json").read_text())
    assert info["repeat_of"] == [f"tiny/{first.name}"] and info["user"] == "bob"
    # the record: params, metrics per epoch, summary, config and env as artifacts, git SHA
    assert original.data.params["train.seed"] == "11"
    assert original.data.metrics["miou"] == pytest.approx(miou)
    history = client(server).get_metric_history(original.info.run_id, "fold0/train_loss")
    assert [m.step for m in history] == [1]
    names = {a.path for a in client(server).list_artifacts(original.info.run_id)}
    assert {"summary.json", "config.yaml", "env.json"} <= names
    assert len(original.data.tags.get("mlflow.source.git.commit", "")) == 40


@pytest.mark.slow
def test_two_processes_starting_the_same_experiment_only_one_trains(server, data, tmp_path):
    """Two teammates (own runs folders) start the same config at once: one trains, the
    other exits 2 naming the run that goes on, and leaves no run directory behind."""
    procs = []
    for user in ("carol", "dave"):
        config = team_config(data, tmp_path / user, 12, server)
        command = [sys.executable, "-m", "segarena.cli", "train", str(config)]
        env = {**os.environ, "USER": user}
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env))  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    winner = [u for u, p in zip(("carol", "dave"), procs) if p.returncode == 0][0]
    loser_output = [o for o, p in zip(outputs, procs) if p.returncode == 2][0]
    assert f"{winner}'s run tiny/" in loser_output and loser_output.count("error:") == 1
    runs = server_runs(server, 12)
    assert [(r.data.tags["segarena.user"], r.info.status) for r in runs] == [(winner, "FINISHED")]
    loser = "dave" if winner == "carol" else "carol"
    assert run_dirs(tmp_path / loser / "runs") == []


@pytest.mark.slow
def test_claims_made_together_the_earliest_trains(server, data, tmp_path):
    """Both starts pass the check (neither sees the other yet); the claim decides."""
    from segarena.config import load_config
    from segarena.data.readers import read_samples
    from segarena.errors import UserError
    from segarena.records.team import check_store

    claims = []
    for user in ("erin", "frank"):
        config = load_config(team_config(data, tmp_path / user, 13, server, user=user))
        samples = read_samples(config.data, config.split)
        claims.append(check_store(config, tmp_path / user / "runs", samples, [0], False))
    dirs = [tmp_path / u / "runs" / "tiny" / "r" for u in ("erin", "frank")]
    for d in dirs:
        d.mkdir(parents=True)
    first = claims[0].take(dirs[0])
    with pytest.raises(UserError, match="erin's run tiny/r .* claimed the same experiment"):
        claims[1].take(dirs[1])
    assert dirs[0].is_dir() and not dirs[1].exists()
    [run] = server_runs(server, 13)  # frank's claim is deleted
    assert run.info.run_id == first["mlflow_run_id"] and run.data.tags["segarena.user"] == "erin"


@pytest.mark.slow
def test_offline_run_records_locally_then_sync_pushes_it_once(server, data, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "runs"
    result = run_cli("train", team_config(data, tmp_path, 14, dead), "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.count(f"tracking server {dead} does not answer") == 1
    info = json.loads((run_dirs(out)[0] / "run.json").read_text())
    assert info["store"]["pending_sync"] == dead
    local_run = client(f"sqlite:///{out / 'mlflow.db'}").get_run(info["mlflow_run_id"])
    assert local_run.data.tags["segarena.pending_sync"] == dead

    for pushed, present in ((1, 0), (0, 1)):  # the second sync finds it there: no duplicate
        result = run_cli("sync", out, "--to", server)
        assert result.exit_code == 0, result.output
        assert f"{pushed} run(s) pushed, {present} already there" in result.output
    [copy] = server_runs(server, 14)
    assert copy.data.tags["segarena.source_run"] == local_run.info.run_id
    assert copy.data.params == local_run.data.params and copy.info.status == "FINISHED"
    key = "fold0/train_loss"
    want = [(m.step, m.value) for m in client(f"sqlite:///{out / 'mlflow.db'}")
            .get_metric_history(local_run.info.run_id, key)]  # fmt: skip
    got = [(m.step, m.value) for m in client(server).get_metric_history(copy.info.run_id, key)]
    assert got == want
    info = json.loads((run_dirs(out)[0] / "run.json").read_text())
    assert info["store"]["uri"] == server and info["mlflow_run_id"] == copy.info.run_id

    # the local record changes after the sync: the server's copy now differs -> refused
    client(f"sqlite:///{out / 'mlflow.db'}").log_metric(local_run.info.run_id, key, 9.0, step=7)
    result = run_cli("sync", out, "--to", server)
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert "already holds a different run under the id of tiny/" in result.output
    assert len(server_runs(server, 14)) == 1


def test_unreachable_server_with_require_server_exits_2_before_any_file(data, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    config = team_config(data, tmp_path, 15, dead, require_server=True)
    result = run_cli("train", config, "--out", tmp_path / "runs")
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert f"records.tracking_uri {dead}: the tracking server does not answer" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_lb_records_a_score_against_the_submissions_runs(server, data, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "gina")
    out = tmp_path / "runs"
    assert run_cli("train", team_config(data, tmp_path, 16, server), "--out", out).exit_code == 0
    run = run_dirs(out)[0]
    sub = tmp_path / "sub.csv"
    result = run_cli("predict", run, "--images", data / "images", "--out", sub, "--workers", 0)
    assert result.exit_code == 0, result.output
    sidecar = json.loads((tmp_path / "sub.csv.segarena.json").read_text())
    assert sidecar["run_dirs"] == [str(run.resolve())] and sidecar["checkpoint"] == "best"
    assert sidecar["count"] == 4 and len(sidecar["sha256"]) == 64

    result = run_cli("lb", sub, "--public", "0.712", "--private", "0.705")
    assert result.exit_code == 0, result.output
    [entry] = [json.loads(line) for line in (out / "leaderboard.jsonl").read_text().splitlines()]
    cv = json.loads((run / "summary.json").read_text())["miou"]
    assert (entry["public"], entry["private"], entry["user"]) == (0.712, 0.705, "gina")
    assert entry["cv"] == pytest.approx(cv) and entry["sha256"] == sidecar["sha256"]
    [mlflow_run] = server_runs(server, 16)
    assert mlflow_run.data.metrics["lb_public"] == 0.712
    assert mlflow_run.data.metrics["lb_private"] == 0.705
    rows = list(__import__("csv").DictReader(run_cli("runs", out, "--csv").output.splitlines()))
    assert (rows[0]["lb_public"], rows[0]["lb_private"]) == ("0.712", "0.705")
    assert float(rows[0]["oof_miou"]) == pytest.approx(cv)
    table = run_cli("runs", out).output
    assert " LB " in table and "0.7120 / 0.7050" in table
    # the team's page, from the store: every teammate's scored submissions
    result = run_cli("lb", "--plot", "--store", server, "--out", tmp_path / "team.html")
    assert result.exit_code == 0 and "CV vs LB over 1 submissions" in result.output
    assert "sub.csv" in (tmp_path / "team.html").read_text()

    # bad input: a score outside mIoU's range, a submission changed since predict, a file
    # predict did not write
    for args, message in [
        ((sub, "--public", "71.2"), "--public 71.2: outside the range of mIoU"),
        ((sub, "--public", "0.7", "--private", "-0.1"), "--private -0.1: outside the range"),
        ((tmp_path / "seed16.yaml", "--public", "0.7"), "has no sidecar (seed16.yaml.segarena"),
    ]:
        result = run_cli("lb", *args)
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
        assert message in result.output
    sub.write_text(sub.read_text() + "\n")
    result = run_cli("lb", sub, "--public", "0.7")
    assert result.exit_code == 2 and "changed since predict wrote it" in result.output
    assert len((out / "leaderboard.jsonl").read_text().splitlines()) == 1  # nothing recorded


def scored_runs(out: Path, pairs: list[tuple[float, float]]) -> list[Path]:
    """Finished run directories (run.json, summary.json) with CV mIoU `cv`, each scored on
    the leaderboard with `lb` by `segarena lb RUN --public`."""
    runs = []
    for k, (cv, lb) in enumerate(pairs):
        run = out / "tiny" / f"run{k}"
        run.mkdir(parents=True)
        info = {"run_id": run.name, "experiment": "tiny", "folds": [0], "debug": False}
        (run / "run.json").write_text(json.dumps(info))
        fold = {"fold": 0, "miou": cv, "best_epoch": 1, "epochs": 1}
        summary = {"miou": cv, "miou_mean": cv, "miou_std": 0.0, "per_class_iou": {},
                   "folds": [fold], "epochs": 1}  # fmt: skip
        (run / "summary.json").write_text(json.dumps(summary))
        result = run_cli("lb", run, "--public", lb)
        assert result.exit_code == 0, result.output
        runs.append(run)
    return runs


def test_cv_lb_plot_correlation_equals_numpys_and_flags_the_outlier(tmp_path):
    pairs = [(0.60, 0.58), (0.62, 0.605), (0.65, 0.63), (0.68, 0.66), (0.70, 0.60),
             (0.72, 0.70)]  # fmt: skip
    scored_runs(tmp_path / "runs", pairs)
    result = run_cli("lb", "--plot", "--runs", tmp_path / "runs", "--out", tmp_path / "lb.html")
    assert result.exit_code == 0, result.output
    cv, lb = np.array(pairs).T
    r = np.corrcoef(cv, lb)[0, 1]
    assert f"Pearson r = {r:.3f}; flagged: run run4" in result.output

    from segarena.report.lb_plot import cv_lb_pairs, pearson

    got = cv_lb_pairs(tmp_path / "runs")
    x, y = np.array([p["cv"] for p in got]), np.array([p["public"] for p in got])
    assert pearson(x, y) == pytest.approx(r, abs=1e-12)
    page = (tmp_path / "lb.html").read_text()
    assert "run run4" in page and "times further from the line" in page
    assert page.count("<img") == 1


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make test installs it)")
def test_cv_lb_page_renders_in_a_real_browser(tmp_path):
    scored_runs(tmp_path / "runs", [(0.6, 0.59), (0.65, 0.64), (0.7, 0.66), (0.75, 0.5)])
    result = run_cli("lb", "--plot", "--runs", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    page = tmp_path / "runs" / "lb.html"
    check = check_page(page)
    assert check.errors == []
    assert check.requests == [page.resolve().as_uri()]  # self-contained
    assert [(complete, width > 0) for _, complete, width in check.images] == [(True, True)]
    assert "CV vs leaderboard" in check.text and re.search(r"Pearson r = -?0\.\d{3}", check.text)


def test_local_store_claims_made_together_the_first_trains(data, tmp_path):
    """OUT/mlflow.db (no server): the store's file lock makes the look and the claim one
    step, so of two starts that both passed the check the second is refused."""
    from segarena.config import load_config
    from segarena.data.readers import read_samples
    from segarena.errors import UserError
    from segarena.records.team import check_store

    config = load_config(team_config(data, tmp_path, 17, None))
    out = tmp_path / "runs"
    samples = read_samples(config.data, config.split)
    claims = [check_store(config, out, samples, [0], False) for _ in range(2)]
    dirs = [out / "tiny" / name for name in ("a", "b")]
    for d in dirs:
        d.mkdir(parents=True)
    claims[0].take(dirs[0])
    with pytest.raises(UserError, match="this experiment is running: .*'s run tiny/a"):
        claims[1].take(dirs[1])
    assert dirs[0].is_dir() and not dirs[1].exists()
    assert len(client(f"sqlite:///{out / 'mlflow.db'}").search_runs(["1"])) == 1


def test_fingerprint_ignores_where_records_go_and_follows_what_is_learned(data, tmp_path):
    """Records, experiment name and data.root leave it alone; a hyperparameter, the folds
    trained, or a changed data file change it. With fingerprint_data: hash, a teammate's
    copy of the data (other folder, other mtimes) fingerprints the same."""
    import shutil

    from segarena.config import load_config
    from segarena.data.readers import read_samples
    from segarena.records.fingerprint import fingerprint

    def sha(*overrides, root=data, folds=(0,)):
        config = load_config(team_config(data, tmp_path, 18, None),
                             [f"data.root={root}", *overrides])  # fmt: skip
        samples = read_samples(config.data, config.split)
        return fingerprint(config, tmp_path / "runs", samples, list(folds), False)["sha256"]

    base = sha()
    assert sha("records.out=elsewhere", "records.user=zoe", "experiment=other") == base
    assert sha("optimizer.lr=0.1") != base and sha(folds=(0, 1)) != base
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)  # copy2 keeps the mtimes: the same fingerprint...
    assert sha(root=copy) == base
    os.utime(copy / "masks" / "seq0_0000.png", (1, 1))  # ...until one file's mtime differs
    assert sha(root=copy) != base
    by_content = sha("records.fingerprint_data=hash")
    assert sha("records.fingerprint_data=hash", root=copy) == by_content
    (copy / "masks" / "seq0_0000.png").write_bytes((data / "masks" / "seq1_0001.png").read_bytes())
    assert sha("records.fingerprint_data=hash", root=copy) != by_content


def test_opening_a_store_is_quiet_and_leaves_environment_and_loggers_as_they_were(
    tmp_path, monkeypatch, capfd
):
    """MLflow's store set-up messages are off while segarena opens a store, and only then;
    its environment settings are set for a block and undone after."""
    import logging

    import mlflow  # noqa: F401  (importing it sets its loggers' levels: compare after that)

    from segarena.records.tracking import NO_PROGRESS_BARS, local_uri, mlflow_env, open_client

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # the user's
    environment = dict(os.environ)
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    open_client(local_uri(tmp_path))  # a new SQLite store: its tables are created
    assert (tmp_path / "mlflow.db").is_file()
    assert "Creating initial MLflow database tables" not in capfd.readouterr().err
    assert dict(os.environ) == environment
    assert [logger.level for logger in loggers] == levels
    with mlflow_env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true", **NO_PROGRESS_BARS):
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
        assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "false"  # user's wins
    assert dict(os.environ) == environment
