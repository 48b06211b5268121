"""`segarena sync OUT --to URI`: push a runs folder's local MLflow records (OUT/mlflow.db)
to the team's tracking server, after training recorded locally while it was unreachable.

Each pushed run carries the tag segarena.source_run (its local MLflow run id); a run the
server already holds (same source run, or same segarena run and user) is compared, not
pushed again: a copy holding the same params, status and metric values -> skipped
(`covers`), anything else -> UserError (the server holds a different run under the same
id). So two syncs never duplicate a run. A pushed run's run.json is pointed at its
server copy, so that `lb` records there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from segarena.errors import UserError
from segarena.records.team import health_problem, is_server
from segarena.records.tracking import (
    NO_PROGRESS_BARS,
    experiment_id,
    local_uri,
    mlflow_env,
    open_client,
    retry_locked,
    store_lock,
)
from segarena.run_dir.layout import RunDir
from segarena.run_dir.schema import Store, SyncedFrom

SOURCE_TAG = "segarena.source_run"


def content(client: Any, run: Any, keys: list[str] | None = None) -> dict[str, Any]:
    """What two copies of a run must share: params, status and the history (step, value)
    of each metric (of `keys` only, when given)."""
    keys = sorted(run.data.metrics) if keys is None else keys
    histories = {}
    for key in keys:
        history = retry_locked(client.get_metric_history, run.info.run_id, key)
        histories[key] = sorted((m.step, round(m.value, 12)) for m in history)
    return {"params": dict(run.data.params), "status": run.info.status, "metrics": histories}


def covers(theirs: dict[str, Any], mine: dict[str, Any]) -> bool:
    """Whether the server's copy holds the local run: the same params, every local metric
    value at its step, and the same status (or a failed or killed local run that its
    copy continued, after `train --resume` recorded into the copy)."""
    if theirs["params"] != mine["params"]:
        return False
    if mine["status"] != theirs["status"] and mine["status"] not in ("FAILED", "KILLED"):
        return False
    return all(set(mine["metrics"][k]) <= set(theirs["metrics"][k]) for k in mine["metrics"])


def _server_copy(client: Any, exp_id: str, run: Any) -> Any:
    """The server's run for local `run`: same source run, or same segarena run and user."""
    tags = run.data.tags
    filters = [f"tags.`{SOURCE_TAG}` = '{run.info.run_id}'"]
    if tags.get("segarena.run") and tags.get("segarena.user"):
        filters.append(
            f"tags.`segarena.run` = '{tags['segarena.run']}' and "
            f"tags.`segarena.user` = '{tags['segarena.user']}'"
        )
    for text in filters:
        found = retry_locked(client.search_runs, [exp_id], text, max_results=10)
        if found:
            return found[0]
    return None


def push_run(local: Any, server: Any, run: Any, exp_id: str, uri: str) -> str:
    """Copy local `run` (params, tags, metric histories, artifacts, status) to the server;
    returns the server's run id."""
    from mlflow.entities import Metric, Param

    tags = {k: v for k, v in run.data.tags.items() if k != "segarena.pending_sync"}
    tags[SOURCE_TAG] = run.info.run_id
    new = retry_locked(
        server.create_run, exp_id, start_time=run.info.start_time, tags=tags,
        run_name=run.info.run_name,
    )  # fmt: skip
    new_id = new.info.run_id
    metrics = []
    for key in run.data.metrics:
        for m in retry_locked(local.get_metric_history, run.info.run_id, key):
            metrics.append(Metric(m.key, m.value, m.timestamp, m.step))
    params = [Param(k, v) for k, v in run.data.params.items()]
    retry_locked(server.log_batch, new_id, metrics=metrics, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        files = retry_locked(local.list_artifacts, run.info.run_id)
        if files:
            retry_locked(local.download_artifacts, run.info.run_id, "", tmp)
            retry_locked(server.log_artifacts, new_id, tmp)
    retry_locked(server.set_terminated, new_id, status=run.info.status, end_time=run.info.end_time)
    retry_locked(local.set_tag, run.info.run_id, "segarena.synced_to", f"{uri} {new_id}")
    return new_id


def _point_run_dir(run: Any, uri: str, new_id: str) -> None:
    """Point the run directory's run.json (when it is here) at the server copy."""
    run_dir = RunDir(run.data.tags.get("run_dir", ""))
    if not run_dir.info_path.is_file():
        return
    info = run_dir.info()
    if info.mlflow_run_id != run.info.run_id:
        return
    source = SyncedFrom(uri=info.store.uri if info.store else None, run_id=run.info.run_id)
    info.store = Store(uri=uri, pending_sync=None, synced_from=source)
    info.mlflow_run_id = new_id
    run_dir.write_info(info)


def sync(out: Path, to: str) -> dict[str, int]:
    """Push every finished, failed or killed run of OUT/mlflow.db to the server `to`;
    {"pushed", "present", "running"} counts. UserError when the server is unreachable or
    holds a different run under a pushed run's id."""
    out = Path(out)
    if not (out / "mlflow.db").is_file():
        raise UserError(
            f"sync: {out / 'mlflow.db'} does not exist; expected a runs folder whose runs "
            "recorded locally (records.mlflow on)"
        )
    if not is_server(to):
        raise UserError(f"sync --to {to}: expected a tracking server URI, http://HOST:PORT")
    problem = health_problem(to)
    if problem is not None:
        raise UserError(f"sync --to {to}: the tracking server does not answer ({problem})")
    # MLflow prints each run's URL as it is closed (one line per pushed run is noise here)
    # and draws a progress bar per artifact: both off while the runs are pushed
    with mlflow_env(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true", **NO_PROGRESS_BARS):
        return _push(out, to)


def _push(out: Path, to: str) -> dict[str, int]:
    """`sync`'s work, once the server answers."""
    with store_lock(out):
        local = open_client(local_uri(out))
    server = open_client(to)
    counts = {"pushed": 0, "present": 0, "running": 0}
    for experiment in retry_locked(local.search_experiments):
        runs = retry_locked(local.search_runs, [experiment.experiment_id], max_results=50000)
        if not runs:
            continue
        exp_id = experiment_id(server, experiment.name, out, to)
        for run in sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
            if run.info.status == "RUNNING":  # its record is not final: sync it when it ends
                counts["running"] += 1
                continue
            copy = _server_copy(server, exp_id, run)
            if copy is None:
                new_id = push_run(local, server, run, exp_id, to)
                _point_run_dir(run, to, new_id)
                counts["pushed"] += 1
                continue
            if not covers(content(server, copy, sorted(run.data.metrics)), content(local, run)):
                name = run.data.tags.get("segarena.run") or run.info.run_id
                raise UserError(
                    f"sync: {to} already holds a different run under the id of {name} "
                    f"(local MLflow run {run.info.run_id}; server run {copy.info.run_id}): "
                    "its params, status or metrics differ; nothing more was pushed"
                )
            _point_run_dir(run, to, copy.info.run_id)
            counts["present"] += 1
    return counts
