"""The plan of an ablation: its arms checked against the baseline config before anything
trains (each problem a UserError naming the arm), and each (arm, seed) config resolved.

A training arm's config is CONFIG, then --set, then the arm's pairs, then `train.seed=N`
(--seeds). Refused: an arm that changes nothing the runs learn, two arms of one name or of
one config, an unknown key, an arm that changes `experiment`, `records.out` or
`data.classes` (every run shares OUT/<experiment> and is scored on the same classes), and,
unless --allow-unpaired, one that changes `split.*`, `data.sources` or `data.root`: its runs
would see other images or folds, so they cannot pair with the baseline's image by image.
An allowed unpaired arm trains in an experiment of its own (`<experiment>-<arm>`) with its
own folds.csv.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from segarena.ablate.arms import Arm
from segarena.config import Config, load_config, parse_overrides
from segarena.config.diff import config_diff, settings_changed, under
from segarena.errors import UserError
from segarena.infer.options import infer_options
from segarena.run_dir.checkpoints import CHECKPOINT_KINDS
from segarena.train.parts import check_names

# Changing these draws other images or other folds: the runs no longer pair image by image.
UNPAIRED = ("split", "data.sources", "data.root")
# Every arm writes under OUT/<experiment> and predicts the same classes.
FIXED = ("experiment", "records.out", "data.classes")
# An inference arm that names a checkpoint the baseline does not save
NEEDS = {"ema": "train.ema", "swa": "train.swa", "top": "train.save_top_k >= 2"}


@dataclass
class Plan:
    """The checked arms of an ablation and how each (arm, seed) config is resolved."""

    config_path: Path
    overrides: list[str]
    seeds: list[int | None]
    arms: list[Arm] = field(default_factory=list)

    def config(self, arm: Arm | None, seed: int | None) -> Config:
        """The baseline (arm None) or an arm's config at `seed`: CONFIG, --set, the arm's
        pairs, then train.seed; an unpaired arm gets an experiment (and folds) of its own."""
        pairs = [*self.overrides, *(arm.pairs if arm else ())]
        pairs += [] if seed is None else [f"train.seed={seed}"]
        if arm is not None and arm.unpaired:
            pairs.append(f"experiment={self.config(None, seed).experiment}-{arm.name}")
        return load_config(self.config_path, pairs)

    @property
    def train_arms(self) -> list[Arm]:
        return [arm for arm in self.arms if arm.kind == "train"]

    @property
    def infer_arms(self) -> list[Arm]:
        return [arm for arm in self.arms if arm.kind == "infer"]


def make_plan(
    config_path: Path,
    overrides: list[str],
    arms: list[Arm],
    seeds: list[int | None],
    *,
    allow_unpaired: bool = False,
) -> Plan:
    """Check every arm against the baseline config (UserError naming the arm) and return the
    plan; nothing is trained or written."""
    if not arms:
        raise UserError("no arms: give --arm NAME=key=value, --infer-arm NAME=... or --arms-file")
    seen: set[str] = set()
    for arm in arms:
        if arm.name in seen:
            raise UserError(f"two arms are named {arm.name!r}; expected one name per arm")
        seen.add(arm.name)
    plan = Plan(Path(config_path), list(overrides), seeds)
    base = plan.config(None, seeds[0])
    check_names(base)
    plan.arms = [
        check_train_arm(plan, arm, base, allow_unpaired)
        if arm.kind == "train"
        else check_infer_arm(arm, base)
        for arm in arms
    ]
    _check_distinct(plan)
    return plan


def check_train_arm(plan: Plan, arm: Arm, base: Config, allow_unpaired: bool) -> Arm:
    """The arm with its unpaired keys; UserError if it is unknown, empty or not allowed."""
    try:
        sets_seed = "seed" in parse_overrides(list(arm.pairs)).get("train", {})
        config = plan.config(arm, plan.seeds[0])
        check_names(config)
    except UserError as exc:
        raise UserError(f"arm {arm.name!r}: {exc}") from None
    if sets_seed and plan.seeds != [None]:
        raise UserError(
            f"arm {arm.name!r} sets train.seed, which --seeds sets for every arm; "
            "drop one of the two"
        )
    changes = config_diff(base.model_dump(mode="json"), config.model_dump(mode="json"))
    keys = [c.key for c in changes]
    if fixed := [k for k in keys if under(k, FIXED)]:
        raise UserError(
            f"arm {arm.name!r} changes {', '.join(fixed)}: every arm keeps the baseline's "
            "(its runs share OUT/<experiment> and are scored on the same classes)"
        )
    if not settings_changed(changes):
        raise UserError(
            f"arm {arm.name!r} changes nothing: with {arm.change} its config resolves to "
            "the baseline's"
        )
    unpaired = [k for k in keys if under(k, UNPAIRED)]
    if unpaired and not allow_unpaired:
        raise UserError(
            f"arm {arm.name!r} changes {', '.join(unpaired)}: its runs would see other images "
            "or folds than the baseline's, so they cannot be paired image by image; add "
            "--allow-unpaired to train it anyway (the table then gives it no interval)"
        )
    return Arm(arm.name, arm.kind, arm.pairs, tuple(unpaired))


def check_infer_arm(arm: Arm, base: Config) -> Arm:
    """UserError unless the arm's options are valid, change something and name a
    checkpoint the baseline saves."""
    checkpoint, overrides = arm.infer_settings()
    if checkpoint not in CHECKPOINT_KINDS:
        raise UserError(
            f"arm {arm.name!r}: checkpoint={checkpoint}: expected one of "
            f"{', '.join(CHECKPOINT_KINDS)}"
        )
    try:
        options = infer_options(base.infer, overrides)
    except UserError as exc:
        raise UserError(f"arm {arm.name!r}: {exc}") from None
    saved = {
        "ema": base.train.ema is not None,
        "swa": base.train.swa is not None,
        "top": base.train.save_top_k >= 2,
    }
    if not saved.get(checkpoint, True):
        raise UserError(
            f"arm {arm.name!r}: checkpoint={checkpoint}, but the baseline saves no "
            f"{checkpoint}.ckpt: set {NEEDS[checkpoint]} in the config (or --set)"
        )
    if options == base.infer and checkpoint == "best":
        raise UserError(
            f"arm {arm.name!r} changes nothing: {arm.change} are the baseline's own "
            "inference options and checkpoint"
        )
    return arm


def _check_distinct(plan: Plan) -> None:
    """UserError if two training arms resolve to the same config."""
    seen: dict[str, str] = {}
    for arm in plan.train_arms:
        raw = plan.config(arm, plan.seeds[0]).model_dump(mode="json")
        key = json.dumps({k: v for k, v in raw.items() if k not in ("experiment", "records")})
        if key in seen:
            raise UserError(
                f"arm {arm.name!r} resolves to the same config as arm {seen[key]!r}; "
                "expected each arm to change something of its own"
            )
        seen[key] = arm.name
