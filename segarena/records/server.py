"""`segarena server`: a team's MLflow tracking server, for a team that has none yet.

It is MLflow's own server (the full `mlflow` package: `pip install 'segarena[server]'`),
over a SQLite database and an artifact folder in one store folder, bound to 127.0.0.1
unless told otherwise. Teammates set records.tracking_uri (or $MLFLOW_TRACKING_URI) to the
URI it prints.

`serve` runs it in its own session, so its process group holds the MLflow server and its
uvicorn workers and nothing else: a SIGTERM or SIGINT to segarena (a service manager's
stop, `kill PID`, Ctrl-C) is passed on to that whole group, and segarena exits once the
group is gone, leaving no server behind that holds the port.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from segarena.errors import UserError


def server_installed() -> bool:
    """Whether the full `mlflow` package (its server: Flask, uvicorn...) is installed; the
    `mlflow-skinny` client alone cannot serve."""
    return all(importlib.util.find_spec(name) is not None for name in ("flask", "uvicorn"))


def server_command(
    store: Path, host: str, port: int, allowed_hosts: str | None = None
) -> list[str]:
    """The `mlflow server` command line over STORE/mlflow.db and STORE/artifacts."""
    if not server_installed():
        raise UserError(
            "segarena server needs the full mlflow package (only the mlflow-skinny client is "
            "installed); install it with: pip install 'segarena[server]'"
        )
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: expected a port number in 1..65535")
    store = Path(store).resolve()
    if store.exists() and not store.is_dir():
        raise UserError(f"--store {store}: is a file; expected a folder for the server's store")
    store.mkdir(parents=True, exist_ok=True)
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    program = [mlflow] if mlflow else [sys.executable, "-m", "mlflow"]
    return [
        *program,
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # SQLite has one writer: more workers only wait on its lock
        *(["--allowed-hosts", allowed_hosts] if allowed_hosts else []),
    ]


def server_env() -> dict[str, str]:
    """The server's environment: MLflow's job runners (GenAI evaluation, a pool of worker
    processes) are off unless asked for; run tracking does not use them."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def tracking_uri(host: str, port: int) -> str:
    """The URI teammates give as records.tracking_uri (a wildcard host: this machine's name)."""
    if host in ("0.0.0.0", "::", ""):
        import socket

        host = socket.gethostname()
    return f"http://{host}:{port}"


STOP_WAIT = 30.0  # seconds a stopped server may take before its group is killed


def serve(command: list[str], env: dict[str, str]) -> int:
    """Run the server `command` in the foreground, in its own session, until it exits; its
    exit code. SIGTERM and SIGINT given to this process go to the server's whole process
    group; then this waits for the group to end (SIGKILL after STOP_WAIT s) and returns 0:
    the server stopped as asked."""
    received: list[tuple[int, float]] = []  # (signal, when)
    process: subprocess.Popen | None = None

    def forward(signum: int, frame: object) -> None:
        received.append((signum, time.monotonic()))
        if process is not None:
            _signal_group(process.pid, signum)

    handlers = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        process = subprocess.Popen(command, env=env, start_new_session=True)
        if received:  # a signal came before the server had a process to pass it to
            _signal_group(process.pid, received[-1][0])
        while process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)
            if received and time.monotonic() - received[0][1] > STOP_WAIT:
                _signal_group(process.pid, signal.SIGKILL)
        if received:  # its workers outlive it by a moment: wait for the whole group
            _end_group(process.pid)
            return 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    code = process.returncode
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def _signal_group(group: int, signum: int) -> None:
    """Send `signum` to process group `group` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def _end_group(group: int) -> None:
    """Wait until no process of `group` is left: SIGKILL to those left after STOP_WAIT s,
    then at most 5 s more (a zombie nobody reaps stays in the group for good)."""
    deadline, killed = time.monotonic() + STOP_WAIT, False
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            if killed:
                return
            _signal_group(group, signal.SIGKILL)
            deadline, killed = time.monotonic() + 5, True
        time.sleep(0.05)
