"""Atomic checkpoints and safe loading.

A checkpoint holds only tensors and plain values, so it loads with weights_only=True:
opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from segarena.errors import UserError

CHECKPOINT_KINDS = ("best", "last")  # the checkpoints predict and evaluate can load


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`.

    A run killed mid-write leaves the previous checkpoint intact, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a segarena checkpoint on CPU with weights_only=True; UserError if unreadable."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable segarena checkpoint: {exc}") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under Fabric / DDP / torch.compile wrappers (their state keys differ)."""
    for attr in ("_forward_module", "module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model
