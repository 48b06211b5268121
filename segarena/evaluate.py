"""Recompute a run's metrics from its checkpoints on a split of its own folds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segarena.config import InferConfig
from segarena.data.augment import build_transforms
from segarena.data.dataset import SegDataset, val_loader
from segarena.data.folds import fold_indices
from segarena.errors import UserError
from segarena.infer.options import infer_options
from segarena.infer.sliding import InferenceModel
from segarena.metrics import scores
from segarena.models import build_model
from segarena.records import write_json_atomic
from segarena.train.checkpoint import load_checkpoint
from segarena.train.fit import mean_std
from segarena.train.loop import validate
from segarena.train.run import make_fabric, resume_run

SPLITS = ("val", "train", "all")


def evaluate(
    run_dir: Path, split: str = "val", checkpoint: str = "best", infer: dict | None = None
) -> dict[str, Any]:
    """Score every fold's `checkpoint` on `split` (val: the fold's own validation images).

    `infer` overrides the run's config.infer (tta, scales, merge, window, overlap,
    sw_batch_size) so that each inference choice can be scored before it is used.
    Writes run_dir/eval_<split>.json (eval_<split>_<options>.json when TTA, scales or a
    window are used) and returns it: per fold and pooled scores.
    """
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    config, run_info, samples, folds = resume_run(run_dir)
    options = infer_options(config.infer, infer)
    fold_dirs = sorted(run_dir.glob("fold_*/"), key=lambda p: int(p.name.split("_")[1]))
    fold_dirs = [d for d in fold_dirs if (d / f"{checkpoint}.ckpt").is_file()]
    if not fold_dirs:
        raise UserError(f"{run_dir}: no fold_*/{checkpoint}.ckpt to evaluate; train first")
    fabric = make_fabric(config)
    norm = mean_std(config, fabric.device)
    transform = build_transforms(config.data, config.augment.val, False, "augment.val")
    per_fold, matrices = [], []
    for fold_dir in fold_dirs:
        fold = int(fold_dir.name.split("_")[1])
        train_idx, val_idx = fold_indices(folds, fold)
        chosen = {"val": val_idx, "train": train_idx, "all": range(len(samples))}[split]
        dataset = SegDataset([samples[i] for i in chosen], transform, full_mask=True)
        loader = val_loader(dataset, config.train.batch_size, config.data.num_workers)
        model = build_model(
            config.model.model_copy(update={"encoder_weights": None}), config.data.num_classes
        )
        model.load_state_dict(load_checkpoint(fold_dir / f"{checkpoint}.ckpt")["model"])
        model = fabric.setup_module(model)
        if not options.is_plain:  # the plain model keeps training-time validation exact
            model = InferenceModel(model, options)
        with torch.inference_mode():
            matrix = validate(
                fabric, model, loader, config.data.num_classes, config.data.ignore_index, norm
            ).matrix
        matrices.append(np.asarray(matrix))
        fold_scores = scores(matrix)
        per_fold.append({"fold": fold, "images": len(dataset), **fold_scores})
        fabric.print(
            f"fold {fold}: {split} mIoU {fold_scores['miou']:.4f} "
            f"pixel acc {fold_scores['pixel_acc']:.4f} ({len(dataset)} images)"
        )
    pooled = scores(np.sum(matrices, axis=0))
    result = {
        "split": split,
        "checkpoint": checkpoint,
        "miou": pooled["miou"],
        "per_class_iou": dict(zip(config.data.classes, pooled["per_class_iou"])),
        "pixel_acc": pooled["pixel_acc"],
        "folds": per_fold,
        "infer": options.model_dump(mode="json"),
    }
    write_json_atomic(run_dir / f"eval_{split}{options_tag(options)}.json", result)
    fabric.print(f"pooled {split} mIoU {pooled['miou']:.4f}")
    return result


def options_tag(options: InferConfig) -> str:
    """A file-name tag of non-plain inference options, e.g. `_hflip_s0.75-1_mean_w512x512`."""
    if options.is_plain:
        return ""
    scales = "-".join(f"{s:g}" for s in options.scales)
    window = f"_w{options.window[0]}x{options.window[1]}" if options.window else ""
    return f"_{options.tta}_s{scales}_{options.merge}{window}"
