"""compete.json: the plan, each stage's status, runs and scores, and the time spent.

A stage is `pending`, `running` (started; a killed compete resumes it), or finished:
`done` (plan, folds, submit), `kept`, `dropped` or `skipped`. Runs are recorded when they
are created (`ensure_run` of segarena.ablate.runner, through `run_of`/`set_run`), so a
killed stage continues its own run. `spent_s` is the wall clock of every session so far.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from segarena.compete.checks import COMPETE
from segarena.util.files import write_json_atomic

STAGES = ("plan", "folds", "tta", "pseudo", "ensemble", "swa", "submit")
FINISHED = ("done", "kept", "dropped", "skipped")
FORMAT = 1


class Competition:
    """The competition folder and its compete.json; also the run book `ensure_run` reads."""

    def __init__(self, root: Path, runs_out: Path, record: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.path = self.root / COMPETE
        self.out = Path(runs_out)  # where runs are created (ensure_run reads `.out`)
        self.record = record or {"format": FORMAT}
        self.record.setdefault("stages", {name: {"status": "pending"} for name in STAGES})
        self.record.setdefault("runs", {})
        self.spent_before = float(self.record.get("spent_s", 0.0))
        self.started = time.monotonic()

    def spent_s(self) -> float:
        """Wall-clock seconds of every session of this competition so far."""
        return self.spent_before + time.monotonic() - self.started

    def save(self) -> None:
        self.record["spent_s"] = round(self.spent_s(), 2)
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.record)

    def stage(self, name: str) -> dict[str, Any]:
        return self.record["stages"][name]

    # the run book of segarena.ablate.runner.ensure_run ------------------------------------
    def run_of(self, arm: str, seed: str) -> Path | None:
        recorded = self.record["runs"].get(arm)
        return None if recorded is None else self.out / recorded

    def set_run(self, arm: str, seed: str, path: Path) -> None:
        self.record["runs"][arm] = os.path.relpath(path, self.out)
        self.save()

    def run_path(self, arm: str) -> Path | None:
        return self.run_of(arm, "0")

    @classmethod
    def read(cls, path: Path) -> dict[str, Any]:
        return json.loads(Path(path).read_text())
