"""The typed records of a run directory: run.json, summary.json, fold_<k>/result.json,
fold_<k>/plan.json and the lines of fold_<k>/metrics.jsonl (RunDir reads and writes them).

Reading is lenient where runs differ by age: keys this version does not know are ignored
(an older or newer segarena may write more), and keys added after the first runs have
defaults. Writing gives each file the keys its writer set, under the names they have
always had, and no others: a file written here reads the same in an older segarena.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from typing_extensions import Self


class Record(BaseModel):
    """A JSON record of a run file: unknown keys ignored on reading, fields checked on
    assignment, and written with the keys that were set (a field never set stays out)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)

    def updated(self, **changes: Any) -> Self:
        """A copy with `changes` set (and checked)."""
        return type(self).model_validate({**self.to_json(), **changes})


# run.json --------------------------------------------------------------------------------
class SyncedFrom(Record):
    uri: str | None = None  # the local store the run was recorded in first
    run_id: str  # its MLflow run id there


class Store(Record):
    """Where the run's MLflow record lives (segarena.records.team), and its sync state."""

    uri: str | None = None
    pending_sync: str | None = None  # why a run meant for a server recorded locally
    synced_from: SyncedFrom | None = None  # set by `segarena sync`


class PseudoFolder(Record):
    """A data.pseudo folder the run trained on (also in summary.json's `pseudo`)."""

    folder: str
    source_runs: list[str] = []
    threshold: float | None = None
    image_count: int | None = None
    kept_share: float | None = None


class RunInfo(Record):
    """run.json: what the run is, where it records, and how it ended when it failed."""

    run_id: str
    experiment: str
    folds: list[int]  # the folds it trains
    debug: bool = False
    mlflow_run_id: str | None = None
    pseudo: list[PseudoFolder] = []
    format: int = 1  # the layout version (run_dir.layout.FORMAT); none before it existed
    user: str | None = None
    fingerprint: dict[str, Any] | None = None  # records.fingerprint: sha256 and its parts
    store: Store | None = None
    repeat_of: list[str] | None = None  # --force: the runs of the same experiment before it
    weights: dict[str, Any] | None = None  # model.weights.weights_record
    status: str | None = None  # "failed" or "killed", cleared on resume
    reason: str | None = None

    def resumed(self) -> RunInfo:
        """run.json of a run that trains again: no failure status."""
        data = self.to_json()
        data.pop("status", None)
        data.pop("reason", None)
        return RunInfo.model_validate(data)


# fold_<k>/ -------------------------------------------------------------------------------
class EpochRecord(Record):
    """One epoch, a line of metrics.jsonl: training stats, and validation scores when the
    epoch validated (the val_ keys are left out of the line otherwise)."""

    epoch: int
    train_loss: float
    lr: float
    images_per_s: float | None = None
    data_wait_share: float | None = None
    seconds: float = 0.0
    val_miou: float | None = None
    val_pixel_acc: float | None = None
    val_per_class_iou: list[float | None] | None = None

    @property
    def validated(self) -> bool:
        return self.val_miou is not None


class Plan(Record):
    """plan.json (train.budget_min): a fold's measured speed and the epochs chosen for its
    share of the budget."""

    budget_s: float  # the fold's share, from the start of the fold
    epochs: int
    planned_s: float  # predicted fold time with `epochs`, probe included
    probe_s: float  # time the probe itself took
    train_epoch_s: float
    val_s: float  # one validation pass
    train_images_per_s: float
    replanned: bool = False  # epochs corrected from the first epoch's own time

    def model_post_init(self, context: Any) -> None:
        self.model_fields_set.update(type(self).model_fields)  # plan.json holds every field


class FoldResult(Record):
    """result.json: a finished fold, scored once more with its best weights."""

    fold: int
    best_epoch: int
    epochs: int  # epochs trained
    miou: float
    confusion: list[list[int]]  # rows target, columns prediction
    scores: dict[str, Any] | None = None  # metrics.scores of `confusion`
    train_images_per_s: float | None = None
    data_wait_share: float | None = None
    train_loss: list[float] = []  # per epoch
    swa_miou: float | None = None  # train.swa
    swa_confusion: list[list[int]] | None = None
    seconds: float = 0.0  # the fold's training time over every session
    plan: Plan | None = None  # train.budget_min
    skipped_images: list[str] = []  # data.on_bad_image: skip


# summary.json ----------------------------------------------------------------------------
class FoldScore(Record):
    fold: int
    miou: float
    best_epoch: int
    epochs: int
    swa_miou: float | None = None


class Budget(Record):
    """train.budget_min: planned and used seconds, and whether the run kept to it."""

    minutes: float
    planned_s: float
    used_s: float
    used_share: float
    within_tolerance: bool
    epochs: list[int]


class SkippedImageList(Record):
    """data.on_bad_image: skip: the training images left out, over every fold."""

    count: int
    paths: list[str]


class PseudoGain(Record):
    """The pooled mIoU against the pseudo-labels' first source run (same validation images)."""

    source_run: str
    source_miou: float
    miou: float
    gain: float
    per_class_gain: dict[str, float | None]


class Summary(Record):
    """summary.json, written last: pooled (out-of-fold) and per-fold scores."""

    miou: float  # pooled over every fold's validation images
    miou_mean: float  # mean of the folds' mIoU
    miou_std: float
    per_class_iou: dict[str, float | None]
    pixel_acc: float | None = None
    folds: list[FoldScore]
    epochs: int | list[int]  # train.epochs, or each fold's count
    train_images_per_s: float | None = None
    data_wait_share: float | None = None
    swa_miou: float | None = None  # train.swa, when every fold has swa.ckpt
    skipped_images: SkippedImageList | None = None
    budget: Budget | None = None
    pseudo: list[PseudoFolder] | None = None  # data.pseudo
    pseudo_gain: PseudoGain | None = None  # None with pseudo_gain_reason: no figure
    pseudo_gain_reason: str | None = None
