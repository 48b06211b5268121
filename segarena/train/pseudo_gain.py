"""The gain of a pseudo-labelled run over the run whose models made its labels.

summary.json's `pseudo` lists the data.pseudo folders; `pseudo_gain` compares the pooled
mIoU with the first folder's first source run, when both scored the same validation images.
"""

from __future__ import annotations

from typing import Any

from segarena.run_dir.folds import same_folds
from segarena.run_dir.layout import RunDir
from segarena.run_dir.schema import PseudoFolder, PseudoGain, RunInfo, Summary


def pseudo_summary(run_dir: RunDir, summary: Summary) -> dict[str, Any]:
    """summary.json's `pseudo` and `pseudo_gain` ({} for a run without data.pseudo): the gain
    over the first folder's first source run, or None and `pseudo_gain_reason` when the two
    runs were not scored on the same validation images."""
    run_info = run_dir.info()
    if not run_info.pseudo:
        return {}
    gain, reason = _gain(run_info.pseudo, run_dir, run_info, summary)
    return {"pseudo": run_info.pseudo, "pseudo_gain": gain, "pseudo_gain_reason": reason}


def _gain(
    records: list[PseudoFolder], run_dir: RunDir, run_info: RunInfo, summary: Summary
) -> tuple[PseudoGain | None, str | None]:
    if not records[0].source_runs:
        return None, f"{records[0].folder} names no source run"
    source = RunDir(records[0].source_runs[0])
    before = source.summary()
    if before is None:
        return None, f"source run {source} has no summary.json (not finished, or moved)"
    if run_info.debug:
        return None, "a --debug run scores a subset of the validation images"
    if not same_folds(source.path, run_dir.path):
        return None, f"source run {source} has another folds.csv: other validation images"
    folds_before = sorted(f.fold for f in before.folds)
    folds_now = sorted(f.fold for f in summary.folds)
    if folds_before != folds_now:
        return None, f"source run {source} trained folds {folds_before}, this run {folds_now}"
    per_class = {
        name: None if iou is None or before.per_class_iou[name] is None
        else iou - before.per_class_iou[name]
        for name, iou in summary.per_class_iou.items()
        if name in before.per_class_iou
    }  # fmt: skip
    gain = PseudoGain(
        source_run=str(source.path),
        source_miou=before.miou,
        miou=summary.miou,
        gain=summary.miou - before.miou,
        per_class_gain=per_class,
    )
    return gain, None


def gain_line(summary: Summary) -> str:
    """One line for the end of training: did the pseudo-labels help?"""
    gain = summary.pseudo_gain
    if gain is None:
        return f"pseudo-labels: no gain figure ({summary.pseudo_gain_reason})"
    return (
        f"pseudo-labels: mIoU {gain.miou:.4f} vs {gain.source_miou:.4f} of source run "
        f"{gain.source_run} ({gain.gain:+.4f})"
    )
