"""The typed state of a fold's training loop, and the record each epoch leaves.

LoopState is what last.ckpt saves (as the dict under "state") and a resume restores;
EpochRecord is one line of fold_<k>/metrics.jsonl.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoopState:
    """Where a fold's loop stands after `epoch` finished epochs."""

    epoch: int = 0
    num_updates: int = 0  # optimizer updates so far: the scheduler's position
    best_miou: float = -1.0
    best_epoch: int = 0
    epochs_without_gain: int = 0  # validations since the best one (train.early_stopping)
    top: list[list[float]] = field(default_factory=list)  # [epoch, mIoU] kept by train.save_top_k
    seconds: float = 0.0  # the fold's training time over every session (train.budget_min)
    skipped: list[str] = field(default_factory=list)  # data.on_bad_image: skip, images left out

    def to_checkpoint(self) -> dict[str, Any]:
        """The dict last.ckpt stores ("bad" is the key checkpoints have always used)."""
        state = asdict(self)
        state["bad"] = state.pop("epochs_without_gain")
        return state

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> LoopState:
        state = dict(state)
        state["epochs_without_gain"] = state.pop("bad", 0)
        state.setdefault("seconds", 0.0)  # checkpoints from before train.budget_min
        return cls(**state)

    def scored(self, epoch: int, miou: float) -> bool:
        """Count a validation: True when `miou` is a new best."""
        if miou > self.best_miou:
            self.best_miou, self.best_epoch, self.epochs_without_gain = miou, epoch, 0
            return True
        self.epochs_without_gain += 1
        return False


@dataclass
class EpochRecord:
    """One epoch of metrics.jsonl: training stats, and validation scores when it validated."""

    epoch: int
    train_loss: float
    lr: float
    images_per_s: float
    data_wait_share: float
    seconds: float
    val_miou: float | None = None
    val_pixel_acc: float | None = None
    val_per_class_iou: list[float] | None = None

    @property
    def validated(self) -> bool:
        return self.val_miou is not None

    def to_json(self) -> dict[str, Any]:
        """The metrics.jsonl line: validation keys only on epochs that validated."""
        return {k: v for k, v in asdict(self).items() if v is not None or not k.startswith("val_")}
