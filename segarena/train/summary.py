"""summary.json: the pooled (out-of-fold) and per-fold scores of a finished run."""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning_fabric import Fabric

from segarena.config import Config
from segarena.data.bad_images import skipped_summary
from segarena.metrics import scores
from segarena.records.tracking import Tracker
from segarena.run_dir.layout import RunDir
from segarena.run_dir.schema import FoldResult, FoldScore, Summary
from segarena.train.budget import budget_line, budget_summary
from segarena.train.distributed import say
from segarena.train.pseudo_gain import pseudo_summary


def write_summary(
    config: Config, run_dir: RunDir, results: list[FoldResult], *, tracker: Tracker,
    fabric: Fabric, outside_folds: float,
) -> None:  # fmt: skip
    """summary.json (with train.budget_min's budget and data.pseudo's gain) and the MLflow
    run's final metrics; `outside_folds`: the session's seconds outside the folds."""
    summary = summarize(config, results)
    if config.train.budget_min is not None:
        summary.budget = budget_summary(config.train.budget_min, results, outside_folds)
        say(fabric, budget_line(summary.budget))
    summary = summary.updated(**pseudo_summary(run_dir, summary))
    run_dir.write_summary(summary)
    tracker.log_metrics({"miou": summary.miou, "miou_std": summary.miou_std}, 0)
    tracker.finish(run_dir.summary_path)


def summarize(config: Config, results: list[FoldResult]) -> Summary:
    """Pooled (OOF) and per-fold scores; `miou` is the pooled mIoU of all folds' val images."""
    pooled = scores(np.sum([np.array(r.confusion) for r in results], axis=0))
    fold_mious = [r.miou for r in results]
    skipped = [r.skipped_images for r in results]
    return Summary(
        miou=pooled["miou"],
        miou_mean=float(np.mean(fold_mious)),
        miou_std=float(np.std(fold_mious)),
        per_class_iou=dict(zip(config.data.classes, pooled["per_class_iou"])),
        pixel_acc=pooled["pixel_acc"],
        folds=[fold_score(r) for r in results],
        epochs=config.train.epochs or [r.epochs for r in results],
        train_images_per_s=float(np.mean([r.train_images_per_s for r in results])),
        data_wait_share=float(np.mean([r.data_wait_share for r in results])),
        **swa_summary(results),
        **skipped_summary(config.data.on_bad_image, skipped),
    )


def fold_score(result: FoldResult) -> FoldScore:
    """summary.json's entry of one fold (swa_miou with train.swa)."""
    score = FoldScore(
        fold=result.fold, miou=result.miou, best_epoch=result.best_epoch, epochs=result.epochs
    )
    if result.swa_miou is not None:
        score.swa_miou = result.swa_miou
    return score


def swa_summary(results: list[FoldResult]) -> dict[str, Any]:
    """train.swa: the pooled mIoU of the folds' swa.ckpt, when every fold has one."""
    if not results or any(r.swa_confusion is None for r in results):
        return {}
    pooled = scores(np.sum([np.array(r.swa_confusion) for r in results], axis=0))
    return {"swa_miou": pooled["miou"]}
