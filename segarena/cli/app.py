"""The `segarena` command line: thin Typer commands over the library.

Bad input exits with code 2 and one clear message; a run that cannot go on exits with 1.
Heavy imports (torch, SMP, MLflow) happen inside the commands so `--help` stays instant.
This module only registers the commands, in the order `--help` lists them.
"""

from __future__ import annotations

import typer

from segarena.cli import ablation, compete, inference, reports, team, training

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

COMMANDS = {
    "init": training.init,
    "train": training.train,
    "split": training.split,
    "ablate": ablation.ablate,
    "compete": compete.compete,
    "evaluate": inference.evaluate,
    "predict": inference.predict,
    "validate-submission": inference.validate_submission,
    "tune-weights": inference.tune_weights,
    "pseudo": inference.pseudo,
    "runs": reports.runs,
    "compare": reports.compare,
    "report": reports.report,
    "eda": reports.eda,
    "audit": reports.audit,
    "server": team.server,
    "sync": team.sync,
    "lb": team.lb,
}
for name, command in COMMANDS.items():
    app.command(name)(command)

if __name__ == "__main__":
    app()
