"""A training session's steps: check and create (or reload) a run, record its start, train
its folds. `segarena.train.run.Run` puts them together."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightning_fabric import Fabric

from segarena.config import Config
from segarena.data.cleanse import cleanse_training
from segarena.data.folds import fold_indices, load_or_create_folds
from segarena.data.pseudo_source import pseudo_records, pseudo_samples
from segarena.data.readers import Sample, read_samples
from segarena.errors import UserError, worker_free
from segarena.model.build import build_model
from segarena.model.weights import weights_record
from segarena.records.team import check_store
from segarena.records.tracking import Tracker, environment
from segarena.run_dir.checkpoints import first_checkpoints_bytes
from segarena.run_dir.layout import CONFIG, FOLDS, RUN, RunDir
from segarena.run_dir.schema import FoldResult, RunInfo
from segarena.train.debug import debug_config
from segarena.train.distributed import say
from segarena.train.fold import TrainHooks, fit_fold
from segarena.train.parts import FoldData, check_names
from segarena.util.files import check_free_space, check_writable


def run_pseudo_samples(config: Config, samples: list[Sample], debug: bool) -> list[Sample]:
    """data.pseudo's training samples (a seeded subset under --debug), checked once a run."""
    limit = config.train.debug_samples if debug else None
    return pseudo_samples(config.data, samples, limit, config.train.seed)


def fold_data(
    samples: list[Sample],
    folds: list[int],
    fold: int,
    config: Config,
    *,
    debug: bool,
    pseudo: list[Sample] | None = None,
) -> FoldData:
    """Fold `fold`'s training and validation samples; `pseudo` (data.pseudo's samples, read
    here when not given) join the training set only."""
    train_idx, val_idx = fold_indices(folds, fold)
    if debug:  # a small, seeded subset keeps a debug run to seconds
        rng = random.Random(config.train.seed)
        n = config.train.debug_samples
        train_idx = sorted(rng.sample(train_idx, min(n, len(train_idx))))
        val_idx = sorted(rng.sample(val_idx, min(max(n // 2, 1), len(val_idx))))
    # data.cleanse edits (or drops) training samples only: validation masks stay as given
    train = cleanse_training([samples[i] for i in train_idx], config.data)
    # data.pseudo: model-labelled images train every fold; they never validate
    train += run_pseudo_samples(config, samples, debug) if pseudo is None else pseudo
    if not train or not val_idx:
        raise UserError(
            f"fold {fold} has {len(train)} training and {len(val_idx)} "
            "validation samples; both must be non-empty"
        )
    return FoldData(train, [samples[i] for i in val_idx])


def start_run(
    config: Config, out: Path, folds_to_train: list[int], debug: bool, samples: list[Sample]
) -> tuple[RunDir, RunInfo, list[int]]:
    """Create the run directory with its resolved config, folds.csv and run.json."""
    pseudo = pseudo_records(config.data, samples)  # checked before the run directory exists
    experiment_dir = out / config.experiment
    folds = load_or_create_folds(
        experiment_dir / "folds.csv", samples, config.split, config.data.num_classes
    )
    run_dir = RunDir.create(out, config.experiment, debug)
    run_dir.write_config(config)
    shutil.copyfile(experiment_dir / "folds.csv", run_dir.folds_path)
    run_info = RunInfo(
        run_id=run_dir.name,
        experiment=config.experiment,
        folds=folds_to_train,
        debug=debug,
        mlflow_run_id=None,
        pseudo=pseudo,
    )
    run_dir.write_info(run_info)
    return run_dir, run_info, folds


@dataclass
class Session:
    """What one training session works on: a new run directory, or a resumed one."""

    config: Config
    run_dir: RunDir
    run_info: RunInfo
    samples: list[Sample]
    folds: list[int]
    debug: bool
    resumed: bool
    started: float = field(default_factory=time.perf_counter)
    in_folds: float = 0.0  # this session's seconds inside fit_fold
    precision_probe: dict | None = None  # train.precision: auto's measurement (env.json)

    @property
    def outside_folds(self) -> float:
        """This session's seconds outside the folds so far (start-up, summary)."""
        return time.perf_counter() - self.started - self.in_folds


def record_failure(session: Session, tracker: Tracker, exc: BaseException) -> None:
    """Mark the run failed (killed, on Ctrl-C) with the reason in run.json and MLflow; a
    step that fails too (on a full disk) is skipped and never hides the first error."""
    status = "failed" if isinstance(exc, Exception) else "killed"
    reason = (worker_free(str(exc)).splitlines() or [type(exc).__name__])[0]
    with contextlib.suppress(Exception):
        tracker.finish(None, status=status.upper())
    with contextlib.suppress(Exception):
        session.run_dir.write_info(session.run_info.updated(status=status, reason=reason))


def new_session(
    config: Config, out: Path, folds_to_train: list[int], debug: bool, force: bool = False
) -> Session:
    """Check the data, the model and the store (no repeat of a run), then create the run
    directory."""
    config = debug_config(config) if debug else config
    check_names(config)  # losses, schedulers, samplers: a misspelt name fails before any file
    check_writable(out, f"--out {out}")  # records.out unless given: fails before anything
    samples = read_samples(config.data, config.split)
    # a model (and weights) that cannot be built fails here, before any file is written
    model = build_model(config.model, config.data.num_classes)
    check_free_space(out, first_checkpoints_bytes(model), f"--out {out}")
    claim = check_store(config, out, samples, folds_to_train, debug, force)
    run_dir, run_info, folds = start_run(config, out, folds_to_train, debug, samples)
    # two identical runs started at once: one goes on
    run_info = run_info.updated(**claim.take(run_dir.path))
    return Session(config, run_dir, run_info, samples, folds, debug, resumed=False)


def resume_session(path: Path) -> Session:
    """Reload a killed run's own config, run.json, samples and folds.csv."""
    run_dir = RunDir(path).check((RUN, CONFIG, FOLDS))
    config, run_info = run_dir.config(), run_dir.info().resumed()
    samples, folds = run_dir.samples_and_folds(config)
    return Session(config, run_dir, run_info, samples, folds, run_info.debug, resumed=True)


def record_start(session: Session, fabric: Fabric) -> Tracker:
    """env.json, the weights record and the MLflow run (created, or reopened on resume)."""
    config, run_dir, run_info = session.config, session.run_dir, session.run_info
    weights = weights_record(config.model)
    env = environment(str(fabric.device), config.train.seed)
    env.update(weights=weights, processes=fabric.world_size)
    if session.precision_probe is not None:
        env["precision_probe"] = session.precision_probe
    run_dir.write_env(env)
    run_info.weights = weights
    tracker = Tracker.of_run(config, run_dir.path, run_info)  # in the store run.json names
    run_info.mlflow_run_id = tracker.run_id
    run_dir.write_info(run_info)
    return tracker


def train_folds(
    session: Session,
    fabric: Fabric,
    tracker: Tracker | None,
    hooks: TrainHooks | None,
    results: list,
) -> None:
    """Train (or skip, when finished) each fold of the run, appending its result."""
    config, folds_to_train = session.config, session.run_info.folds
    pseudo = run_pseudo_samples(config, session.samples, session.debug)
    for k in folds_to_train:
        data = fold_data(
            session.samples, session.folds, k, config, debug=session.debug, pseudo=pseudo
        )
        extra = f" ({len(pseudo)} pseudo-labelled)" if config.data.pseudo else ""
        say(fabric, f"fold {k}: {len(data.train)} train{extra} / {len(data.val)} val images")
        share = fold_budget_s(config, results, len(folds_to_train), session.outside_folds)
        fold_start = time.perf_counter()
        result = fit_fold(
            config, fabric, data, session.run_dir, k, tracker=tracker, budget_s=share, hooks=hooks
        )
        results.append(result)
        session.in_folds += time.perf_counter() - fold_start


def fold_budget_s(
    config: Config, results: list[FoldResult], folds: int, outside_folds: float
) -> float | None:
    """train.budget_min: the next fold's seconds, an equal share of what is left. Spent are
    the finished folds' own seconds (over every session, for a resumed run) and this
    session's time outside the folds (start-up)."""
    if config.train.budget_min is None:
        return None
    spent = outside_folds + sum(r.seconds for r in results)
    return (config.train.budget_min * 60 - spent) / (folds - len(results))
