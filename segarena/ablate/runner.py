"""Training (or resuming) an ablation's runs, and its bookkeeping.

`OUT/<experiment>/ablation/<name>/ablation.json` records, per arm and seed, the run
directory (relative to OUT) that belongs to it: a run is recorded as soon as it is created
(`Run.create`), before its first epoch, so a killed ablation always knows its runs.
Running the same command again resumes: a recorded run with summary.json is reused as it
is, one without it continues from its last checkpoint (`Run.fit`), an arm with no run is
trained. A recorded run whose config is no longer what its arm resolves to (the config
file or --set changed) is an error: a new `--name` starts a new ablation.

Every run of the baseline and of the paired arms is an ordinary run directory of the
experiment, so they share OUT/<experiment>/folds.csv (checked byte for byte), and
`segarena runs`, `compare` and `report` work on them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from segarena.ablate.arms import BASELINE, NAME, Arm
from segarena.ablate.infer_arms import load_matrices, save_matrices, score_checkpoints
from segarena.ablate.plan import Plan
from segarena.config import Config
from segarena.config.diff import config_diff
from segarena.errors import UserError
from segarena.records.team import DuplicateRun
from segarena.run_dir.folds import check_same_folds
from segarena.run_dir.layout import RUN, RunDir
from segarena.run_dir.per_image import RunMatrices
from segarena.train.fold import TrainHooks
from segarena.train.precision import resolve_precision, with_precision
from segarena.train.run import Folds, Run, resolve_folds
from segarena.util.files import write_json_atomic

ABLATION = "ablation.json"

log = logging.getLogger(__name__)


class ArmRecord(BaseModel):
    """One arm in ablation.json: its kind (train or infer), its change (the k=v pairs) and
    its run per seed (a path relative to OUT)."""

    model_config = ConfigDict(extra="ignore")  # e.g. "started", written by older versions

    kind: str
    change: list[str]
    runs: dict[str, str] = {}


class AblationRecord(BaseModel):
    """ablation.json: the arms, and the settings every arm shares."""

    model_config = ConfigDict(extra="ignore")

    name: str
    arms: dict[str, ArmRecord] = {}
    config: str | None = None
    set: list[str] = []
    folds: list[int] = []
    precision: str | None = None  # train.precision: auto's choice, made once for every arm


class Ablation:
    """The folder of one ablation and its ablation.json (arms, their runs per seed)."""

    def __init__(self, out: Path, experiment: str, name: str) -> None:
        if not NAME.match(name):
            raise UserError(f"--name {name!r}: expected letters, digits, '_', '.' or '-'")
        self.out = Path(out)
        self.root = self.out / experiment / "ablation" / name
        self.path = self.root / ABLATION
        self.record = self._read() if self.path.is_file() else AblationRecord(name=name)

    def _read(self) -> AblationRecord:
        try:
            return AblationRecord.model_validate_json(self.path.read_bytes())
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(map(str, problem["loc"]))
            raise UserError(
                f"{self.path}: {where}: {problem['msg']}; expected an ablation.json as "
                "segarena ablate writes it (or start a new ablation with --name)"
            ) from None

    def start(self, plan: Plan, folds: list[int]) -> None:
        """Record the plan's arms; UserError if one was recorded with other settings."""
        arms = self.record.arms
        for arm in [Arm(BASELINE, "train", ()), *plan.arms]:
            old = arms.get(arm.name)
            if old is not None and (old.kind, old.change) != (arm.kind, list(arm.pairs)):
                shown = ", ".join(old.change) or "(baseline)"
                raise UserError(
                    f"arm {arm.name!r}: {self.path} records it as {old.kind} arm "
                    f"{shown!r}, not {arm.change!r}; keep its settings, rename the arm, or "
                    "start a new ablation with --name"
                )
            arms.setdefault(arm.name, ArmRecord(kind=arm.kind, change=list(arm.pairs)))
        self.record.config, self.record.set = str(plan.config_path), plan.overrides
        self.record.folds = folds
        self.save()

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.record.model_dump(mode="json"))

    def run_of(self, arm: str, seed: str) -> Path | None:
        recorded = self.record.arms[arm].runs.get(seed)
        return None if recorded is None else self.out / recorded

    def set_run(self, arm: str, seed: str, path: Path) -> None:
        self.record.arms[arm].runs[seed] = os.path.relpath(path, self.out)
        self.save()


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
    # the baseline's checkpoints scored with its own config.infer, one per seed: what the
    # inference arms change, so what they pair with (training's validation has no TTA)
    reference: list[RunMatrices] = field(default_factory=list)


def run_ablation(
    plan: Plan,
    *,
    out: Path | None = None,
    name: str,
    folds: Folds = None,
    hooks: TrainHooks | None = None,
    device: str = "auto",
) -> Outcome:
    """Train (or reuse, or resume) the baseline and every training arm at every seed, then
    score the inference arms on the baseline's checkpoints."""
    base = plan.config(None, plan.seeds[0])
    out = Path(out if out is not None else base.records.out)
    ablation = Ablation(out, base.experiment, name)
    # train.precision: auto is chosen once, for every arm: arms must differ only in their change
    precision = ablation.record.precision or resolve_precision(base)[0].train.precision
    ablation.record.precision = precision
    ablation.start(plan, resolve_folds(base, folds))
    seeds = [str(plan.config(None, s).train.seed) for s in plan.seeds]

    def runs_of(arm: Arm | None) -> list[Path]:
        label = BASELINE if arm is None else arm.name
        return [
            ensure_run(
                ablation,
                label,
                key,
                with_precision(plan.config(arm, seed), precision),
                folds=folds,
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
    infer, reference = {}, []
    if plan.infer_arms:
        reference = [ensure_reference(ablation, base_run, device) for base_run in runs[BASELINE]]
    for arm in plan.infer_arms:
        runs[arm.name] = runs[BASELINE]
        infer[arm.name] = [
            ensure_scored(ablation, arm, key, base_run, device)
            for key, base_run in zip(seeds, runs[BASELINE])
        ]
    return Outcome(plan, ablation, seeds, runs, infer, folds == "all", reference)


def ensure_reference(ablation: Ablation, base_run: Path, device: str) -> RunMatrices:
    """The baseline run's best checkpoints scored with the run's own inference options
    (reused when kept: the file is named after the run)."""
    path = ablation.root / f"reference_{base_run.name}.npz"
    if path.is_file():
        return load_matrices(path)[0]
    log.info("baseline: scoring its checkpoints with its own inference options")
    matrices, seconds = score_checkpoints(base_run, "best", {}, device)
    save_matrices(path, matrices, seconds)
    return matrices


def ensure_run(
    ablation: Ablation,
    arm: str,
    seed: str,
    config: Config,
    *,
    folds: Folds,
    hooks: TrainHooks | None,
) -> Path:
    """The finished run of (arm, seed): reused, resumed, or created (and recorded) and
    trained."""
    recorded = ablation.run_of(arm, seed)
    if recorded is not None and (recorded / RUN).is_file():
        check_same_run(recorded, config, resolve_folds(config, folds), arm)
        if RunDir(recorded).summary_path.is_file():
            log.info("%s: reusing the finished run %s", arm, recorded)
            return recorded
        log.info("%s: resuming %s", arm, recorded)
        return Run.open(recorded).fit(hooks).path
    log.info("%s: training (train.seed=%s)", arm, config.train.seed)
    try:
        run = Run.create(config, ablation.out, folds=folds)
    except DuplicateRun as exc:  # the store's finished run of this very experiment is the arm's
        same = ablation.out / exc.run if exc.run else None
        if not exc.finished or same is None or not RunDir(same).summary_path.is_file():
            raise
        log.info("%s: reusing %s, a finished run of the same experiment", arm, same)
        ablation.set_run(arm, seed, same)
        return same
    ablation.set_run(arm, seed, run.path)  # before training: a killed arm resumes this run
    return run.fit(hooks).path


def check_same_run(run_dir: Path, config: Config, folds: list[int], arm: str) -> None:
    """UserError unless the recorded run trained what the arm resolves to now."""
    run = RunDir(run_dir)
    changed = [c.key for c in config_diff(run.raw_config(), config.model_dump(mode="json"))]
    if changed or run.info().folds != folds:
        what = ", ".join(changed) if changed else f"folds {run.info().folds}"
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
    log.info("%s: scoring the baseline's checkpoints (%s, seed %s)", arm.name, arm.change, seed)
    checkpoint, overrides = arm.infer_settings()
    matrices, seconds = score_checkpoints(base_run, checkpoint, overrides, device)
    save_matrices(path, matrices, seconds)
    ablation.set_run(arm.name, seed, base_run)
    return matrices, seconds
