"""CamVid quality at a fixed wall-clock budget: train on train/, score on val/.

The CamVid recipe (configs/camvid.yaml) with split.method=predefined. A short probe
measures training images/s on this machine and sets the number of epochs so that the
whole run fits the budget (a cosine schedule needs to know its length in advance).
Prints the val mIoU and the wall time actually used.

Note: val/ is sequence 0016E5, which train/ also holds, so this figure overstates
what the model does on an unseen sequence (see DESIGN.md section 5); grouped CV
(`segarena train configs/camvid.yaml --folds all`) is the honest number.

    python bench/camvid.py [--data ../shared/data/camvid] [--budget-min 10] [--size 192 256]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from lightning_fabric import Fabric

from segarena.config import SchedulerConfig, load_config
from segarena.data.augment import build_transforms
from segarena.data.dataset import SegDataset, train_loader
from segarena.data.readers import read_samples
from segarena.losses import build_loss
from segarena.models import build_model
from segarena.optim import build_optimizer, build_scheduler
from segarena.train.fit import mean_std
from segarena.train.loop import train_one_epoch
from segarena.train.run import train

ROOT = Path(__file__).resolve().parents[1]


def probe_images_per_s(config, samples, batches: int = 4) -> float:
    """Training images/s of the recipe on this machine, from a few timed batches."""
    subset = samples[: config.train.batch_size * (batches + 1)]
    transform = build_transforms(config.data, config.augment.train, True, "augment.train")
    loader = train_loader(SegDataset(subset, transform), config.train.batch_size, 0, None)
    model = build_model(config.model, config.data.num_classes)
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = build_scheduler(optimizer, SchedulerConfig(name="none"), 1, len(loader))
    loss_fn = build_loss(config.loss, config.data.num_classes, config.data.ignore_index)
    fabric = Fabric(accelerator=config.train.accelerator, devices=1)
    model, optimizer = fabric.setup(model, optimizer)
    seen = []
    train_one_epoch(
        fabric, model, fabric.setup_dataloaders(loader), loss_fn, optimizer, scheduler, 0, 0,
        mean_std(config, fabric.device),
        on_step=lambda step, loss, lr, ips: seen.append((time.perf_counter(), step)),
    )  # fmt: skip
    (t0, s0), (t1, s1) = seen[0], seen[-1]  # the first batch pays one-off start-up costs
    return (s1 - s0) * config.train.batch_size / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--out", default="runs_bench")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    overrides = [
        f"data.root={args.data}",
        "split.method=predefined",
        f"data.image_size=[{args.size[0]}, {args.size[1]}]",
        "records.mlflow=false",
        "experiment=camvid_bench",
        *args.overrides,
    ]
    config = load_config(ROOT / "configs" / "camvid.yaml", overrides)
    samples = read_samples(config.data, config.split)
    n_train = sum(s.role == "train" for s in samples)
    n_val = len(samples) - n_train
    speed = probe_images_per_s(config, [s for s in samples if s.role == "train"])
    # One validation pass costs about a third of a training pass per image (no backward).
    epoch_s = n_train / speed + n_val / (3 * speed) / 2  # validating every other epoch
    epochs = max(1, int(args.budget_min * 60 * 0.92 / epoch_s))  # 8% for start-up and OOF
    print(f"probe: {speed:.2f} train images/s at {args.size[0]}x{args.size[1]} -> {epochs} epochs")
    config = load_config(
        ROOT / "configs" / "camvid.yaml",
        [*overrides, f"train.epochs={epochs}", f"train.val_every={2 if epochs > 2 else 1}"],
    )
    start = time.perf_counter()
    run_dir = train(config, Path(args.out))
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads "
          f"{torch.get_num_threads()}, {n_train} train / {n_val} val images")  # fmt: skip
    print(f"per-class IoU: {json.dumps(summary['per_class_iou'])}")
    print(f"wall time {minutes:.1f} min for {epochs} epochs (budget {args.budget_min} min)")
    print(f"val mIoU: {summary['miou']:.4f}")


if __name__ == "__main__":
    main()
