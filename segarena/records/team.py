"""A team's shared store: which MLflow store a new run records in, who runs it, and no
experiment trained twice.

Before a run directory exists, `check_store` picks the store (records.tracking_uri, else
$MLFLOW_TRACKING_URI, else OUT/mlflow.db), asks a tracking server for its health first
(an unreachable one is an error with records.require_server, else the run records
locally, marked "pending sync" for `segarena sync`), computes the experiment's
fingerprint and refuses a repeat of a finished or running run (unless --force).

Two teammates may start the same experiment in the same second, both finding no run.
`Claim.take` settles that: each creates its MLflow run carrying the fingerprint (its
claim), waits a moment for the other's claim to land, then looks again; the earliest
claim (by start time, then run id) trains and the others withdraw. The runs folder's own
SQLite store has no such race: its file lock covers the look and the claim together.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from segarena.config import Config
from segarena.data.readers import Sample
from segarena.errors import UserError
from segarena.records.fingerprint import fingerprint
from segarena.records.tracking import (
    create_run,
    local_uri,
    open_client,
    retry_locked,
    store_lock,
    store_uri,
)
from segarena.util.files import remove

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 3.0
SETTLE_S = 1.5  # how long a claim waits for a concurrent one (a request in flight) to land
FINGERPRINT_TAG = "segarena.fingerprint"
LIVE = ("RUNNING", "FINISHED")  # runs that make a new one a repeat (failed ones do not)


def run_user(config: Config) -> str:
    """records.user, else $USER (the login name)."""
    return current_user(config.records.user)


def current_user(configured: str | None = None) -> str:
    """`configured`, else $USER (the login name)."""
    if configured:
        return configured
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def health_problem(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> str | None:
    """None when the tracking server at `uri` answers GET /health with 200, else why not."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:
            return None if answer.status == 200 else f"/health answered {answer.status}"
    except urllib.error.HTTPError as exc:
        return f"/health answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)


def resolve_store(config: Config, out: Path) -> tuple[str, str | None]:
    """(the store this run records in, the server it should have recorded in when that one
    is unreachable and the run records locally instead)."""
    uri = store_uri(config, out)
    if config.records.require_server and not is_server(uri):
        raise UserError(
            f"records.require_server is true but the store is {uri}; expected "
            "records.tracking_uri: http://HOST:PORT (a tracking server, see segarena server)"
        )
    if not is_server(uri):
        return uri, None
    problem = health_problem(uri)
    if problem is None:
        return uri, None
    if config.records.require_server:
        raise UserError(
            f"records.tracking_uri {uri}: the tracking server does not answer ({problem}); "
            "start it (segarena server) or set records.require_server: false to record locally"
        )
    local = local_uri(out)
    log.warning(
        f"tracking server {uri} does not answer ({problem}): recording in {local} instead; "
        f"push it later with: segarena sync {out} --to {uri}"
    )
    return local, uri


def when(ms: int | None) -> str:
    """An MLflow time (ms since the epoch) as local 'YYYY-MM-DD HH:MM:SS'."""
    if not ms:
        return "an unknown time"
    return datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def describe(run: Any) -> str:
    """'alice's run tiny/20261201-120000 (started 2026-12-01 12:00:00)'."""
    tags = run.data.tags
    user = tags.get("segarena.user") or tags.get("mlflow.user") or "someone"
    name = tags.get("segarena.run") or run.info.run_name or run.info.run_id
    return f"{user}'s run {name} (started {when(run.info.start_time)})"


def same_runs(client: Any, sha: str) -> list[Any]:
    """Active runs of any experiment tagged with fingerprint `sha`, running or finished,
    earliest first (by start time, then run id)."""
    experiments = retry_locked(client.search_experiments)
    if not experiments:
        return []
    found = retry_locked(
        client.search_runs,
        [e.experiment_id for e in experiments],
        f"tags.`{FINGERPRINT_TAG}` = '{sha}'",
        max_results=1000,
    )
    live = [r for r in found if r.info.status in LIVE]
    return sorted(live, key=lambda r: (r.info.start_time or 0, r.info.run_id))


class DuplicateRun(UserError):
    """The store already holds this experiment: `run` is its "<experiment>/<run id>" (the
    folder under its OUT), `finished` whether it ended (not running)."""

    def __init__(self, message: str, run: str | None, finished: bool) -> None:
        super().__init__(message)
        self.run, self.finished = run, finished


def duplicate_message(run: Any, uri: str) -> str:
    """Why a new run is refused: who ran (or runs) the same experiment, when, its score."""
    if run.info.status == "RUNNING":
        return (
            f"this experiment is running: {describe(run)} in {uri} has the same config and "
            "data; wait for its result, or train a repeat with --force (also when that run "
            "was killed without a chance to record it)"
        )
    score = run.data.metrics.get("miou")
    scored = "" if score is None else f", mIoU {score:.4f}"
    return (
        f"this experiment was already run: {describe(run)}{scored}, in {uri}, has the same "
        "config and data; train it again as a repeat with --force"
    )


@dataclass
class Claim:
    """A new run's place in the store, checked before its run directory exists."""

    config: Config
    out: Path
    fingerprint: dict[str, Any]
    user: str
    debug: bool
    force: bool
    uri: str | None = None  # None: records.mlflow is off
    pending: str | None = None  # the unreachable server this run should go to
    repeat_of: list[str] = field(default_factory=list)

    def tags(self, run_dir: Path) -> dict[str, str]:
        """The MLflow tags that make the run findable by teammates and by `sync`."""
        tags = {
            "segarena.run": f"{self.config.experiment}/{run_dir.name}",
            "segarena.user": self.user,
            "mlflow.user": self.user,
            FINGERPRINT_TAG: self.fingerprint["sha256"],
            "segarena.debug": str(self.debug).lower(),
        }
        if self.repeat_of:
            tags["segarena.repeat_of"] = ",".join(self.repeat_of)
        if self.pending:
            tags["segarena.pending_sync"] = self.pending
        return tags

    def take(self, run_dir: Path) -> dict[str, Any]:
        """Create the run's MLflow run; of two identical runs started together, only the
        first goes on: the other removes `run_dir` and its MLflow run, and raises UserError.
        Returns what run.json records about the store."""
        record: dict[str, Any] = {
            "user": self.user,
            "fingerprint": self.fingerprint,
            "store": {"uri": self.uri, "pending_sync": self.pending},
            "repeat_of": self.repeat_of,
        }
        if self.uri is None:
            return record
        local = self.uri == local_uri(self.out)
        with store_lock(self.out):  # one process at a time looks and claims in OUT/mlflow.db
            client = open_client(self.uri)
            earlier = self._earlier(client, None) if local else None
            if earlier is not None:  # it started since check_store looked
                remove(run_dir)
                raise UserError(duplicate_message(earlier, self.uri))
            run_id = create_run(
                client, self.config, self.out, run_dir, self.uri, self.tags(run_dir)
            )
        if not local and not (self.force or self.debug):
            time.sleep(SETTLE_S)  # a claim sent a moment before ours may still be in flight
            earlier = self._earlier(client, run_id)
            if earlier is not None:
                retry_locked(client.delete_run, run_id)
                remove(run_dir)
                if earlier.info.status == "FINISHED":  # it finished since check_store looked
                    raise UserError(duplicate_message(earlier, self.uri))
                raise UserError(
                    f"{describe(earlier)} claimed the same experiment a moment before this "
                    f"one in {self.uri}; it trains and this one stops (--force trains a repeat)"
                )
        return {**record, "mlflow_run_id": run_id}

    def _earlier(self, client: Any, mine: str | None) -> Any:
        """The first live run with this fingerprint that comes before run `mine` (any, when
        `mine` is None); None when there is none, or for --force and --debug runs."""
        if self.force or self.debug:
            return None
        runs = same_runs(client, self.fingerprint["sha256"])
        for run in runs:
            if run.info.run_id == mine:
                return None
            return run
        return None


def check_store(
    config: Config,
    out: Path,
    samples: list[Sample],
    folds_to_train: list[int],
    debug: bool,
    force: bool = False,
) -> Claim:
    """Before a new run: its store (a health check first), its fingerprint, and UserError
    when the store holds a finished or running run of the same experiment (not with
    --force: the new run is marked a repeat of those; --debug runs are never refused)."""
    claim = Claim(
        config,
        Path(out),
        fingerprint(config, out, samples, folds_to_train, debug),
        run_user(config),
        debug,
        force,
    )
    if not config.records.mlflow:
        return claim
    claim.uri, claim.pending = resolve_store(config, Path(out))
    if debug:
        return claim
    found = []
    if claim.uri != local_uri(out):
        found = same_runs(open_client(claim.uri), claim.fingerprint["sha256"])
    elif (Path(out) / "mlflow.db").is_file():  # a new runs folder has no store yet
        with store_lock(Path(out)):
            found = same_runs(open_client(claim.uri), claim.fingerprint["sha256"])
    if found and not force:
        first = found[0]
        raise DuplicateRun(
            duplicate_message(first, claim.uri),
            first.data.tags.get("segarena.run"),
            first.info.status == "FINISHED",
        )
    claim.repeat_of = [r.data.tags.get("segarena.run") or r.info.run_id for r in found]
    return claim
