"""A run's MLflow records (its params, metrics, artifacts and status) and its environment
record (env.json's content).

The run directory these records point to is drawn once, in ARCHITECTURE.md (the
run-directory contract); `segarena.run_dir.layout.RunDir` reads and writes it.

MLflow is quieted only where segarena calls it, and only for that call: the store's
set-up messages (mlflow's own logger, INFO) while a client opens it, artifact progress
bars while a run's files upload (`mlflow_env`). segarena also runs inside other programs
(tests, notebooks, a team's scripts) whose environment and logging are their own, so
nothing is changed at import time and every change is undone after the call.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from segarena.config import Config
from segarena.config.diff import flatten
from segarena.run_dir.layout import RunDir
from segarena.run_dir.schema import RunInfo, Store
from segarena.util.files import file_lock

T = TypeVar("T")

PACKAGES = [
    "segarena",
    "torch",
    "torchvision",
    "segmentation-models-pytorch",
    "timm",
    "albumentations",
    "lightning-fabric",
    "numpy",
    "opencv-python-headless",
    "mlflow-skinny",
]


def _git_sha(cwd: Path) -> dict[str, Any] | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(device: str, seed: int) -> dict[str, Any]:
    """Versions, git state of segarena and of the working directory, device and seed."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "git_segarena": _git_sha(Path(__file__).resolve().parent),
        "git_workdir": _git_sha(Path.cwd()),
        "device": device,
        "seed": seed,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def store_lock(out: Path) -> AbstractContextManager[None]:
    """An exclusive lock on OUT/.mlflow.lock while this process opens the MLflow store:
    MLflow's SQLite schema set-up breaks when two processes run it at once (and a claim's
    look for the same experiment and its new run are one step, records.team)."""
    return file_lock(Path(out) / ".mlflow.lock")


def retry_locked(call: Callable[..., T], *args: Any, tries: int = 10, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, retried with a growing pause while SQLite says
    "database is locked" (another run is writing the same mlflow.db)."""
    for attempt in range(1, tries):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc):
                raise
            time.sleep(0.2 * attempt)
    return call(*args, **kwargs)


def store_uri(config: Config, out: Path) -> str:
    """records.tracking_uri, else $MLFLOW_TRACKING_URI, else the SQLite store OUT/mlflow.db."""
    return config.records.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_uri(out)


def local_uri(out: Path) -> str:
    """The runs folder's own MLflow store: sqlite:///OUT/mlflow.db."""
    return f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


@contextmanager
def mlflow_env(**values: str) -> Iterator[None]:
    """MLflow settings read from the environment (MLFLOW_...), set for the block and
    restored after; a variable the user set keeps the user's value."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# artifact uploads draw progress bars: noise between segarena's own lines
NO_PROGRESS_BARS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def open_client(uri: str) -> Any:
    """An MlflowClient on `uri` (MLflow is imported here: it costs seconds). Opening a
    SQLite store creates or upgrades its tables, which MLflow announces at INFO ("Creating
    initial MLflow database tables...", alembic's migrations): noise for the user, so
    those two loggers are raised to WARNING while the client opens the store, then set
    back to the levels they had."""
    import logging

    import mlflow

    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        return retry_locked(mlflow.MlflowClient, uri)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def experiment_id(client: Any, name: str, out: Path, uri: str) -> str:
    """The id of MLflow experiment `name`, created when new. In the runs folder's own store
    its artifacts go beside the db (they default to ./mlruns in the working directory); a
    server keeps them where it was told (its --artifacts-destination)."""
    found = retry_locked(client.get_experiment_by_name, name)
    if found:
        return found.experiment_id
    artifacts = None
    if uri == local_uri(out):
        artifacts = (Path(out) / "mlflow-artifacts" / name).resolve().as_uri()
    try:
        return retry_locked(client.create_experiment, name, artifact_location=artifacts)
    except Exception as exc:  # another process created it a moment ago
        found = retry_locked(client.get_experiment_by_name, name)
        if found is None:
            raise exc from None
        return found.experiment_id


def create_run(
    client: Any,
    config: Config,
    out: Path,
    run_dir: Path,
    uri: str,
    tags: dict[str, str] | None = None,
) -> str:
    """A new MLflow run (and its experiment, when new) holding the flattened config."""
    import mlflow

    exp_id = experiment_id(client, config.experiment, out, uri)
    tags = {"run_dir": str(run_dir), **(tags or {})}
    run = retry_locked(client.create_run, exp_id, run_name=Path(run_dir).name, tags=tags)
    run_id = run.info.run_id
    params = flatten(config.model_dump(mode="json"))
    # MLflow caps a param value at 6000 characters; long lists are truncated, not lost:
    # the full config is in the run directory.
    rows = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in params.items()]
    retry_locked(client.log_batch, run_id, params=rows)
    return run_id


class Tracker:
    """MLflow logging for one run (SQLite store OUT/mlflow.db unless a URI is configured).

    A no-op when records.mlflow is false. MLflow is imported lazily: it costs seconds.
    """

    def __init__(
        self,
        config: Config,
        out: Path,
        run_dir: Path,
        run_id: str | None,
        store: Store | None = None,
    ):
        """`store` is run.json's record of where the run's MLflow run lives (its "uri"),
        chosen when the run started (segarena.records.team); without it, `store_uri`."""
        self.enabled = config.records.mlflow
        self.run_id = run_id
        if not self.enabled:
            return
        uri = (store.uri if store else None) or store_uri(config, out)
        with store_lock(out):  # two runs starting at once must not both build the store
            self.client = open_client(uri)
            if self.run_id is None:
                self.run_id = create_run(self.client, config, out, run_dir, uri)
        self.run_dir = Path(run_dir)

    @classmethod
    def of_run(cls, config: Config, run_dir: Path, run_info: RunInfo) -> Tracker:
        """The tracker of run directory OUT/<experiment>/<run> (run.json's `run_info`): its
        MLflow run, in the store its run.json names."""
        out = Path(run_dir).parent.parent
        return cls(config, out, run_dir, run_info.mlflow_run_id, run_info.store)

    def _environment_tags(self) -> None:
        """The git SHA and user of env.json as MLflow tags (the UI shows them)."""
        env = RunDir(self.run_dir).env()  # {} when missing
        git = env.get("git_workdir") or env.get("git_segarena") or {}
        if git.get("sha"):
            retry_locked(self.client.set_tag, self.run_id, "mlflow.source.git.commit", git["sha"])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        import mlflow

        stamp = int(time.time() * 1000)
        rows = [
            mlflow.entities.Metric(k, float(v), stamp, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and v == v
        ]
        retry_locked(self.client.log_batch, self.run_id, metrics=rows)

    def discard(self) -> None:
        """Delete the MLflow run of a run directory that never started training."""
        if self.enabled:
            self.client.delete_run(self.run_id)

    def finish(self, summary_path: Path | None, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self._environment_tags()
        # the summary, the resolved config and the environment go with the run's record
        run = RunDir(self.run_dir)
        summary = [] if summary_path is None else [summary_path]
        with mlflow_env(**NO_PROGRESS_BARS):
            for path in [*summary, run.config_path, run.env_path]:
                if path.is_file():
                    retry_locked(self.client.log_artifact, self.run_id, str(path))
        retry_locked(self.client.set_terminated, self.run_id, status=status)
