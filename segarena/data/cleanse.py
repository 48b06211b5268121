"""data.cleanse: the next run trains on labels cleansed by a label audit (`segarena audit`).

Only training samples are cleansed, never validation masks: a validation set edited by
the model's own opinion would score the model against itself and inflate its mIoU. The
run's fold_data hands the training samples to `cleanse_training`, which attaches a
MaskFix to each (applied by readers.load_mask, so whole images, tiles and the in-memory
cache all see the same cleansed mask) or, for `drop`, leaves the worst images out.

Note: an image's issues come from the fold model that did not train on it, but that model
trained on other folds' images, the next run's validation images among them. `relabel`
thus distils a little of what that model learnt from them into the training labels;
`ignore` and `drop` only remove training pixels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segarena.config import CleanseConfig, DataConfig, expand_env
from segarena.data.audit_files import RANKING, mask_checksum, read_manifest
from segarena.data.readers import Sample
from segarena.errors import UserError
from segarena.util.text import examples


@dataclass(frozen=True)
class MaskFix:
    """Cleanses one training mask as the audit found it; checks it is the mask audited."""

    sample_id: str
    issues_file: Path | None  # None: the audit flagged nothing in this image
    action: str  # ignore or relabel
    relabel_confidence: float
    ignore_index: int
    shape: tuple[int, int]
    crc32: int

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        if mask.shape != self.shape or mask_checksum(mask) != self.crc32:
            raise UserError(
                f"data.cleanse: the mask of {self.sample_id!r} ({mask.shape[1]}x{mask.shape[0]}) "
                f"is not the one audited ({self.shape[1]}x{self.shape[0]}, checksum "
                f"{self.crc32}): it changed since the audit; audit again, or remove data.cleanse"
            )
        if self.issues_file is None:
            return mask
        issues, pred, conf = self._load()
        mask = mask.copy()
        mask[issues] = self.ignore_index
        if self.action == "relabel":
            # conf holds round(p * 255): compare on the same scale
            sure = issues & (conf >= self.relabel_confidence * 255 - 0.5)
            mask[sure] = pred[sure]
        return mask

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            with np.load(self.issues_file) as stored:
                arrays = stored["issues"], stored["pred"], stored["conf"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"{self.issues_file}: unreadable audit issues ({exc}); expected arrays issues, "
                "pred and conf as written by `segarena audit`"
            ) from None
        if any(a.shape != self.shape for a in arrays):
            raise UserError(
                f"{self.issues_file}: arrays of shape {arrays[0].shape}; expected {self.shape} "
                f"(the mask of {self.sample_id!r})"
            )
        return arrays[0].astype(bool), arrays[1], arrays[2]


def cleanse_training(samples: list[Sample], data: DataConfig) -> list[Sample]:
    """The training samples as data.cleanse asks (unchanged when it is not set)."""
    spec = data.cleanse
    if spec is None:
        return samples
    folder = Path(expand_env(spec.audit))
    manifest = read_manifest(folder)
    _check_same_labels(manifest, folder, data)
    images = manifest.get("images", {})
    uncovered = [s.id for s in samples if s.id not in images]
    if uncovered:
        raise UserError(
            f"data.cleanse.audit {folder}: {len(uncovered)} training sample(s) were not "
            f"audited: {examples(uncovered)}; audit a run of this dataset trained with "
            "--folds all (k-fold), or remove data.cleanse"
        )
    if spec.action == "drop":
        worst = set(ranked_ids(folder / RANKING)[: spec.drop_top])
        return [s for s in samples if s.id not in worst]
    return [replace(s, mask_fix=_fix(s.id, images[s.id], folder, spec, data)) for s in samples]


def _fix(sample_id: str, record: dict[str, Any], folder: Path, spec: CleanseConfig, data):
    issues_file = folder / record["file"] if record.get("file") else None
    if issues_file is not None and not issues_file.is_file():
        raise UserError(
            f"data.cleanse.audit {folder}: {issues_file} (the issues of {sample_id!r}) is "
            "missing; audit again"
        )
    return MaskFix(
        sample_id,
        issues_file,
        spec.action,
        spec.relabel_confidence,
        data.ignore_index,
        (int(record["height"]), int(record["width"])),
        int(record["mask_crc32"]),
    )


def _check_same_labels(manifest: dict[str, Any], folder: Path, data: DataConfig) -> None:
    classes, ignore = manifest.get("classes"), manifest.get("ignore_index")
    if classes != list(data.classes) or ignore != data.ignore_index:
        raise UserError(
            f"data.cleanse.audit {folder}: the audit is of classes {classes} with "
            f"ignore_index {ignore}, but data.classes is {list(data.classes)} with "
            f"ignore_index {data.ignore_index}; audit a run of this dataset"
        )


def ranked_ids(path: Path) -> list[str]:
    """The ids of issues.csv, worst first (by its rank column)."""
    try:
        with path.open(newline="") as f:
            rows = [(int(row["rank"]), row["id"]) for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise UserError(f"{path}: the audit's ranking is missing; audit again") from None
    except (csv.Error, KeyError, ValueError, TypeError) as exc:
        raise UserError(
            f"{path}: malformed ranking ({exc}); expected columns rank and id as written "
            "by `segarena audit`"
        ) from None
    return [sample_id for _, sample_id in sorted(rows)]
