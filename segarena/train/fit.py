"""Train one fold: epochs, validation, checkpoints (+ EMA/SWA/top-k), resume, early stop, OOF."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning_fabric import Fabric

from segarena.config import Config
from segarena.data.augment import PAD_DIVISOR, build_transforms
from segarena.data.dataset import SegDataset, train_loader, val_loader
from segarena.data.mixing import build_mixer
from segarena.data.readers import Sample
from segarena.data.sampling import build_sampler
from segarena.data.tiles import TileDataset
from segarena.losses import build_loss
from segarena.metrics import scores
from segarena.models import build_model
from segarena.oof import PerImageRecorder, oof_name
from segarena.optim import build_optimizer
from segarena.records import Tracker, append_jsonl, read_jsonl, write_json_atomic
from segarena.train.averaging import Averaging, bn_images
from segarena.train.budget import Plan, fold_scheduler, plan_budget, replan_budget
from segarena.train.checkpoint import load_checkpoint, save_atomic, unwrap
from segarena.train.loop import train_one_epoch, validate
from segarena.train.progress import EpochProgress

# train.budget_min builds the fold before its epochs are known; the schedule is rebuilt
PROVISIONAL_EPOCHS = 1000


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


def train_dataset(config: Config, samples: list[Sample]) -> SegDataset:
    """Whole training images, or tiles of them (data.tiles), through augment.train."""
    cfg_data = config.data
    # a downconv model runs at 1/k size: its input must divide by k times the encoder stride
    pad = PAD_DIVISOR * config.model.downconv
    augment = config.augment
    transform = build_transforms(
        cfg_data, augment.train, True, "augment.train", pad, augment.preset, augment.rotate90
    )
    if cfg_data.tiles is None:
        return SegDataset(samples, transform, cache=cfg_data.cache)
    return TileDataset(
        samples, transform, cfg_data.tiles, cfg_data.ignore_index, cfg_data.cache, config.train.seed
    )


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


@dataclass
class FoldParts:
    """Everything one fold trains with, set up on Fabric."""

    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    loss_fn: torch.nn.Module
    mixer: Any
    train_ds: SegDataset
    loader: Any
    vloader: Any
    generator: torch.Generator
    norm: tuple[torch.Tensor, torch.Tensor]
    averaging: Averaging  # EMA, SWA, top-k


def build_parts(
    config: Config, fabric: Fabric, data: FoldData, fold_dir: Path, epochs: int
) -> FoldParts:
    """Datasets, loaders, model, optimizer, schedule (over `epochs`), loss, mixer and
    averaging of one fold."""
    cfg_train, cfg_data = config.train, config.data
    seed_everything(cfg_train.seed)
    train_ds = train_dataset(config, data.train)
    val_transform = build_transforms(cfg_data, config.augment.val, False, "augment.val")
    val_ds = SegDataset(data.val, val_transform, full_mask=True, cache=cfg_data.cache)
    generator = torch.Generator()
    sampler = build_sampler(cfg_train.sampler, train_ds.item_classes, generator)
    loader = train_loader(train_ds, cfg_train.batch_size, cfg_data.num_workers, generator, sampler)
    vloader = val_loader(val_ds, cfg_train.batch_size, cfg_data.num_workers)

    model = build_model(config.model, cfg_data.num_classes)
    if cfg_train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = fold_scheduler(config, optimizer, len(loader), epochs)
    model, optimizer = fabric.setup(model, optimizer)
    return FoldParts(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=build_loss(config.loss, cfg_data.num_classes, cfg_data.ignore_index),
        mixer=build_mixer(config.augment.mixing, cfg_data.num_classes, cfg_data.ignore_index),
        train_ds=train_ds,
        loader=fabric.setup_dataloaders(loader),
        vloader=fabric.setup_dataloaders(vloader, move_to_device=False),
        generator=generator,
        norm=mean_std(config, fabric.device),
        averaging=Averaging(cfg_train, model, optimizer, fold_dir),
    )


def reseed(parts: FoldParts, seed: int) -> None:
    """Seed all an epoch draws from: batch order, augmentations, dropout, random tiles."""
    seed_everything(seed)
    parts.generator.manual_seed(seed)
    parts.train_ds.transform.set_random_seed(seed)


def restore(parts: FoldParts, fabric: Fabric, fold_dir: Path, fold: int) -> dict[str, Any]:
    """The fold's loop state, resumed from last.ckpt when a killed run left one."""
    # top: the top-k ranking, [epoch, val mIoU] pairs (segarena.train.averaging.TopK)
    # seconds: the fold's training time over every session, for train.budget_min
    state = {"epoch": 0, "num_updates": 0, "best_miou": -1.0, "best_epoch": 0, "bad": 0, "top": [],
             "seconds": 0.0}  # fmt: skip
    last_path, metrics_path = fold_dir / "last.ckpt", fold_dir / "metrics.jsonl"
    if last_path.is_file():
        ckpt = load_checkpoint(last_path)
        unwrap(parts.model).load_state_dict(ckpt["model"])
        parts.optimizer.load_state_dict(ckpt["optimizer"])
        parts.scheduler.load_state_dict(ckpt["scheduler"])
        parts.averaging.load_state_dict(ckpt)
        state.update(ckpt["state"])
        fabric.print(f"fold {fold}: resuming after epoch {state['epoch']}")
    # Epochs logged after the last checkpoint (killed in between) are trained again.
    kept = [r for r in read_jsonl(metrics_path) if r["epoch"] <= state["epoch"]]
    if fabric.is_global_zero:
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        parts.averaging.top_k.prune(state["top"])  # epochs to train again may have left files
    return state


def val_matrix(config: Config, fabric: Fabric, parts: FoldParts, model, on_probs=None):
    """Confusion matrix of `model` on the fold's validation images."""
    cfg_data = config.data
    with fabric.autocast():  # the run's precision also for EMA / SWA copies Fabric never wrapped
        return validate(
            fabric, model, parts.vloader, cfg_data.num_classes, cfg_data.ignore_index,
            parts.norm, on_probs=on_probs,
        ).matrix  # fmt: skip


def validate_epoch(
    config: Config, fabric: Fabric, parts: FoldParts, state: dict, record: dict, best_path: Path
) -> float:
    """Score the model (its EMA with train.ema) on the fold's validation images; keep
    best.ckpt and the top-k; count patience."""
    scored = parts.averaging.scored()
    val = scores(val_matrix(config, fabric, parts, scored))
    metric = val["miou"]
    record.update(val_miou=metric, val_pixel_acc=val["pixel_acc"])
    record["val_per_class_iou"] = val["per_class_iou"]
    checkpoint = {"model": scored.state_dict(), "epoch": record["epoch"], "miou": metric}
    if metric > state["best_miou"]:
        state.update(best_miou=metric, best_epoch=record["epoch"], bad=0)
        if fabric.is_global_zero:
            save_atomic(checkpoint, best_path)
    else:
        state["bad"] += 1
    parts.averaging.top_k.offer(state["top"], checkpoint, write=fabric.is_global_zero)
    return metric


def save_epoch(
    fabric: Fabric, parts: FoldParts, state: dict, record: dict, fold_dir: Path, fold: int,
    tracker: Tracker,
) -> None:  # fmt: skip
    """metrics.jsonl and MLflow first, then last.ckpt (a resume re-trains unsaved epochs)."""
    if fabric.is_global_zero:
        append_jsonl(fold_dir / "metrics.jsonl", record)
        tracker.log_metrics(
            {f"fold{fold}/{k}": v for k, v in record.items() if k != "epoch"}, record["epoch"]
        )
        checkpoint = {
            "model": unwrap(parts.model).state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "state": state,
            **parts.averaging.state_dict(),
        }
        save_atomic(checkpoint, fold_dir / "last.ckpt")
        parts.averaging.top_k.prune(state["top"])  # only once last.ckpt no longer lists them
    fabric.barrier()


def fit_fold(
    config: Config,
    fabric: Fabric,
    data: FoldData,
    fold_dir: Path,
    fold: int,
    tracker: Tracker,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Train fold `fold` into `fold_dir`, resuming from its last.ckpt if present.

    With train.budget_min, `budget_s` is the fold's share of it: the epochs are planned from
    measured speed on the first fold start (plan.json) and kept on resume.
    Returns the fold's result (also written to fold_dir/result.json): best epoch and mIoU,
    the scores of the best weights, training throughput and seconds.
    """
    started = time.perf_counter()
    fold_dir.mkdir(parents=True, exist_ok=True)
    result_path = fold_dir / "result.json"
    if result_path.is_file():  # finished before a resume: nothing left to do
        return json.loads(result_path.read_text())
    cfg_train = config.train
    plan = Plan.load(fold_dir / "plan.json")
    epochs = plan.epochs if plan is not None else cfg_train.epochs
    parts = build_parts(config, fabric, data, fold_dir, epochs or PROVISIONAL_EPOCHS)
    if epochs is None:
        assert budget_s is not None, "train.budget_min needs the fold's share of it"
        plan = plan_budget(config, fabric, parts, budget_s - (time.perf_counter() - started), fold)
        epochs = plan.epochs
        if fabric.is_global_zero:
            plan.save(fold_dir / "plan.json")
    state = restore(parts, fabric, fold_dir, fold)
    seconds_before = state["seconds"]
    progress = EpochProgress(enabled=fabric.is_global_zero)
    while state["epoch"] < epochs:  # train.budget_min may correct `epochs` after epoch 1
        epoch = state["epoch"]
        # Reseeding per epoch makes epoch e's batches, augmentations and dropout the same
        # whether or not the run was resumed before it: no RNG state needs saving.
        reseed(parts, cfg_train.seed + epoch)
        schedule = parts.averaging.schedule(epoch + 1, parts.scheduler)  # SWALR from swa start
        with progress.epoch(fold, epoch + 1, epochs, len(parts.loader)) as on_step:
            stats, state["num_updates"] = train_one_epoch(
                fabric, parts.model, parts.loader, parts.loss_fn, parts.optimizer,
                schedule, epoch, state["num_updates"], parts.norm,
                accumulate=cfg_train.accumulate, grad_clip=cfg_train.grad_clip,
                channels_last=cfg_train.channels_last, on_step=on_step, mixer=parts.mixer,
                on_update=parts.averaging.on_update,
            )  # fmt: skip
        parts.averaging.end_epoch(epoch + 1)  # SWA averages the epoch's final weights
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": stats.loss,
            "lr": stats.lr,
            "images_per_s": stats.images_per_s,
            "data_wait_share": stats.data_wait / max(stats.seconds, 1e-9),
            "seconds": stats.seconds,
        }
        metric = None
        if (epoch + 1) % cfg_train.val_every == 0 or epoch + 1 == epochs:
            metric = validate_epoch(config, fabric, parts, state, record, fold_dir / "best.ckpt")
        schedule.step_epoch(epoch + 1, metric)
        state["epoch"] = epoch + 1
        state["seconds"] = seconds_before + time.perf_counter() - started
        stop = cfg_train.early_stopping is not None and state["bad"] >= cfg_train.early_stopping
        progress.summary(fold, record, state["best_miou"], stop)
        if plan is not None and not plan.replanned:  # before last.ckpt saves the schedule
            plan = replan_budget(config, fabric, parts, plan, state, record, fold_dir)
            epochs = plan.epochs
        save_epoch(fabric, parts, state, record, fold_dir, fold, tracker)
        if stop:
            break
    result = finish_fold(config, fabric, parts, data.val, fold_dir, fold, epochs)
    result["seconds"] = seconds_before + time.perf_counter() - started
    result["plan"] = None if plan is None else asdict(plan)
    if fabric.is_global_zero:
        write_json_atomic(result_path, result)
    return result


def finish_fold(config, fabric, parts: FoldParts, val_samples, fold_dir, fold, epochs) -> dict:
    """Write ema.ckpt / swa.ckpt, then score the best weights once more, writing OOF
    probabilities and the per-image matrices; returns the fold result."""
    history = read_jsonl(fold_dir / "metrics.jsonl")
    reseed(parts, config.train.seed + epochs)  # SWA's BN update draws batches
    averaged = parts.averaging.finish(
        fabric, bn_images(parts.loader, parts.norm, config.train.channels_last),
        lambda model: val_matrix(config, fabric, parts, model),
        history[-1]["epoch"], history[-1].get("val_miou"),
    )  # fmt: skip
    best = load_checkpoint(fold_dir / "best.ckpt")
    unwrap(parts.model).load_state_dict(best["model"])
    # per-image confusion matrices let `segarena compare` resample images exactly
    per_image = PerImageRecorder(val_samples, config.data.num_classes, config.data.ignore_index)
    writer = (
        per_image.wrap(oof_writer(fold_dir, val_samples, config)) if fabric.is_global_zero else None
    )
    matrix = val_matrix(config, fabric, parts, parts.model, on_probs=writer)
    final = scores(matrix)
    result = {
        "fold": fold,
        "best_epoch": best["epoch"],
        "epochs": len(history),
        "miou": final["miou"],
        "scores": final,
        "confusion": matrix.tolist(),
        "train_images_per_s": float(np.mean([r["images_per_s"] for r in history])),
        "data_wait_share": float(np.mean([r["data_wait_share"] for r in history])),
        "train_loss": [r["train_loss"] for r in history],
        **averaged,  # swa_miou, swa_confusion with train.swa
    }
    if fabric.is_global_zero:
        per_image.save(fold_dir)  # before result.json: a finished fold always has it
    return result
