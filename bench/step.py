"""One training step: segarena's against a plain PyTorch step, interleaved step by step.

bench/throughput.py times whole epochs, so its rounds carry the loader and the machine's
noise (about ±5% here). This bench isolates the step itself: both copies of one model
take the same batch in turn (the order alternates each step), so every pair of timings
shares the machine's state at that moment. It prints the median of the per-step speed
ratios with a bootstrap 95% interval; the last line is `ratio: X.XX` (1.00 = no overhead).

segarena's step is the loop's own code (`device_batch`, `backward`, `update`, the
`EpochMeter` that reads the loss a step late) on Fabric; the plain step is what a
competitor writes: normalise, forward, loss, backward, `AdamW.step`, `zero_grad`.

    python bench/step.py [--size 256] [--batch 8] [--steps 30] [--encoder efficientnet-b0]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
from lightning_fabric import Fabric

from segarena.config import LossConfig, ModelConfig, OptimizerConfig, SchedulerConfig
from segarena.data.dataset import normalize
from segarena.model.build import build_model
from segarena.train.loop import EpochMeter, Learner, StepSettings, backward, device_batch, update
from segarena.train.losses import build_loss
from segarena.train.optim import build_optimizer, build_scheduler
from segarena.train.state import LoopState

CLASSES = 11
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def segarena_step(fabric: Fabric, learner: Learner, state: LoopState, meter: EpochMeter):
    """What train_one_epoch does for one batch (accumulate 1, no clipping)."""
    settings = StepSettings()

    def step(batch: dict) -> None:
        images, targets = device_batch(batch, learner, settings)
        loss = backward(fabric, learner, images, targets, settings.accumulate)
        update(fabric, learner, settings, state)
        meter.step_done(state.num_updates, loss, len(images), learner.lr)

    return step


def plain_step(model, loss_fn, optimizer):
    def step(batch: dict) -> None:
        loss = loss_fn(model(normalize(batch["image"], MEAN, STD)), batch["mask"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # a hand-written loop reads its loss every step

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--encoder", default="efficientnet-b0")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder=args.encoder), CLASSES)
    plain_model = copy.deepcopy(model)
    loss_fn = build_loss(LossConfig(terms=[{"name": "ce"}]), CLASSES, 255)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    optimizer = build_optimizer(model, OptimizerConfig(name="adamw", lr=1e-4))
    scheduler = build_scheduler(optimizer, SchedulerConfig(name="none"), 1, args.steps)
    model, optimizer = fabric.setup(model, optimizer)
    learner = Learner(model, optimizer, scheduler, loss_fn, (MEAN, STD))
    model.train()
    plain_model.train()
    steps = {
        "segarena": segarena_step(fabric, learner, LoopState(), EpochMeter([], None)),
        "plain": plain_step(plain_model, loss_fn, torch.optim.AdamW(plain_model.parameters())),
    }

    generator = torch.Generator().manual_seed(0)
    seconds = {name: [] for name in steps}
    for i in range(args.steps):
        batch = {
            "image": torch.randint(0, 256, (args.batch, 3, args.size, args.size),
                                   dtype=torch.uint8, generator=generator),
            "mask": torch.randint(0, CLASSES, (args.batch, args.size, args.size),
                                  generator=generator),
        }  # fmt: skip
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name](batch)
            seconds[name].append(time.perf_counter() - start)

    # the first two steps of each warm up allocators and caches
    ratios = np.array(seconds["plain"][2:]) / np.array(seconds["segarena"][2:])
    rng = np.random.default_rng(0)
    medians = [np.median(rng.choice(ratios, len(ratios))) for _ in range(2000)]
    low, high = np.percentile(medians, [2.5, 97.5])
    print(f"model Unet/{args.encoder}, {args.size}x{args.size}, batch {args.batch}, "
          f"{len(ratios)} timed steps each, torch threads {torch.get_num_threads()}")  # fmt: skip
    for name, values in seconds.items():
        print(f"{name}: median step {1000 * statistics.median(values[2:]):.1f} ms")
    print(f"per-step speed ratio (plain time / segarena time): median {np.median(ratios):.3f}, "
          f"95% bootstrap interval [{low:.3f}, {high:.3f}]")  # fmt: skip
    print(f"ratio: {np.median(ratios):.2f}")


if __name__ == "__main__":
    main()
