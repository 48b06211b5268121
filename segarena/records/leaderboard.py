"""Leaderboard scores next to CV: the submission's sidecar and `segarena lb`'s records.

`predict` writes SUBMISSION.segarena.json beside a submission: the run directories,
folds, checkpoint, weights and inference options that made it, and the submission's
sha256. `segarena lb` reads it back to record a leaderboard score against those runs:
a line in OUT/leaderboard.jsonl (the runs folder of each run; the latest line of a
submission counts), and the MLflow metrics lb_public / lb_private plus a tag on each
run's MLflow run, so teammates see it in the shared store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from segarena.errors import UserError
from segarena.run_dir.layout import RunDir
from segarena.util.files import append_jsonl, file_sha256, read_jsonl, write_json_atomic

log = logging.getLogger(__name__)
LEDGER = "leaderboard.jsonl"  # in the runs folder (OUT)
METRIC_RANGE = (0.0, 1.0)  # mIoU, the metric of CV and of the leaderboard


def sidecar_path(submission: Path) -> Path:
    """SUBMISSION.segarena.json, beside the submission file (or png folder)."""
    submission = Path(submission)
    return submission.with_name(submission.name + ".segarena.json")


def submission_sha256(path: Path) -> str:
    """sha256 of a submission file; of a png folder, of its files' names and hashes."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    parts = [f"{p.relative_to(path).as_posix()} {file_sha256(p)}" for p in sorted(path.rglob("*"))
             if p.is_file()]  # fmt: skip
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def write_sidecar(submission: Path, made_by: dict[str, Any]) -> Path:
    """Record which runs and options made `submission` (after it is in place)."""
    record = {
        "submission": str(Path(submission).resolve()),
        "sha256": submission_sha256(submission),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **made_by,
    }
    path = sidecar_path(submission)
    write_json_atomic(path, record)
    return path


def check_score(value: float | None, option: str) -> None:
    """UserError unless `value` is a score in the metric's range (mIoU: 0..1)."""
    low, high = METRIC_RANGE
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise UserError(
            f"{option} {value}: outside the range of mIoU; expected a score in [{low:g}, {high:g}]"
            " (e.g. 0.812, not 81.2)"
        )


def scored_runs(target: Path) -> tuple[list[Path], dict[str, Any]]:
    """(the run directories a submission or run scores, what identifies it): a run
    directory scores itself; a submission needs the sidecar predict wrote beside it."""
    target = Path(target)
    if RunDir(target).info_path.is_file():
        path = target.resolve()
        return [path], {"key": f"run:{path}", "submission": None, "sha256": None}
    if not target.exists():
        raise UserError(f"lb: {target} does not exist; expected a submission or a run directory")
    sidecar = sidecar_path(target)
    if not sidecar.is_file():
        raise UserError(
            f"lb: {target} has no sidecar ({sidecar.name}): it was not written by segarena "
            "predict; expected a submission predict wrote, or a run directory"
        )
    made = json.loads(sidecar.read_text())
    sha = submission_sha256(target)
    if sha != made.get("sha256"):
        raise UserError(
            f"lb: {target} changed since predict wrote it (its sha256 differs from "
            f"{sidecar.name}'s); expected the submission as predict wrote it"
        )
    runs = [Path(p) for p in made.get("run_dirs", [])]
    missing = [str(p) for p in runs if not RunDir(p).info_path.is_file()]
    if not runs or missing:
        raise UserError(f"lb: {sidecar}: run directories not found: {', '.join(missing)}")
    return runs, {"key": f"sha256:{sha}", "submission": str(target.resolve()), "sha256": sha}


def cv_score(runs: list[Path]) -> float | None:
    """The submission's CV: its runs' pooled validation mIoU (summary.json), averaged."""
    summaries = [RunDir(r).summary() for r in runs]
    if any(s is None for s in summaries):
        return None
    return sum(s.miou for s in summaries) / len(summaries)


def record_lb(target: Path, public: float, private: float | None, user: str) -> dict[str, Any]:
    """Record a leaderboard score of a submission (or run): a ledger line in each run's
    runs folder, and MLflow metrics and a tag on each run's MLflow run (a store that does
    not answer is a logged warning). Returns the entry."""
    check_score(public, "--public")
    check_score(private, "--private")
    runs, ident = scored_runs(target)
    entry = {
        **ident,
        "runs": [str(r.resolve()) for r in runs],
        "cv": cv_score(runs),
        "public": public,
        "private": private,
        "user": user,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for out in sorted({r.resolve().parent.parent for r in runs}):
        append_jsonl(out / LEDGER, entry)
    for run in runs:
        _record_in_mlflow(run, entry)
    return entry


def _record_in_mlflow(run: Path, entry: dict[str, Any]) -> None:
    """lb_public/lb_private (one step per score) and the tags segarena.lb (true) and
    segarena.lb.<key> (the entry) on the run's MLflow run; a store that cannot be reached
    is a warning, not an error (the ledger holds the score)."""
    info = RunDir(run).info()
    uri, run_id = info.store.uri if info.store else None, info.mlflow_run_id
    if run_id is None:
        return
    uri = uri or f"sqlite:///{(run.resolve().parent.parent / 'mlflow.db')}"
    from segarena.records.team import health_problem, is_server
    from segarena.records.tracking import open_client, retry_locked

    problem = health_problem(uri) if is_server(uri) else None
    if problem is not None:
        log.warning(
            f"{uri} does not answer ({problem}): the score of {run.name} is in the ledger only"
        )
        return
    client = open_client(uri)
    step = len(retry_locked(client.get_metric_history, run_id, "lb_public"))
    stamp = int(time.time() * 1000)
    for key in ("public", "private"):
        if entry[key] is not None:
            retry_locked(client.log_metric, run_id, f"lb_{key}", entry[key], stamp, step)
    retry_locked(client.set_tag, run_id, SCORED_TAG, "true")
    retry_locked(client.set_tag, run_id, entry_tag(entry), json.dumps(compact(entry)))


SCORED_TAG = "segarena.lb"  # "true" on a run with leaderboard scores


def entry_tag(entry: dict[str, Any]) -> str:
    """The MLflow tag of one scored submission: segarena.lb.<12 hex digits of its key>."""
    return f"{SCORED_TAG}.{hashlib.sha256(entry['key'].encode()).hexdigest()[:12]}"


def compact(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger entry short enough for a tag value: file and run names, not paths."""
    runs = [f"{Path(r).parent.name}/{Path(r).name}" for r in entry["runs"]]
    name = entry["submission"] and Path(entry["submission"]).name
    return {**entry, "submission": name, "runs": runs[:50]}


def store_ledger(uri: str) -> list[dict[str, Any]]:
    """The scored submissions every teammate recorded in the MLflow store `uri`: the latest
    entry of each, oldest first."""
    from segarena.records.tracking import open_client, retry_locked

    client = open_client(uri)
    ids = [e.experiment_id for e in retry_locked(client.search_experiments)]
    runs = retry_locked(
        client.search_runs, ids, f"tags.`{SCORED_TAG}` = 'true'", max_results=50000
    ) if ids else []  # fmt: skip
    latest: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, value in run.data.tags.items():
            if key.startswith(SCORED_TAG + "."):
                entry = json.loads(value)
                if entry["time"] >= latest.get(entry["key"], {}).get("time", ""):
                    latest[entry["key"]] = entry
    return sorted(latest.values(), key=lambda e: e["time"])


def ledger(out: Path) -> list[dict[str, Any]]:
    """The scored submissions of runs folder OUT: the latest entry of each, oldest first."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in read_jsonl(Path(out) / LEDGER):
        latest.pop(entry["key"], None)  # a re-scored submission moves to its new place
        latest[entry["key"]] = entry
    return list(latest.values())


def run_scores(out: Path) -> dict[str, dict[str, Any]]:
    """Run directory (resolved path) -> its leaderboard entry: the latest of the run alone
    (a submission of that run only), else the latest ensemble holding it ("shared": True)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in ledger(out):
        alone = len(entry["runs"]) == 1
        for run in entry["runs"]:
            if alone or found.get(run, {}).get("shared", True):
                found[run] = {**entry, "shared": not alone}
    return found
