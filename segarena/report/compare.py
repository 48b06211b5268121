"""`segarena compare RUN_A RUN_B`: what changed between two runs, and whether it helped.

The mIoU difference B - A is measured on the images that both runs predicted out of fold,
image by image (segarena.run_dir.per_image), with a paired bootstrap over images: every
resample draws the same images for both runs (metrics.bootstrap_miou_diff_ci).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from segarena.config.diff import Change, config_diff, settings_changed
from segarena.errors import UserError
from segarena.metrics import bootstrap_miou_diff_ci, scores
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import (
    RunMatrices,
    oof_matrices,
    paired_matrices,
    samples_by_oof_name,
    stored_matrices,
)


@dataclass
class Comparison:
    run_a: Path
    run_b: Path
    changes: list[Change]
    settings: list[str]  # changed keys that count (settings_changed)
    classes: list[str]
    images_a: int  # images with OOF predictions in A
    images_b: int
    images: int  # images both runs predicted: what is compared
    source: str  # "per_image_cm" (saved by training) or "oof" (recomputed from probabilities)
    scores_a: dict
    scores_b: dict
    ci: tuple[float, float]  # interval of mIoU(B) - mIoU(A)
    n_boot: int

    @property
    def diff(self) -> float:
        return self.scores_b["miou"] - self.scores_a["miou"]


def _matrices(run_a: Path, run_b: Path) -> tuple[RunMatrices, RunMatrices]:
    """Both runs' per-image matrices from the same source, so that they compare alike."""
    a, b = stored_matrices(run_a), stored_matrices(run_b)
    if a is not None and b is not None:
        return a, b
    config_a, config_b = RunDir(run_a).config(), RunDir(run_b).config()
    samples_a = samples_by_oof_name(config_a)
    samples_b = samples_a if config_b.data == config_a.data else samples_by_oof_name(config_b)
    return oof_matrices(run_a, config_a, samples_a), oof_matrices(run_b, config_b, samples_b)


def compare_runs(run_a: Path, run_b: Path, n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Config diff, per-class IoU and the paired-bootstrap interval of mIoU(B) - mIoU(A)."""
    if n_boot < 100:
        raise UserError(f"--n-boot {n_boot}: expected at least 100 resamples")
    config_a, config_b = RunDir(run_a).config(), RunDir(run_b).config()
    if config_a.data.classes != config_b.data.classes:
        raise UserError(
            f"{run_a} predicts classes {config_a.data.classes} but {run_b} predicts "
            f"{config_b.data.classes}; expected runs on the same classes"
        )
    raw_a, raw_b = RunDir(run_a).raw_config(), RunDir(run_b).raw_config()
    changes = config_diff(raw_a, raw_b)
    a, b = _matrices(Path(run_a), Path(run_b))
    cms_a, cms_b = paired_matrices(a, b, f"{run_a} and {run_b}")
    return Comparison(
        run_a=Path(run_a),
        run_b=Path(run_b),
        changes=changes,
        settings=settings_changed(changes),
        classes=list(config_a.data.classes),
        images_a=len(a.ids),
        images_b=len(b.ids),
        images=len(cms_a),
        source=a.source,
        scores_a=scores(cms_a.sum(0)),
        scores_b=scores(cms_b.sum(0)),
        ci=bootstrap_miou_diff_ci(cms_a, cms_b, n_boot=n_boot, seed=seed),
        n_boot=n_boot,
    )


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _iou(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_comparison(c: Comparison, console: Console) -> None:
    """The comparison as rich tables and a verdict line."""
    console.print(f"A: {c.run_a}\nB: {c.run_b}")
    if c.changes:
        table = Table(title="Config changes (A -> B)")
        for name in ("setting", "A", "B"):
            table.add_column(name, overflow="fold")
        for change in c.changes:
            table.add_row(change.key, _shown(change.old), _shown(change.new))
        console.print(table)
    else:
        console.print("Configs are identical.")
    if len(c.settings) > 1:
        console.print(
            f"[yellow]warning:[/] B differs from A in {len(c.settings)} settings "
            f"({', '.join(c.settings)}): a difference in mIoU cannot be put down to one of them",
            soft_wrap=True,  # whole lines: the terminal wraps them, and grep finds them
        )
    if c.images < max(c.images_a, c.images_b):
        console.print(
            f"note: A has out-of-fold predictions for {c.images_a} images, B for "
            f"{c.images_b}; comparing on the {c.images} images both hold",
            soft_wrap=True,
        )
    table = Table(title=f"Per-class IoU on {c.images} images")
    for name in ("class", "A", "B", "B - A"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for name, iou_a, iou_b in zip(
        c.classes, c.scores_a["per_class_iou"], c.scores_b["per_class_iou"]
    ):
        delta = "n/a" if iou_a is None or iou_b is None else f"{iou_b - iou_a:+.4f}"
        table.add_row(name, _iou(iou_a), _iou(iou_b), delta)
    console.print(table)
    low, high = c.ci
    how = (
        "per-image matrices saved by training"
        if c.source == "per_image_cm"
        else ("recomputed from the OOF probabilities, upsampled to mask size")
    )
    console.print(
        f"mIoU A {c.scores_a['miou']:.4f}, B {c.scores_b['miou']:.4f}; B - A {c.diff:+.4f}, "
        f"95% CI [{low:+.4f}, {high:+.4f}] (paired bootstrap over {c.images} images, "
        f"{c.n_boot} resamples; {how})",
        soft_wrap=True,
    )
    if low > 0 or high < 0:
        console.print(f"B is {'better' if low > 0 else 'worse'} than A: the interval excludes 0.")
    else:
        console.print("No clear difference: the interval includes 0.")
