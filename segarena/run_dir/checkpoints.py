"""Atomic checkpoints and safe loading.

A checkpoint holds only tensors and plain values, so it loads with weights_only=True:
opening a checkpoint never runs pickled code.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

import torch

from segarena.errors import UserError
from segarena.model.weights import load_tensors
from segarena.util.files import atomic_output

# How torch.save words a write that failed (a full disk): no errno reaches Python.
WRITE_FAILED = ("iostream error", "file write failed", "No space left")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`.

    A run killed mid-write leaves the previous checkpoint intact, never a torn file; a full
    disk raises OSError(ENOSPC) naming `path`, with the temporary file removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch reports a full disk as a stream error
            if not any(text in str(exc) for text in WRITE_FAILED):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def first_checkpoints_bytes(model: torch.nn.Module) -> int:
    """An estimate of the first epoch's files: last.ckpt (weights and two optimizer
    moments) and best.ckpt (weights), plus 1 MiB of records."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 4 * weights + 2**20


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a segarena checkpoint on CPU with weights_only=True; UserError if unreadable."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    return load_tensors(path, "segarena checkpoint")


# The checkpoints a run directory can hold per fold (what `evaluate` / `predict` can load).
CHECKPOINT_KINDS = ("best", "last", "ema", "swa", "top")

_HOW_TO_GET = {
    "best": "train the run first",
    "last": "train the run first",
    "ema": "train with train.ema set (e.g. --set train.ema.decay=0.999)",
    "swa": "train with train.swa set (e.g. --set train.swa.start_epoch=N)",
    "top": "train with train.save_top_k >= 2 (k=1 keeps best.ckpt only)",
}


def fold_checkpoints(run_dir: Path, kind: str) -> list[tuple[int, Path]]:
    """(fold index, path) of every fold's `kind` checkpoint in a run directory, by fold.

    Every kind loads as a model ("model" is a state dict in each); `top` gives each fold's
    k best epochs (train.save_top_k), the epoch ensemble, in epoch order within a fold.
    """
    if kind not in CHECKPOINT_KINDS:
        raise UserError(f"checkpoint {kind!r}: expected one of {', '.join(CHECKPOINT_KINDS)}")
    pattern = "fold_*/top/epoch_*.ckpt" if kind == "top" else f"fold_*/{kind}.ckpt"
    found = []
    for path in Path(run_dir).glob(pattern):
        fold_dir = path.parent.parent if kind == "top" else path.parent
        fold = re.fullmatch(r"fold_(\d+)", fold_dir.name)
        epoch = re.fullmatch(r"epoch_(\d+)", path.stem) if kind == "top" else None
        if fold is not None and (kind != "top" or epoch is not None):
            found.append((int(fold[1]), int(epoch[1]) if epoch else 0, path))
    if not found:
        raise UserError(f"no {pattern} in {run_dir}: {_HOW_TO_GET[kind]}")
    return [(fold, path) for fold, _, path in sorted(found)]
