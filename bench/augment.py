"""Augmentation cost: images/s of one loader worker per preset, and the loader's share
of step time in the CamVid recipe.

1. Each preset (none, light, medium, heavy) at CamVid's native 360x480: decode + augment +
   pad, in this process, i.e. what one DataLoader worker delivers.
2. The CamVid recipe (`--preset`, 2 workers) trained for a few steps with segarena's loop:
   the share of step time spent waiting for the next batch (target: under 5%).

    python bench/augment.py [--data ../shared/data/camvid] [--images 60] [--steps 8]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from arms import RECIPE, probe

from segarena.config import load_config
from segarena.data.augment import build_transforms
from segarena.data.dataset import SegDataset
from segarena.data.readers import read_samples

PRESETS = ("none", "light", "medium", "heavy")


def worker_rate(config, samples, preset: str) -> float:
    """Images/s of decode + augment for one preset, single process (one worker's rate)."""
    transform = build_transforms(config.data, [], True, "augment.train", preset=preset)
    dataset = SegDataset(samples, transform)
    dataset[0]  # first call pays imports and allocations
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--images", type=int, default=60, help="images timed per preset")
    parser.add_argument("--steps", type=int, default=8, help="training steps for the wait share")
    parser.add_argument("--preset", default="medium", help="preset of the training measurement")
    args = parser.parse_args()

    native = [f"data.root={args.data}", "data.image_size=null", "records.mlflow=false"]
    config = load_config(RECIPE, native)
    samples = read_samples(config.data, config.split)[: args.images]
    torch.set_num_threads(1)  # a DataLoader worker runs single-threaded
    for preset in PRESETS:
        rate = worker_rate(config, samples, preset)
        print(f"preset {preset:<6} 360x480: {rate:6.1f} images/s per worker")
    torch.set_num_threads(os.cpu_count() or 1)

    recipe = load_config(
        RECIPE, [f"data.root={args.data}", f"augment.preset={args.preset}", "data.cache=false"]
    )
    samples = read_samples(recipe.data, recipe.split)
    ips, share = probe(recipe, samples, batches=args.steps, workers=recipe.data.num_workers)
    size = "x".join(map(str, recipe.data.image_size))
    print(
        f"CamVid recipe ({size}, preset {args.preset}, {recipe.data.num_workers} workers): "
        f"{ips:.2f} train images/s"
    )
    print(f"data wait share: {100 * share:.1f}% of step time")


if __name__ == "__main__":
    main()
