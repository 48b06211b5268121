"""`segarena server`: a team's MLflow tracking server, for a team that has none yet.

It is MLflow's own server (the full `mlflow` package: `pip install 'segarena[server]'`),
over a SQLite database and an artifact folder in one store folder, bound to 127.0.0.1
unless told otherwise. Teammates set records.tracking_uri (or $MLFLOW_TRACKING_URI) to the
URI it prints.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
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
