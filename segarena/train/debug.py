"""--debug: a short run that must show learning (2 epochs, the loss must fall)."""

from __future__ import annotations

from segarena.config import Config, config_from_dict
from segarena.errors import TrainingError
from segarena.run_dir.schema import FoldResult


def debug_config(config: Config) -> Config:
    """--debug: 2 epochs, validation every epoch, no early stopping."""
    raw = config.model_dump(mode="json")
    raw["train"].update(epochs=2, budget_min=None, val_every=1, early_stopping=None)
    if raw["train"].get("swa"):  # SWA still runs, from epoch 2 at the latest
        raw["train"]["swa"]["start_epoch"] = min(raw["train"]["swa"]["start_epoch"], 2)
    return config_from_dict(raw, source="--debug")


# A fall smaller than this is float noise from batch order, not learning.
DEBUG_MIN_RELATIVE_FALL = 0.01


def check_loss_fell(results: list[FoldResult]) -> None:
    """--debug contract: the training loss must fall (by >= 1%) from the first to the last epoch."""
    for r in results:
        losses = r.train_loss
        if len(losses) >= 2 and not losses[-1] <= losses[0] * (1 - DEBUG_MIN_RELATIVE_FALL):
            raise TrainingError(
                f"debug check failed: fold {r.fold} training loss did not fall "
                f"({losses[0]:.4f} -> {losses[-1]:.4f}); check labels, lr and augmentations"
            )
