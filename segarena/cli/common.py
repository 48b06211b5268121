"""What every `segarena` command shares: the error handling, the log lines and the common
options.

Bad input exits with code 2 and one clear message; a run that cannot go on exits with 1.
The library logs and never prints; the command line shows its records as plain lines.
Heavy imports (torch, SMP, MLflow) happen inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from segarena.errors import BadOption, Interrupted, TrainingError, UserError, worker_free
from segarena.util.files import disk_full_message

err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages stay whole lines

SetOption = typer.Option(
    [], "--set", help="Override a config value, e.g. --set train.epochs=5 (repeatable)."
)
# Inference options shared by evaluate and predict; None keeps the run's config.infer value.
TtaOption = typer.Option(None, "--tta", help="none, hflip, vflip or d4 (flips x rot90).")
ScalesOption = typer.Option(None, "--scales", help="Input scales, e.g. 0.75,1.0,1.25.")
MergeOption = typer.Option(None, "--merge", help="mean (of probabilities), gmean or logits.")
WindowOption = typer.Option(None, "--window", help="Sliding window H,W (or N) in pixels.")
OverlapOption = typer.Option(None, "--overlap", help="Sliding-window overlap in [0, 1).")
SwBatchOption = typer.Option(None, "--sw-batch-size", help="Windows per forward pass.")


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; UserError unless distinct integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2")
    return seeds


class CurrentStream(logging.StreamHandler):
    """A handler that writes to sys.stdout or sys.stderr as they are when a record comes:
    click's test runner and rich's live display replace them after the handler is made."""

    def __init__(self, which: str):
        self.which = which
        super().__init__()

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return getattr(sys, self.which)

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler's own assignment: ignored
        pass


def show_logs() -> None:
    """segarena's log records as plain lines, set up once per process: INFO on stdout (scripts
    and tests read lines such as `run directory: ...` from it), warnings and errors on stderr."""
    logger = logging.getLogger("segarena")
    if any(isinstance(h, CurrentStream) for h in logger.handlers):
        return
    out, errors = CurrentStream("stdout"), CurrentStream("stderr")
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    errors.setLevel(logging.WARNING)
    for handler in (out, errors):
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError into exit code 2, TrainingError and a full disk (ENOSPC) into 1,
    each with one message; the command's log lines are shown (`show_logs`)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        show_logs()
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            text = exc.as_flag if isinstance(exc, BadOption) else worker_free(str(exc))
            err.print(f"[bold red]error:[/] {escape(text)}")
            sys.exit(2)
        except Interrupted as exc:
            err.print(
                f"[bold red]interrupted:[/] {escape(str(exc.run_dir))} keeps its saved epochs; "
                f"continue it with: segarena train --resume {escape(str(exc.run_dir))}"
            )
            sys.exit(130)
        except TrainingError as exc:
            err.print(f"[bold red]training stopped:[/] {escape(str(exc))}")
            sys.exit(1)
        except Exception as exc:
            full = _disk_full(exc)
            if full is None:
                raise
            err.print(f"[bold red]disk full:[/] {escape(disk_full_message(full))}")
            sys.exit(1)

    return wrapper


def _disk_full(exc: BaseException | None) -> OSError | None:
    """The ENOSPC OSError in `exc`'s chain (a clean-up step may fail on the full disk too)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
