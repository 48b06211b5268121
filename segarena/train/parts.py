"""What one fold trains with: its datasets and loaders, and the Learner (model, optimizer,
schedule, loss, mixer), set up on Fabric; and the seeding that makes epochs repeatable."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from lightning_fabric import Fabric
from torch.utils.data import DataLoader

from segarena.config import Config
from segarena.data.augment import PAD_DIVISOR, build_transform, build_transforms
from segarena.data.bad_images import SkippedImages
from segarena.data.dataset import SegDataset, loader_workers, train_loader, val_loader
from segarena.data.mixing import build_mixer
from segarena.data.readers import Sample
from segarena.data.sampling import SAMPLERS, RankShard, build_sampler
from segarena.data.tiles import TileDataset
from segarena.errors import UserError
from segarena.model.build import build_model
from segarena.train.averaging import Averaging
from segarena.train.distributed import say
from segarena.train.loop import Learner
from segarena.train.losses import LOSSES, build_loss
from segarena.train.optim import (
    SCHEDULERS,
    LrSchedule,
    build_optimizer,
    build_scheduler,
    check_optimizer_name,
)
from segarena.util.registry import Registry


@dataclass
class FoldData:
    train: list[Sample]
    val: list[Sample]


@dataclass
class FoldParts:
    """Everything one fold trains with, set up on Fabric."""

    learner: Learner
    train_ds: SegDataset
    loader: DataLoader
    vloader: DataLoader
    generator: torch.Generator  # the training batch order (the same in every process)
    averaging: Averaging  # EMA, SWA, top-k
    rank: int = 0  # this process's rank (several processes): its own random streams
    worker_seeds: torch.Generator | None = None  # several processes: this one's loader seeds
    # data.on_bad_image: skip -- the training images left out (their paths), kept by last.ckpt
    skipped: list[str] = field(default_factory=list)


# Several processes: rank r's augmentations, dropout and mixing draw from seed + r * STRIDE,
# so that the processes do not apply the same random stream to their different images.
RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reseed(parts: FoldParts, seed: int) -> None:
    """Seed all an epoch draws from: batch order, augmentations, dropout, random tiles.
    The order is the same in every process; the rest is each process's own (rank 0's is
    a one-process run's), so a resumed process draws what it would have drawn."""
    own = seed + RANK_SEED_STRIDE * parts.rank
    seed_everything(own)
    parts.generator.manual_seed(seed)
    if parts.worker_seeds is not None:
        parts.worker_seeds.manual_seed(own)
    parts.train_ds.transform.set_random_seed(own)


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
        cfg_data, augment.train, True, "augment.train",
        pad_divisor=pad, preset=augment.preset, rotate90=augment.rotate90,
    )  # fmt: skip
    if cfg_data.tiles is None:
        skip = cfg_data.on_bad_image == "skip"
        return SegDataset(samples, transform, cache=cfg_data.cache, keep_errors=skip)
    return TileDataset(
        samples, transform, cfg_data.tiles, cfg_data.ignore_index,
        cache=cfg_data.cache, seed=config.train.seed,
    )  # fmt: skip


def check_names(config: Config) -> None:
    """UserError (with a did-you-mean) for a loss, scheduler, sampler, optimizer or
    augmentation name that does not exist, or an augmentation parameter its transform does
    not take: the config keeps these as plain strings (config/ comes before the stages
    that know them), so a new run checks them here, before any file is written."""
    for i, term in enumerate(config.loss.terms):
        _registered(LOSSES, term.name, f"loss.terms[{i}].name")
    _registered(SCHEDULERS, config.scheduler.name, "scheduler.name")
    _registered(SAMPLERS, config.train.sampler.name, "train.sampler.name")
    check_optimizer_name(config.optimizer.name)
    for section in ("train", "val"):  # each transform built once, then dropped
        for i, spec in enumerate(getattr(config.augment, section)):
            build_transform(spec, f"augment.{section}[{i}]", config.data.ignore_index)


def _registered(registry: Registry, name: str, key: str) -> None:
    try:
        registry.get(name)
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None


def fold_scheduler(config: Config, optimizer, loader_steps: int, epochs: int) -> LrSchedule:
    """The fold's lr schedule over `epochs` epochs of `loader_steps` batches."""
    updates_per_epoch = math.ceil(loader_steps / config.train.accumulate)
    return build_scheduler(optimizer, config.scheduler, epochs, updates_per_epoch)


def build_parts(config: Config, fabric: Fabric, data: FoldData, fold_dir, epochs: int) -> FoldParts:
    """Datasets, loaders, model, optimizer, schedule (over `epochs`), loss, mixer and
    averaging of one fold."""
    cfg_train, cfg_data = config.train, config.data
    seed_everything(cfg_train.seed)
    train_ds = train_dataset(config, data.train)
    val_transform = build_transforms(cfg_data, config.augment.val, False, "augment.val")
    val_ds = SegDataset(data.val, val_transform, full_mask=True, cache=cfg_data.cache)
    generator = torch.Generator()
    sampler = build_sampler(cfg_train.sampler, train_ds.item_classes, generator)
    # several processes: train.batch_size is the global batch; each takes its share of
    # every epoch's order (RankShard) and every validation image once, with no padding
    rank, world = fabric.global_rank, fabric.world_size
    batch, worker_seeds, val_indices = cfg_train.batch_size // world, None, None
    if world > 1:
        sampler = RankShard(len(train_ds), rank, world, generator, sampler)
        worker_seeds, val_indices = torch.Generator(), list(range(rank, len(val_ds), world))
    workers = loader_workers(cfg_data.num_workers, cfg_data.cache, fabric.device)
    if cfg_data.num_workers == "auto":
        say(fabric, f"data.num_workers auto: {workers} (cache {cfg_data.cache}, {fabric.device})")
    skip = cfg_data.on_bad_image == "skip"
    loader = train_loader(train_ds, batch, workers, worker_seeds or generator, sampler, skip)
    vloader = val_loader(val_ds, batch, workers, val_indices)

    model = build_model(config.model, cfg_data.num_classes)
    if cfg_train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = fold_scheduler(config, optimizer, len(loader), epochs)
    model, optimizer = fabric.setup(model, optimizer)
    averaging = Averaging(cfg_train, model, optimizer, fold_dir)
    learner = Learner(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=build_loss(config.loss, cfg_data.num_classes, cfg_data.ignore_index),
        norm=mean_std(config, fabric.device),
        mixer=build_mixer(config.augment.mixing, cfg_data.num_classes, cfg_data.ignore_index),
        on_update=averaging.on_update,
    )
    train_batches = fabric.setup_dataloaders(loader, use_distributed_sampler=False)
    skipped: list[str] = []
    if skip:  # the workers' news of unreadable images is reported here, in this process
        warn = partial(say, fabric, level=logging.WARNING)
        train_batches = SkippedImages(train_batches, skipped, warn)
    return FoldParts(
        learner=learner,
        train_ds=train_ds,
        loader=train_batches,
        # Fabric's DistributedSampler would pad the validation images (scoring some twice)
        vloader=fabric.setup_dataloaders(
            vloader, move_to_device=False, use_distributed_sampler=False
        ),
        generator=generator,
        averaging=averaging,
        rank=rank,
        worker_seeds=worker_seeds,
        skipped=skipped,
    )
