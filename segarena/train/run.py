"""`Run`: the Python handle of a run directory, opened to read it or created to be trained.

    run = Run.create(config, "runs", folds="all")   # checks data, model, store; makes the folder
    run.fit()                                        # trains it; on a killed run, resumes it
    run = Run.open("runs/camvid/20261205-101515")    # any run directory, finished or not

Creating and fitting are separate steps so that a caller (an ablation, `compete`) knows
its run directory before the first epoch: a run killed during training is then found by
its path, not by searching the experiment folder. `fit` and `fit_seeds` are the
one-call forms.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lightning_fabric import Fabric

from segarena.config import Config, with_settings
from segarena.errors import Interrupted, UserError
from segarena.run_dir.layout import CONFIG, FOLDS, RUN, RunDir
from segarena.run_dir.schema import RunInfo, Summary
from segarena.train.budget import BudgetTooSmall
from segarena.train.debug import check_loss_fell
from segarena.train.distributed import from_rank_zero, rank_failure, say, start_fabric
from segarena.train.experiment import (
    Session,
    new_session,
    record_failure,
    record_start,
    resume_session,
    train_folds,
)
from segarena.train.fold import TrainHooks
from segarena.train.precision import resolve_precision
from segarena.train.summary import write_summary

Folds = int | Sequence[int] | Literal["all"] | None


def resolve_folds(config: Config, folds: Folds) -> list[int]:
    """The fold numbers to train: "all", one fold, a list of folds, or fold 0 (None)."""
    count = config.split.fold_count
    if folds == "all":
        return list(range(count))
    wanted = [0] if folds is None else [folds] if isinstance(folds, int) else list(folds)
    bad = [k for k in wanted if not isinstance(k, int) or not 0 <= k < count]
    if not wanted or bad or len(set(wanted)) != len(wanted):
        raise UserError(
            f"folds {folds!r}: expected distinct fold numbers in 0..{count - 1} (or 'all') "
            f"for split.method={config.split.method} with {count} fold(s)"
        )
    return sorted(wanted)


class Run:
    """A run directory. `Run.open` reads one; `Run.create` makes a new one, ready to `fit`."""

    def __init__(self, path: Path | str) -> None:
        self.dir = RunDir(path)
        self._fabric: Fabric | None = None  # set by create: the job's processes, launched
        self._session: Session | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # opening and creating -----------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> Run:
        """An existing run directory (UserError if `path` is not one)."""
        RunDir(path).check((RUN, CONFIG))
        return cls(path)

    @classmethod
    def create(
        cls,
        config: Config,
        out: Path | str | None = None,
        *,
        folds: Folds = None,
        debug: bool = False,
        force: bool = False,
    ) -> Run:
        """Check the data, the model and the store, then create the run directory (resolved
        config, folds.csv, run.json) under `out` (default: config.records.out).

        `debug` trains a small seeded subset for 2 epochs and checks that the loss falls;
        `force` trains an experiment the store already holds (recorded as a repeat). With
        train.devices > 1 this launches the job's processes: rank 0 creates the folder and
        every process gets the same Run."""
        out = Path(out if out is not None else config.records.out)
        folds_to_train = resolve_folds(config, folds)
        config, probe = resolve_precision(config)  # train.precision: auto, before Fabric
        fabric = start_fabric(config, debug)  # one process per rank from here
        session = from_rank_zero(
            fabric, lambda: new_session(config, out, folds_to_train, debug, force)
        )
        session.precision_probe = probe
        run = cls(session.run_dir.path)
        run._fabric, run._session = fabric, session
        return run

    # training ----------------------------------------------------------------------------
    def fit(self, hooks: TrainHooks | None = None) -> Run:
        """Train every fold of the run that is not finished, then write summary.json.
        On a run opened from disk (a killed one) this resumes from each fold's last.ckpt.
        `hooks` reach into every fold's loop (segarena.train.fold.TrainHooks)."""
        if self._session is None:  # an opened run: every process reads its config
            config = self.dir.check((RUN, CONFIG, FOLDS)).config()
            self._fabric = start_fabric(config, debug=False)
            self._session = from_rank_zero(self._fabric, lambda: resume_session(self.path))
        fabric, session = self._fabric, self._session
        self._fabric = self._session = None  # a second fit() reopens from disk
        _fit(fabric, session, hooks)
        return self

    # reading -----------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Config:
        """The run's resolved config (every default filled in), validated."""
        return self.dir.config()

    @property
    def info(self) -> RunInfo:
        """run.json: run id, experiment, folds to train, debug, store, weights."""
        return self.dir.info()

    @property
    def summary(self) -> Summary | None:
        """summary.json (pooled and per-fold scores), or None while the run is unfinished."""
        return self.dir.summary()

    @property
    def finished(self) -> bool:
        return self.dir.summary_path.is_file()


def _fit(fabric: Fabric, session: Session, hooks: TrainHooks | None) -> None:
    """Train the session's folds and write the summary; on failure, mark the run failed
    (or, when a budget could not fit one epoch of a new run, remove it)."""
    zero = fabric.is_global_zero  # rank 0 alone writes the run directory and the store
    tracker, results = None, []
    try:
        tracker = record_start(session, fabric) if zero else None
        say(fabric, f"run directory: {session.run_dir}")
        train_folds(session, fabric, tracker, hooks, results)
        if zero:
            write_summary(session.config, session.run_dir, results, tracker=tracker,
                          fabric=fabric, outside_folds=session.outside_folds)  # fmt: skip
    except BudgetTooSmall as exc:
        if zero and not session.resumed and not results:  # nothing trained: leave no run
            with contextlib.suppress(Exception):
                tracker.discard()
            shutil.rmtree(session.run_dir.path)
        elif zero and tracker is not None:
            tracker.finish(None, status="FAILED")
        raise rank_failure(fabric, exc, shared=True) from None  # one process says it
    except BaseException as exc:
        exc = rank_failure(fabric, exc)
        if zero:
            record_failure(session, tracker, exc)
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Interrupted):
                raise Interrupted(session.run_dir.path) from exc
        raise exc  # the same error, or what a job of several processes ends with
    if session.debug and zero:
        check_loss_fell(results)


def fit(
    config: Config,
    out: Path | str | None = None,
    *,
    folds: Folds = None,
    debug: bool = False,
    force: bool = False,
    hooks: TrainHooks | None = None,
) -> Run:
    """Create a run of `config` under `out` and train it (see Run.create and Run.fit)."""
    return Run.create(config, out, folds=folds, debug=debug, force=force).fit(hooks)


def resume(path: Path | str, hooks: TrainHooks | None = None) -> Run:
    """Continue a killed run from each fold's last.ckpt (the same schedule and result)."""
    return Run.open(path).fit(hooks)


def fit_seeds(
    config: Config,
    seeds: Sequence[int],
    out: Path | str | None = None,
    *,
    folds: Folds = None,
    debug: bool = False,
    force: bool = False,
    hooks: TrainHooks | None = None,
) -> list[Run]:
    """One run per seed (train.seed), trained one after the other: a seed ensemble."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {list(seeds)!r}: expected distinct integers, e.g. [0, 1, 2]")
    configs = [with_settings(config, {"train.seed": seed}) for seed in seeds]
    return [fit(c, out, folds=folds, debug=debug, force=force, hooks=hooks) for c in configs]
