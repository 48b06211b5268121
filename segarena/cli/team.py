"""The team commands: server (a shared MLflow tracking server), sync (local records to
it) and lb (leaderboard scores next to CV, and the CV-vs-LB page)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from segarena.cli.common import friendly_errors
from segarena.errors import UserError


@friendly_errors
def server(
    port: int = typer.Option(5000, "--port", help="Port to listen on."),
    store: Path = typer.Option(
        Path("mlflow-store"), "--store", help="Folder of the store: mlflow.db and artifacts/."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 serves the whole network."
    ),
    allowed_hosts: str = typer.Option(
        None, "--allowed-hosts", help="Host headers served beyond localhost, e.g. myhost:5000."
    ),
) -> None:
    """Start a team's MLflow tracking server (SQLite + artifact folder) in the foreground."""
    from segarena.records.server import serve, server_command, server_env, tracking_uri

    command = server_command(store, host, port, allowed_hosts)
    uri = tracking_uri(host, port)
    typer.echo(f"store: {store.resolve()} (mlflow.db, artifacts/)")
    typer.echo(f"tracking URI for teammates: {uri}")
    typer.echo(f"  records.tracking_uri: {uri}   (or: export MLFLOW_TRACKING_URI={uri})")
    if host not in ("127.0.0.1", "localhost") and not allowed_hosts:
        typer.echo(f"  teammates on other machines need: --allowed-hosts {uri.split('//')[1]}")
    sys.stdout.flush()
    # SIGTERM and Ctrl-C stop the MLflow server and its workers too, then segarena exits
    raise typer.Exit(serve(command, server_env()))


@friendly_errors
def sync(
    out: Path = typer.Argument(..., help="Runs folder whose OUT/mlflow.db is pushed."),
    to: str = typer.Option(
        None, "--to", help="Tracking server URI (default: $MLFLOW_TRACKING_URI)."
    ),
) -> None:
    """Push a runs folder's local MLflow records to the tracking server (no duplicates)."""
    from segarena.records.sync import sync as run_sync

    target = to or os.environ.get("MLFLOW_TRACKING_URI")
    if not target:
        raise UserError("sync: give the server with --to http://HOST:PORT")
    counts = run_sync(out, target)
    typer.echo(
        f"synced {out} to {target}: {counts['pushed']} run(s) pushed, {counts['present']} "
        f"already there, {counts['running']} still running (not pushed)"
    )


@friendly_errors
def lb(
    target: Path = typer.Argument(
        None, help="A submission predict wrote (with its sidecar), or a run directory."
    ),
    public: float = typer.Option(None, "--public", help="Public leaderboard score (mIoU)."),
    private: float = typer.Option(None, "--private", help="Private leaderboard score."),
    plot: bool = typer.Option(False, "--plot", help="Write the CV-vs-LB page instead."),
    runs: Path = typer.Option(None, "--runs", help="Runs folder for --plot (default 'runs')."),
    store: str = typer.Option(
        None, "--store", help="--plot every teammate's scores from this tracking URI."
    ),
    out: Path = typer.Option(None, "--out", help="--plot's page (default RUNS/lb.html)."),
) -> None:
    """Record a leaderboard score against the runs of a submission; --plot: CV vs LB."""
    if plot:
        from segarena.config import RecordsConfig
        from segarena.report.lb_plot import write_lb_page

        folder = runs if runs is not None else Path(RecordsConfig().out)
        if store is not None and out is None:
            out = Path("lb.html")
        path, found = write_lb_page(folder, out, store)
        r = "n/a" if found["pearson"] is None else f"{found['pearson']:.3f}"
        flagged = ", ".join(found["flagged"]) or "none"
        typer.echo(f"CV vs LB over {found['n']} submissions: Pearson r = {r}; flagged: {flagged}")
        typer.echo(f"page: {path}")
        return
    if target is None or public is None:
        raise UserError("lb: give a SUBMISSION (or run directory) and --public SCORE, or --plot")
    from segarena.records.leaderboard import record_lb
    from segarena.records.team import current_user

    entry = record_lb(target, public, private, current_user())
    cv = "n/a" if entry["cv"] is None else f"{entry['cv']:.4f}"
    private_text = "" if private is None else f", private {private:.4f}"
    names = ", ".join(Path(r).name for r in entry["runs"])
    typer.echo(f"recorded LB public {public:.4f}{private_text} against {names} (CV {cv})")
