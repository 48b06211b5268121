"""Shared by the CamVid benchmarks: probe a recipe's speed, fit epochs to a wall-clock
budget, train one arm with segarena and collect its scores.

A cosine schedule must know its length in advance, so a budget cannot just stop a run:
a short probe measures training images/s and sets the epoch count instead.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning_fabric import Fabric

from segarena.config import Config, SchedulerConfig, load_config
from segarena.data.dataset import train_loader
from segarena.data.mixing import build_mixer
from segarena.data.readers import Sample, read_samples
from segarena.losses import build_loss
from segarena.models import build_model
from segarena.optim import build_optimizer, build_scheduler
from segarena.train.fit import mean_std, train_dataset
from segarena.train.loop import train_one_epoch
from segarena.train.run import train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "camvid.yaml"


def probe(config: Config, samples: list[Sample], batches: int = 4, workers: int = 0):
    """(training images/s, share of step time waiting for data) over a few batches.

    Goes through segarena.train.fit.train_dataset and the configured batch mixer, so the
    probe pads, augments and mixes like the real run does; the first batch (start-up
    costs) is left out of the rate.
    """
    subset = samples[: config.train.batch_size * (batches + 1)]
    loader = train_loader(train_dataset(config, subset), config.train.batch_size, workers, None)
    model = build_model(config.model, config.data.num_classes)
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = build_scheduler(optimizer, SchedulerConfig(name="none"), 1, len(loader))
    loss_fn = build_loss(config.loss, config.data.num_classes, config.data.ignore_index)
    mixer = build_mixer(config.augment.mixing, config.data.num_classes, config.data.ignore_index)
    fabric = Fabric(
        accelerator=config.train.accelerator, devices=1, precision=config.train.precision
    )
    model, optimizer = fabric.setup(model, optimizer)
    seen = []
    stats, _ = train_one_epoch(
        fabric,
        model,
        fabric.setup_dataloaders(loader),
        loss_fn,
        optimizer,
        scheduler,
        0,
        0,
        mean_std(config, fabric.device),
        mixer=mixer,
        on_step=lambda step, loss, lr, ips: seen.append((time.perf_counter(), step)),
    )
    (t0, s0), (t1, s1) = seen[0], seen[-1]
    return (s1 - s0) * config.train.batch_size / (t1 - t0), stats.data_wait / stats.seconds


def calibrated_epochs(speed: float, n_train: int, n_val: int, budget_min: float) -> int:
    """Epochs that fit the budget at `speed` training images/s."""
    # One validation pass costs about a third of a training pass per image (no backward).
    epoch_s = n_train / speed + n_val / (3 * speed) / 2  # validating every other epoch
    return max(1, int(budget_min * 60 * 0.92 / epoch_s))  # 8% for start-up and OOF


def run_arm(name: str, overrides: list[str], budget_min: float, out: Path) -> dict:
    """Probe, calibrate and train one arm of the recipe; its scores, epochs and wall time."""
    config = load_config(RECIPE, overrides)
    samples = read_samples(config.data, config.split)
    train_samples = [s for s in samples if s.role == "train"]
    speed, _ = probe(config, train_samples)
    epochs = calibrated_epochs(
        speed, len(train_samples), len(samples) - len(train_samples), budget_min
    )
    print(f"{name}: probe {speed:.2f} train images/s -> {epochs} epochs", flush=True)
    config = load_config(
        RECIPE, [*overrides, f"train.epochs={epochs}", f"train.val_every={2 if epochs > 2 else 1}"]
    )
    start = time.perf_counter()
    run_dir = train(config, out)
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "arm": name,
        "overrides": overrides,
        "epochs": epochs,
        "probe_images_per_s": speed,
        "train_images_per_s": summary["train_images_per_s"],
        "minutes": minutes,
        "miou": summary["miou"],
        "per_class_iou": summary["per_class_iou"],
        "run_dir": str(run_dir),
    }


def print_arms(results: list[dict], budget_min: float) -> None:
    for r in results:
        print(
            f"{r['arm']:>12}: val mIoU {r['miou']:.4f}  {r['epochs']} epochs  "
            f"{r['train_images_per_s']:.1f} img/s  {r['minutes']:.1f} min "
            f"(budget {budget_min} min)"
        )
