"""Train one fold: epochs, validation, best/last checkpoints, resume, early stopping, OOF."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning_fabric import Fabric

from segarena.config import Config
from segarena.data.augment import build_transforms
from segarena.data.dataset import SegDataset, train_loader, val_loader
from segarena.data.readers import Sample
from segarena.losses import build_loss
from segarena.metrics import scores
from segarena.models import build_model
from segarena.optim import build_optimizer, build_scheduler
from segarena.records import Tracker, append_jsonl, read_jsonl, write_json_atomic
from segarena.train.checkpoint import load_checkpoint, save_atomic, unwrap
from segarena.train.loop import train_one_epoch, validate
from segarena.train.progress import EpochProgress


@dataclass
class FoldData:
    train: list[Sample]
    val: list[Sample]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def mean_std(config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(config.data.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(config.data.std, device=device).view(1, 3, 1, 1)
    return mean, std


def oof_writer(fold_dir: Path, samples: list[Sample], config: Config):
    """Callback saving each validation image's probabilities compactly (see train.oof_*)."""
    out = fold_dir / "oof"
    out.mkdir(parents=True, exist_ok=True)
    dtype, scale = config.train.oof_dtype, config.train.oof_scale

    def write(indices: list[int], probs: torch.Tensor) -> None:
        if scale != 1.0:
            probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
        probs = probs[0].cpu()
        array = (
            (probs * 255).round().to(torch.uint8).numpy()
            if dtype == "uint8"
            else probs.to(torch.float16).numpy()
        )
        np.save(out / f"{oof_name(samples[indices[0]].id)}.npy", array)

    return write


def oof_name(sample_id: str) -> str:
    """File-name-safe form of a sample id (ids may hold a source prefix with '/')."""
    return sample_id.replace("/", "__")


def fit_fold(
    config: Config,
    fabric: Fabric,
    data: FoldData,
    fold_dir: Path,
    fold: int,
    tracker: Tracker,
) -> dict[str, Any]:
    """Train fold `fold` into `fold_dir`, resuming from its last.ckpt if present.

    Returns the fold's result (also written to fold_dir/result.json): best epoch and mIoU,
    the scores of the best weights, and training throughput.
    """
    fold_dir.mkdir(parents=True, exist_ok=True)
    result_path = fold_dir / "result.json"
    if result_path.is_file():  # finished before a resume: nothing left to do
        return json.loads(result_path.read_text())
    cfg_train, cfg_data = config.train, config.data
    seed_everything(cfg_train.seed)
    train_ds = SegDataset(
        data.train,
        build_transforms(cfg_data, config.augment.train, True, "augment.train"),
        cache=cfg_data.cache,
    )
    val_ds = SegDataset(
        data.val,
        build_transforms(cfg_data, config.augment.val, False, "augment.val"),
        full_mask=True,
        cache=cfg_data.cache,
    )
    generator = torch.Generator()
    loader = train_loader(train_ds, cfg_train.batch_size, cfg_data.num_workers, generator)
    vloader = val_loader(val_ds, cfg_train.batch_size, cfg_data.num_workers)

    model = build_model(config.model, cfg_data.num_classes)
    if cfg_train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optimizer)
    updates_per_epoch = math.ceil(len(loader) / cfg_train.accumulate)
    scheduler = build_scheduler(optimizer, config.scheduler, cfg_train.epochs, updates_per_epoch)
    loss_fn = build_loss(config.loss, cfg_data.num_classes, cfg_data.ignore_index)
    model, optimizer = fabric.setup(model, optimizer)
    loader = fabric.setup_dataloaders(loader)
    vloader = fabric.setup_dataloaders(vloader, move_to_device=False)
    norm = mean_std(config, fabric.device)

    state = {"epoch": 0, "num_updates": 0, "best_miou": -1.0, "best_epoch": 0, "bad": 0}
    last_path, best_path = fold_dir / "last.ckpt", fold_dir / "best.ckpt"
    metrics_path = fold_dir / "metrics.jsonl"
    if last_path.is_file():
        ckpt = load_checkpoint(last_path)
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["state"])
        fabric.print(f"fold {fold}: resuming after epoch {state['epoch']}")
    # Epochs logged after the last checkpoint (killed in between) are trained again.
    kept = [r for r in read_jsonl(metrics_path) if r["epoch"] <= state["epoch"]]
    if fabric.is_global_zero:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    progress = EpochProgress(enabled=fabric.is_global_zero)
    for epoch in range(state["epoch"], cfg_train.epochs):
        # Reseeding per epoch makes epoch e's batches, augmentations and dropout the same
        # whether or not the run was resumed before it: no RNG state needs saving.
        seed_everything(cfg_train.seed + epoch)
        generator.manual_seed(cfg_train.seed + epoch)
        train_ds.transform.set_random_seed(cfg_train.seed + epoch)
        with progress.epoch(fold, epoch + 1, cfg_train.epochs, len(loader)) as on_step:
            stats, state["num_updates"] = train_one_epoch(
                fabric,
                model,
                loader,
                loss_fn,
                optimizer,
                scheduler,
                epoch,
                state["num_updates"],
                norm,
                cfg_train.accumulate,
                cfg_train.grad_clip,
                cfg_train.channels_last,
                on_step,
            )
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "lr": stats.lr,
            "images_per_s": stats.images_per_s,
            "data_wait_share": stats.data_wait / max(stats.seconds, 1e-9),
            "seconds": stats.seconds,
        }
        metric = None
        if (epoch + 1) % cfg_train.val_every == 0 or epoch + 1 == cfg_train.epochs:
            val = scores(
                validate(
                    fabric, model, vloader, cfg_data.num_classes, cfg_data.ignore_index, norm
                ).matrix
            )
            metric = val["miou"]
            record.update(val_miou=metric, val_pixel_acc=val["pixel_acc"])
            record["val_per_class_iou"] = val["per_class_iou"]
            if metric > state["best_miou"]:
                state.update(best_miou=metric, best_epoch=epoch + 1, bad=0)
                if fabric.is_global_zero:
                    save_atomic(
                        {"model": unwrap(model).state_dict(), "epoch": epoch + 1, "miou": metric},
                        best_path,
                    )
            else:
                state["bad"] += 1
        scheduler.step_epoch(epoch + 1, metric)
        state["epoch"] = epoch + 1
        stop = cfg_train.early_stopping is not None and state["bad"] >= cfg_train.early_stopping
        progress.summary(fold, record, state["best_miou"], stop)
        if fabric.is_global_zero:
            append_jsonl(metrics_path, record)
            tracker.log_metrics(
                {f"fold{fold}/{k}": v for k, v in record.items() if k != "epoch"}, epoch + 1
            )
            save_atomic(
                {
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                },
                last_path,
            )
        fabric.barrier()
        if stop:
            break
    return finish_fold(config, fabric, model, vloader, data.val, fold_dir, fold, norm)


def finish_fold(config, fabric, model, vloader, val_samples, fold_dir, fold, norm) -> dict:
    """Score the best weights once more, writing OOF probabilities and the fold result."""
    best = load_checkpoint(fold_dir / "best.ckpt")
    unwrap(model).load_state_dict(best["model"])
    writer = oof_writer(fold_dir, val_samples, config) if fabric.is_global_zero else None
    matrix = validate(
        fabric,
        model,
        vloader,
        config.data.num_classes,
        config.data.ignore_index,
        norm,
        on_probs=writer,
    ).matrix
    history = read_jsonl(fold_dir / "metrics.jsonl")
    result = {
        "fold": fold,
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "miou": scores(matrix)["miou"],
        "scores": scores(matrix),
        "confusion": matrix.tolist() if hasattr(matrix, "tolist") else matrix,
        "train_images_per_s": float(np.mean([r["images_per_s"] for r in history])),
        "data_wait_share": float(np.mean([r["data_wait_share"] for r in history])),
        "train_loss": [r["train_loss"] for r in history],
    }
    if fabric.is_global_zero:
        write_json_atomic(fold_dir / "result.json", result)
    return result
