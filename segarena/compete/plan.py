"""The plan of `segarena compete`: folds, input size, epochs and optional stages for a budget.

Cost model (seconds; `t_train`, `t_infer` = per image, the probe's seconds per megapixel x
the image's megapixels x DATA_FACTOR, plus the probe's fixed seconds per image: the
model's own share that does not shrink with the input, and decoding, resizing,
augmenting and scoring at mask resolution, segarena.compete.probe):

    a fold      = epochs x (n_train x t_train + n_val x t_infer) + final scoring
                  (+ SWA's BN pass and its own scoring) + FOLD_OVERHEAD_S
    a run       = folds x a fold             (the pseudo run trains on n_train + test images)
    OOF scoring = folds x n_val x views x t_infer + STAGE_OVERHEAD_S
    predicting  = test images x folds x runs x views x t_infer + STAGE_OVERHEAD_S

The plan rule, in order of what matters most for a segmentation score:
1. every model trains at least `min_epochs` (MIN_EPOCHS, or train.epochs when smaller): an
   undertrained model loses more than any later stage can win back;
2. then the largest input size (data.image_size at scale 1, 0.75, 0.5, 0.375, 0.25 of the
   config's size, multiples of 32): small objects vanish at low resolution;
3. then the most folds of the config's split (K down to 2) whose models still train a
   full schedule (max_epochs: train.epochs, default 30), else 1 fold: a fold ensemble adds
   about a point, while 8 instead of 30 epochs costs several (on 2 CPU cores, CamVid
   fold 0: 0.385 at 8 epochs); more folds also give more OOF images to decide on;
4. then the optional stages, richest first (pseudo + SWA, pseudo, SWA, none), as long as
   they keep FULL_SHARE of the epochs the bare plan gets (or the full schedule): the
   pseudo-label round is a second run of the same size, folds and epochs, so on a short
   CPU budget it would halve every model's epochs; multi-scale TTA when its scoring takes
   under MULTISCALE_SHARE of the budget.
Epochs are then the most that fit, capped at train.epochs (default 30): a generous budget
does not train past the recipe's own schedule. RESERVE of the budget is kept free for the
probe's error. The smallest plan (1 fold, smallest size, 1 epoch, no optional stage) not
fitting is bad input: `BudgetTooSmall` names the minimum.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from segarena.compete.probe import Speed
from segarena.train.budget import BudgetTooSmall  # one error for every budget too small

SCALES = (1.0, 0.75, 0.5, 0.375, 0.25)
MIN_SIDE = 32  # and sizes are multiples of it (the encoders' output stride)
DATA_FACTOR = 1.3  # the loop's bookkeeping, workers sharing the cores, over the bare probe
FOLD_OVERHEAD_S = 5.0  # per fold: loaders, model build, checkpoints
STAGE_OVERHEAD_S = 5.0  # per scoring stage: loading the models
MIN_EPOCHS = 8
DEFAULT_MAX_EPOCHS = 30
RESERVE = 0.10  # share of the budget left free
MULTISCALE = (0.75, 1.0, 1.25)
MULTISCALE_SHARE = 0.05
FULL_SHARE = 0.9  # an optional stage may cost at most a tenth of the epochs
HFLIP_VIEWS = 2


@dataclass(frozen=True)
class DataFacts:
    """What the planner knows of the data."""

    images: int  # labelled images (every fold's validation images together)
    size: tuple[int, int]  # the training input (H, W) at scale 1
    folds: int  # K of the config's split
    test_images: int
    resizable: bool = True  # data.image_size may be set (not with data.tiles)
    max_epochs: int = DEFAULT_MAX_EPOCHS


@dataclass
class CompetePlan:
    folds: list[int]
    image_size: list[int]  # [H, W]
    scale: float
    epochs: int
    pseudo: bool
    swa_start: int | None  # train.swa.start_epoch, None: no SWA
    multiscale: bool
    budget_s: float
    estimates: dict[str, float]  # planned seconds per stage
    speed: dict
    facts: dict
    reasons: list[str] = field(default_factory=list)
    # a time-bound plan's runs train with train.budget_min: seconds of the fold run and of
    # the pseudo run (None: fixed epochs, the plan's `epochs`)
    run_budget_s: dict[str, float] | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> CompetePlan:
        return cls(**raw)


class Costs:
    """The cost model of the module docstring for one dataset and one measured speed."""

    def __init__(self, facts: DataFacts, speed: Speed) -> None:
        self.facts, self.speed = facts, speed
        self.n_val = facts.images / facts.folds
        self.n_train = facts.images - self.n_val if facts.folds > 1 else facts.images

    def t_train(self, size) -> float:
        model_s = self.speed.train_s_per_mpx * size[0] * size[1] / 1e6
        return model_s * DATA_FACTOR + self.speed.train_item_s

    def t_infer(self, size) -> float:
        model_s = self.speed.infer_s_per_mpx * size[0] * size[1] / 1e6
        return model_s * DATA_FACTOR + self.speed.infer_item_s

    def epoch_s(self, size, extra: int = 0) -> float:
        return (self.n_train + extra) * self.t_train(size) + self.n_val * self.t_infer(size)

    def run_s(self, size, k: int, epochs: int, *, extra: int = 0, swa: bool = False) -> float:
        finish = self.n_val * self.t_infer(size)
        if swa:
            finish += (self.n_train + extra + self.n_val) * self.t_infer(size)
        return k * (epochs * self.epoch_s(size, extra) + finish + FOLD_OVERHEAD_S)

    def score_s(self, size, k: int, views: float) -> float:
        return STAGE_OVERHEAD_S + k * self.n_val * views * self.t_infer(size)

    def predict_s(self, size, k: int, views: float, runs: int = 1) -> float:
        return STAGE_OVERHEAD_S + self.facts.test_images * k * runs * views * self.t_infer(size)

    def multiscale_views(self) -> float:
        return HFLIP_VIEWS * sum(s * s for s in MULTISCALE)

    def stages(self, size, k, epochs, *, pseudo, swa, multiscale) -> dict[str, float]:
        """Planned seconds of each stage; 0 for a stage the plan leaves out."""
        views = HFLIP_VIEWS
        test = self.facts.test_images
        tta = self.score_s(size, k, views)
        if multiscale:
            tta += self.score_s(size, k, self.multiscale_views())
        runs = 2 if pseudo else 1
        return {
            "folds": self.run_s(size, k, epochs, swa=swa),
            "tta": tta,
            "pseudo": (
                self.predict_s(size, k, views)
                + self.run_s(size, k, epochs, extra=test, swa=swa)
                + self.score_s(size, k, views)
            ) if pseudo else 0.0,
            "ensemble": 2 * self.score_s(size, k, 2 * views) if pseudo else 0.0,
            "swa": self.score_s(size, k, runs * views) if swa else 0.0,
            "submit": self.predict_s(size, k, views, runs),
        }  # fmt: skip

    def most_epochs(self, usable_s: float, size, k, **options) -> tuple[int, dict]:
        """The most epochs (up to max_epochs) whose stages fit `usable_s`; 0 if none."""
        one = self.stages(size, k, 1, **options)
        two = self.stages(size, k, 2, **options)
        per_epoch = sum(two.values()) - sum(one.values())
        fixed = sum(one.values()) - per_epoch
        epochs = min(self.facts.max_epochs, math.floor((usable_s - fixed) / per_epoch))
        epochs = max(epochs, 0)
        return epochs, self.stages(size, k, max(epochs, 1), **options)


def sizes_to_try(size: tuple[int, int], resizable: bool) -> list[tuple[float, tuple[int, int]]]:
    """(scale, (H, W)) of each scale of SCALES, multiples of MIN_SIDE, distinct, largest first."""
    if not resizable:
        return [(1.0, tuple(size))]
    seen, out = set(), []
    for scale in SCALES:
        shape = tuple(max(MIN_SIDE, round(side * scale / MIN_SIDE) * MIN_SIDE) for side in size)
        if shape not in seen:
            seen.add(shape)
            out.append((scale, shape))
    return out


VARIANTS = (  # the optional stages, richest first
    {"pseudo": True, "swa": True},
    {"pseudo": True, "swa": False},
    {"pseudo": False, "swa": True},
    {"pseudo": False, "swa": False},
)


BARE = {"pseudo": False, "swa": False, "multiscale": False}


def choose_folds_and_stages(costs: Costs, usable: float, size, reasons: list[str]):
    """(folds, epochs, optional stages, planned seconds) at `size`: the most folds whose
    models still train a full schedule (max_epochs), else 1 fold; then the richest
    optional stages that keep FULL_SHARE of those epochs (or the full schedule)."""
    full, folds = costs.facts.max_epochs, costs.facts.folds
    k = next((k for k in range(folds, 0, -1)
              if costs.most_epochs(usable, size, k, **BARE)[0] >= full), 1)  # fmt: skip
    bare_epochs = costs.most_epochs(usable, size, k, **BARE)[0]
    if k < folds:
        more = costs.most_epochs(usable, size, k + 1, **BARE)[0]
        reasons.append(
            f"{k} of {folds} folds: {k + 1} folds do not fit a full schedule at "
            f"{size[1]}x{size[0]} ({more} of {full} epochs each); an undertrained fold "
            f"ensemble loses more than it gains ({costs.run_s(size, 1, full) / 60:.1f} min "
            f"per fully trained fold)"
        )
    else:
        reasons.append(f"all {k} folds fit a full schedule at {size[1]}x{size[0]}")
    floor = min(full, math.ceil(FULL_SHARE * bare_epochs))
    time_bound = bare_epochs < full
    # a time-bound plan trains by the clock (train.budget_min), and SWA needs to know
    # in advance which epochs are the last ones
    variants = [v for v in VARIANTS if not (time_bound and v["swa"])]
    for variant in variants:  # the last one (no optional stage) always passes
        epochs, stages = costs.most_epochs(usable, size, k, multiscale=False, **variant)
        if epochs >= floor or variant == variants[-1]:
            break
    for name, on in variant.items():
        what = {"pseudo": "pseudo-label round", "swa": "SWA of the last epochs"}[name]
        cost = "planned" if on else f"left out: it would leave fewer than {floor} epochs"
        if name == "swa" and time_bound:
            cost = ("left out: the runs train by the clock (fewer epochs than a full "
                    "schedule fit), and SWA needs a fixed epoch count")  # fmt: skip
        reasons.append(f"{what}: {cost}")
    return k, epochs, variant, stages


def plan_competition(facts: DataFacts, speed: Speed, budget_s: float) -> CompetePlan:
    """The plan of the module docstring for `budget_s` seconds of wall clock."""
    costs = Costs(facts, speed)
    usable = budget_s * (1 - RESERVE)
    min_epochs = min(MIN_EPOCHS, facts.max_epochs)
    sizes = sizes_to_try(facts.size, facts.resizable)
    reasons = [
        f"measured on {speed.device}: a training image {speed.train_item_s:.3g} s + "
        f"{speed.train_s_per_mpx:.3g} s per megapixel, an inference {speed.infer_item_s:.3g} s "
        f"+ {speed.infer_s_per_mpx:.3g} s per megapixel (x{DATA_FACTOR} on the megapixel "
        f"part); {facts.images} labelled images, {facts.test_images} test images, "
        f"{facts.folds} folds in the config's split"
    ]
    if not facts.resizable:
        reasons.append("data.tiles is set: the input size stays native (tiles)")
    chosen = None
    for scale, size in sizes:
        if costs.most_epochs(usable, size, 1, **BARE)[0] >= min_epochs:
            k, epochs, variant, stages = choose_folds_and_stages(costs, usable, size, reasons)
            chosen = (scale, size, k, epochs, variant, stages)
            break
        reasons.append(
            f"{size[1]}x{size[0]}: even 1 fold cannot train {min_epochs} epochs "
            f"({costs.epoch_s(size):.0f} s per epoch) in {usable / 60:.1f} min"
        )
    if chosen is None:  # the smallest size, 1 fold, as many epochs as fit (at least 1)
        scale, size = sizes[-1]
        epochs, stages = costs.most_epochs(usable, size, 1, **BARE)
        if epochs < 1:
            need = sum(stages.values()) / (1 - RESERVE)
            raise BudgetTooSmall(
                f"--budget-min {budget_s / 60:g}: the smallest plan (1 fold at "
                f"{size[1]}x{size[0]}, 1 epoch, no optional stage) needs about "
                f"{need / 60:.1f} min on {speed.device} ({costs.epoch_s(size):.0f} s per "
                f"epoch); give at least {math.ceil(need / 60 * 10) / 10:g} minutes"
            )
        chosen = (scale, size, 1, epochs, {"pseudo": False, "swa": False}, stages)
        reasons.append(
            f"fewer than {min_epochs} epochs fit anywhere: {epochs} at the smallest size"
        )
    scale, size, k, epochs, variant, stages = chosen
    # multi-scale TTA: when its scoring is cheap, and it keeps FULL_SHARE of the epochs
    multiscale = costs.score_s(size, k, costs.multiscale_views()) <= MULTISCALE_SHARE * budget_s
    if multiscale:
        ms_epochs, with_ms = costs.most_epochs(usable, size, k, multiscale=True, **variant)
        multiscale = ms_epochs >= max(1, math.ceil(FULL_SHARE * epochs))
        if multiscale:
            epochs, stages = ms_epochs, with_ms
    left_out = (
        f"left out (its scoring exceeds {MULTISCALE_SHARE:.0%} of the budget, or it would "
        f"cost more than {1 - FULL_SHARE:.0%} of the epochs)"
    )
    reasons.append(f"multi-scale TTA {MULTISCALE}: " + ("planned" if multiscale else left_out))
    reasons.append(
        f"{epochs} epochs: the most that fit"
        + (f" (capped at train.epochs={facts.max_epochs})" if epochs == facts.max_epochs else "")
        + f"; {costs.epoch_s(size) / 60:.2f} min per epoch and fold"
    )
    spare = usable - sum(stages.values())
    reasons.append(f"planned {sum(stages.values()) / 60:.1f} of {budget_s / 60:.1f} min "
                   f"({spare / 60:.1f} min spare, {RESERVE:.0%} reserve)")  # fmt: skip
    swa_start = max(1, epochs - max(1, epochs // 4) + 1) if variant["swa"] else None
    run_budget_s = None
    if epochs < facts.max_epochs:  # time-bound: each run fills its planned seconds
        run_budget_s = {
            "folds": round(costs.run_s(size, k, epochs), 1),
            "pseudo": round(costs.run_s(size, k, epochs, extra=facts.test_images), 1),
        }
        reasons.append(
            "the runs train with train.budget_min (their planned minutes): its own probe "
            "times this machine's real pipeline and corrects the epochs after epoch 1"
        )
    return CompetePlan(
        folds=list(range(k)),
        image_size=list(size),
        scale=scale,
        epochs=epochs,
        pseudo=variant["pseudo"],
        swa_start=swa_start,
        multiscale=multiscale,
        budget_s=budget_s,
        estimates={name: round(s, 1) for name, s in stages.items()},
        speed=speed.as_dict(),
        facts=asdict(facts),
        reasons=reasons,
        run_budget_s=run_budget_s,
    )


def minimum_minutes(facts: DataFacts, speed: Speed) -> float:
    """The budget the smallest plan needs (for messages and tests)."""
    costs = Costs(facts, speed)
    _, size = sizes_to_try(facts.size, facts.resizable)[-1]
    stages = costs.stages(size, 1, 1, pseudo=False, swa=False, multiscale=False)
    return sum(stages.values()) / (1 - RESERVE) / 60


def plan_lines(plan: CompetePlan) -> list[str]:
    """The plan for the terminal, before training."""
    h, w = plan.image_size
    head = (
        f"plan: folds {plan.folds}, input {w}x{h} (scale {plan.scale:g}), "
        f"{'about ' if plan.run_budget_s else ''}{plan.epochs} epochs, "
        f"pseudo {'yes' if plan.pseudo else 'no'}, SWA "
        f"{'from epoch ' + str(plan.swa_start) if plan.swa_start else 'no'}, multi-scale TTA "
        f"{'yes' if plan.multiscale else 'no'}"
    )
    est = ", ".join(f"{k} {v / 60:.1f}" for k, v in plan.estimates.items() if v)
    return [head, f"  planned minutes: {est}", *(f"  - {r}" for r in plan.reasons)]
