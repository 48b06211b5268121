"""The typed state of a fold's training loop.

LoopState is what last.ckpt saves (as the dict under "state") and a resume restores; the
record each epoch leaves (a line of fold_<k>/metrics.jsonl) is run_dir.schema.EpochRecord.
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
