"""Shared by the CamVid benchmarks: train one arm of the recipe within a wall-clock budget
(train.budget_min) and collect its scores; `probe` measures a pipeline's training speed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lightning_fabric import Fabric

from segarena.config import Config, SchedulerConfig, load_config
from segarena.data.dataset import train_loader
from segarena.data.mixing import build_mixer
from segarena.data.readers import Sample
from segarena.model.build import build_model
from segarena.train.loop import Learner, StepSettings, train_one_epoch
from segarena.train.losses import build_loss
from segarena.train.optim import build_optimizer, build_scheduler
from segarena.train.parts import mean_std, train_dataset
from segarena.train.run import fit
from segarena.train.state import LoopState

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "camvid.yaml"


def probe(config: Config, samples: list[Sample], batches: int = 4, workers: int = 0):
    """(training images/s, share of step time waiting for data) over a few batches.

    Goes through segarena.train.parts.train_dataset and the configured batch mixer, so the
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
    learner = Learner(model, optimizer, scheduler, loss_fn, mean_std(config, fabric.device), mixer)
    seen = []
    stats = train_one_epoch(
        fabric,
        learner,
        fabric.setup_dataloaders(loader),
        StepSettings(),
        LoopState(),
        on_step=lambda step, loss, lr, ips: seen.append((time.perf_counter(), step)),
    )
    (t0, s0), (t1, s1) = seen[0], seen[-1]
    return (s1 - s0) * config.train.batch_size / (t1 - t0), stats.data_wait / stats.seconds


def run_arm(name: str, overrides: list[str], budget_min: float, out: Path) -> dict:
    """Train one arm of the recipe under train.budget_min (segarena measures its own speed
    and fits the epochs); its scores, epochs and wall time."""
    config = load_config(
        RECIPE, [*overrides, "train.epochs=null", f"train.budget_min={budget_min}"]
    )
    start = time.perf_counter()
    run_dir = fit(config, out).path
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((run_dir / "summary.json").read_text())
    plan = json.loads((run_dir / "fold_0" / "plan.json").read_text())
    return {
        "arm": name,
        "overrides": overrides,
        "epochs": plan["epochs"],
        "probe_images_per_s": plan["train_images_per_s"],
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
