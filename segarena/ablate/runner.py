"""Training (or resuming) an ablation's runs, and its bookkeeping.

`OUT/<experiment>/ablation/<name>/ablation.json` records, per arm and seed, the run
directory (relative to OUT) that belongs to it: a new run is recorded when its first epoch
starts, so that a killed ablation knows its half-trained run. Running the same command
again resumes: a recorded run with summary.json is reused as it is, one without it
continues from its last checkpoint (`train(None, out, resume=run_dir)`), an arm with no run
is trained. A run hard-killed (SIGKILL) before its first epoch, never recorded, is found
by its config and its creation time (`orphan_run`) and resumed, not left beside a new
one. A recorded run whose config is no longer what its arm resolves to (the config
file or --set changed) is an error: a new `--name` starts a new ablation.

Every run of the baseline and of the paired arms is an ordinary run directory of the
experiment, so they share OUT/<experiment>/folds.csv (checked byte for byte), and
`segarena runs`, `compare` and `report` work on them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from segarena.ablate.arms import BASELINE, NAME, Arm
from segarena.ablate.infer_arms import load_matrices, save_matrices, score_checkpoints
from segarena.ablate.plan import Plan
from segarena.config import Config
from segarena.config.diff import config_diff
from segarena.errors import UserError
from segarena.records.team import DuplicateRun
from segarena.run_dir.folds import check_same_folds
from segarena.run_dir.layout import CONFIG, FOLDS, RUN, SUMMARY, RunDir
from segarena.run_dir.per_image import RunMatrices
from segarena.train.experiment import select_folds, train
from segarena.train.fold import TrainHooks
from segarena.util.files import write_json_atomic

ABLATION = "ablation.json"
STAMP = "%Y%m%d-%H%M%S"  # RunDir.create's: run ids sort by the time they were created


class Ablation:
    """The folder of one ablation and its ablation.json (arms, their runs per seed)."""

    def __init__(self, out: Path, experiment: str, name: str) -> None:
        if not NAME.match(name):
            raise UserError(f"--name {name!r}: expected letters, digits, '_', '.' or '-'")
        self.out = Path(out)
        self.root = self.out / experiment / "ablation" / name
        self.path = self.root / ABLATION
        self.record = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.record.setdefault("name", name)
        self.record.setdefault("arms", {})

    def start(self, plan: Plan, folds: list[int]) -> None:
        """Record the plan's arms; UserError if one was recorded with other settings."""
        arms = self.record["arms"]
        for arm in [Arm(BASELINE, "train", ()), *plan.arms]:
            old = arms.get(arm.name)
            if old is not None and (old["kind"], old["change"]) != (arm.kind, list(arm.pairs)):
                shown = ", ".join(old["change"]) or "(baseline)"
                raise UserError(
                    f"arm {arm.name!r}: {self.path} records it as {old['kind']} arm "
                    f"{shown!r}, not {arm.change!r}; keep its settings, rename the arm, or "
                    "start a new ablation with --name"
                )
            arms.setdefault(arm.name, {"kind": arm.kind, "change": list(arm.pairs), "runs": {}})
        self.record.update(config=str(plan.config_path), set=plan.overrides, folds=folds)
        self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.record)

    def run_of(self, arm: str, seed: str) -> Path | None:
        recorded = self.record["arms"][arm]["runs"].get(seed)
        return None if recorded is None else self.out / recorded

    def set_run(self, arm: str, seed: str, path: Path) -> None:
        self.record["arms"][arm]["runs"][seed] = os.path.relpath(path, self.out)
        self.record["arms"][arm].get("started", {}).pop(seed, None)
        self.save()

    def set_started(self, arm: str, seed: str) -> None:
        """Note that (arm, seed) starts training now: a run killed before its first epoch
        (so never recorded) is then known as its own on the next try (`orphan_run`)."""
        self.record["arms"][arm].setdefault("started", {})[seed] = time.strftime(STAMP)
        self.save()

    def started(self, arm: str, seed: str) -> str | None:
        return self.record["arms"][arm].get("started", {}).get(seed)

    def recorded_runs(self) -> set[Path]:
        return {
            self.out / run for arm in self.record["arms"].values() for run in arm["runs"].values()
        }


@dataclass
class Outcome:
    """What an ablation trained or scored: run directories per arm (one per seed, the
    baseline's for inference arms), and each inference arm's matrices and seconds."""

    plan: Plan
    ablation: Ablation
    seeds: list[str]
    runs: dict[str, list[Path]]
    infer: dict[str, list[tuple[RunMatrices, float]]]
    all_folds: bool


def run_ablation(
    plan: Plan,
    *,
    out: Path | None = None,
    name: str,
    fold: int | None = None,
    all_folds: bool = False,
    hooks: TrainHooks | None = None,
    device: str = "auto",
) -> Outcome:
    """Train (or reuse, or resume) the baseline and every training arm at every seed, then
    score the inference arms on the baseline's checkpoints."""
    base = plan.config(None, plan.seeds[0])
    out = Path(out if out is not None else base.records.out)
    ablation = Ablation(out, base.experiment, name)
    ablation.start(plan, select_folds(base, fold, all_folds))
    seeds = [str(plan.config(None, s).train.seed) for s in plan.seeds]

    def runs_of(arm: Arm | None) -> list[Path]:
        label = BASELINE if arm is None else arm.name
        return [
            ensure_run(
                ablation,
                label,
                key,
                plan.config(arm, seed),
                fold=fold,
                all_folds=all_folds,
                hooks=hooks,
            )  # fmt: skip
            for seed, key in zip(plan.seeds, seeds)
        ]

    runs = {BASELINE: runs_of(None)}
    for arm in plan.train_arms:
        runs[arm.name] = runs_of(arm)
        if not arm.unpaired:
            for base_run, arm_run in zip(runs[BASELINE], runs[arm.name]):
                check_same_folds(
                    [base_run, arm_run],
                    "expected every arm on the experiment's folds.csv",
                    context=f"arm {arm.name!r}: ",
                    reference="the baseline's ",
                )
    infer = {}
    for arm in plan.infer_arms:
        runs[arm.name] = runs[BASELINE]
        infer[arm.name] = [
            ensure_scored(ablation, arm, key, base_run, device)
            for key, base_run in zip(seeds, runs[BASELINE])
        ]
    return Outcome(plan, ablation, seeds, runs, infer, all_folds)


def ensure_run(
    ablation: Ablation,
    arm: str,
    seed: str,
    config: Config,
    *,
    fold: int | None,
    all_folds: bool,
    hooks: TrainHooks | None,
) -> Path:
    """The finished run of (arm, seed): reused, resumed, or trained (and recorded)."""
    recorded = ablation.run_of(arm, seed) or orphan_run(ablation, arm, seed, config)
    if recorded is not None and (recorded / RUN).is_file():
        check_same_run(recorded, config, select_folds(config, fold, all_folds), arm)
        if (recorded / SUMMARY).is_file():
            print(f"{arm}: reusing the finished run {recorded}")
            return recorded
        print(f"{arm}: resuming {recorded}")
        ablation.set_run(arm, seed, recorded)
        return train(None, ablation.out, resume=recorded, hooks=hooks)
    experiment_dir = ablation.out / config.experiment
    before = set(experiment_dir.iterdir()) if experiment_dir.is_dir() else set()

    def record_new() -> None:
        new = new_run(experiment_dir, before, config)
        if new is not None:
            ablation.set_run(arm, seed, new)

    print(f"{arm}: training (train.seed={config.train.seed})")
    ablation.set_started(arm, seed)
    try:
        path = train(config, ablation.out, fold, all_folds, hooks=recording(hooks, record_new))
    except DuplicateRun as exc:  # the store's finished run of this very experiment is the arm's
        same = ablation.out / exc.run if exc.run else None
        if not exc.finished or same is None or not (same / SUMMARY).is_file():
            raise
        print(f"{arm}: reusing {same}, a finished run of the same experiment")
        ablation.set_run(arm, seed, same)
        return same
    except BaseException:
        if experiment_dir.is_dir():  # stopped before its first epoch: resume it, not a new one
            record_new()
        raise
    ablation.set_run(arm, seed, path)
    return path


def orphan_run(ablation: Ablation, arm: str, seed: str, config: Config) -> Path | None:
    """The run (arm, seed) started last time but that was hard-killed (SIGKILL, a lost
    machine) before its first epoch, so never recorded: a run directory of the arm's config,
    created since it started, that no arm records and that trained no epoch. It is returned
    to be resumed; one killed before it was fully created (no run.json or folds.csv) is
    removed, to be trained anew. None when there is none."""
    since = ablation.started(arm, seed)
    experiment_dir = ablation.out / config.experiment
    if since is None or not experiment_dir.is_dir():
        return None
    wanted, recorded, found = config.model_dump(mode="json"), ablation.recorded_runs(), []
    for path in sorted(experiment_dir.iterdir()):
        fresh = path.is_dir() and path.name >= since and path not in recorded
        if not fresh or not (path / CONFIG).is_file() or (path / SUMMARY).exists():
            continue
        if any(path.glob("fold_*/last.ckpt")) or config_diff(RunDir(path).raw_config(), wanted):
            continue  # it trained, or it is another config's
        if (path / RUN).is_file() and (path / FOLDS).is_file():
            found.append(path)
        else:
            print(f"{arm}: removing {path}, killed before it was fully created")
            shutil.rmtree(path)
    return found[-1] if found else None


def new_run(experiment_dir: Path, before: set[Path], config: Config) -> Path | None:
    """The run directory a training created since `before` (the newest new one whose
    config is `config`, should another run have started beside it)."""
    wanted = config.model_dump(mode="json")
    new = [
        p
        for p in experiment_dir.iterdir()
        if p not in before
        and (p / RUN).is_file()
        and not config_diff(RunDir(p).raw_config(), wanted)
    ]
    return max(new) if new else None


def recording(hooks: TrainHooks | None, record: Callable[[], None]) -> TrainHooks:
    """`hooks` with `record()` called once, at the start of the run's first epoch."""
    hooks = hooks or TrainHooks()
    then, done = hooks.on_epoch_start, []

    def on_epoch_start(epoch, learner) -> None:
        if not done:
            record()
            done.append(True)
        if then is not None:
            then(epoch, learner)

    return replace(hooks, on_epoch_start=on_epoch_start)


def check_same_run(run_dir: Path, config: Config, folds: list[int], arm: str) -> None:
    """UserError unless the recorded run trained what the arm resolves to now."""
    run = RunDir(run_dir)
    changed = [c.key for c in config_diff(run.raw_config(), config.model_dump(mode="json"))]
    if changed or run.info().get("folds") != folds:
        what = ", ".join(changed) if changed else f"folds {run.info().get('folds')}"
        raise UserError(
            f"arm {arm!r}: its recorded run {run_dir} differs from what the arm resolves "
            f"to now ({what}): the config, --set or --folds changed since the ablation "
            "started; keep them, or start a new ablation with --name"
        )


def ensure_scored(
    ablation: Ablation, arm: Arm, seed: str, base_run: Path, device: str
) -> tuple[RunMatrices, float]:
    """An inference arm's per-image matrices on the baseline run (reused when kept)."""
    path = ablation.root / f"infer_{arm.name}_seed{seed}.npz"
    recorded = ablation.run_of(arm.name, seed)
    if recorded is not None and recorded.resolve() == base_run.resolve() and path.is_file():
        return load_matrices(path)
    print(f"{arm.name}: scoring the baseline's checkpoints ({arm.change}, seed {seed})")
    checkpoint, overrides = arm.infer_settings()
    matrices, seconds = score_checkpoints(base_run, checkpoint, overrides, device)
    save_matrices(path, matrices, seconds)
    ablation.set_run(arm.name, seed, base_run)
    return matrices, seconds
