"""Training throughput: segarena's loop against a plain PyTorch loop, side by side.

Both train identical copies of one model on the same batches from the same loader in
this process, alternating rounds (ABBA: each goes first in every other round) so that
machine noise and warm caches favour neither. The last line is `ratio: X.XX` (segarena
images/s over plain images/s, medians of the rounds; 1.00 = no overhead).

    python bench/throughput.py [--size 256] [--batch 8] [--steps 6] [--rounds 4]
"""

from __future__ import annotations

import argparse
import atexit
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from lightning_fabric import Fabric

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import CLASSES, make_mask_folder  # noqa: E402

from segarena.config import (  # noqa: E402
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,  # noqa: E402
)
from segarena.data.augment import build_transforms  # noqa: E402
from segarena.data.dataset import (  # noqa: E402
    SegDataset,
    normalize,  # noqa: E402
    train_loader,
)
from segarena.data.readers import read_samples  # noqa: E402
from segarena.model.build import build_model  # noqa: E402
from segarena.train.loop import Learner, StepSettings, train_one_epoch  # noqa: E402
from segarena.train.losses import build_loss  # noqa: E402
from segarena.train.optim import build_optimizer, build_scheduler  # noqa: E402
from segarena.train.state import LoopState  # noqa: E402


def plain_epoch(model, loader, loss_fn, optimizer, mean, std) -> float:
    """The loop a competitor would write by hand; returns images/s."""
    model.train()
    start, seen = time.perf_counter(), 0
    for batch in loader:
        images = normalize(batch["image"], mean, std)
        loss = loss_fn(model(images), batch["mask"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="batches per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encoder", default="efficientnet-b0")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="segarena-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    make_mask_folder(root, n=args.batch * args.steps, size=args.size)
    data = DataConfig(
        root=str(root),
        sources=[{"images": "images", "masks": "masks"}],
        classes=CLASSES,
        num_workers=args.workers,
    )
    samples = read_samples(data)
    dataset = SegDataset(samples, build_transforms(data, [], True, "augment.train"), cache=True)
    generator = torch.Generator()
    loader = train_loader(dataset, args.batch, args.workers, generator)

    torch.manual_seed(0)
    model_cfg = ModelConfig(encoder=args.encoder)
    ours = build_model(model_cfg, data.num_classes)
    plain = copy.deepcopy(ours)
    loss_fn = build_loss(LossConfig(terms=[{"name": "ce"}]), data.num_classes, data.ignore_index)
    opt_cfg = OptimizerConfig(name="adamw", lr=1e-4)
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    ours_opt = build_optimizer(ours, opt_cfg)
    scheduler = build_scheduler(ours_opt, SchedulerConfig(name="none"), 1, args.steps)
    ours, ours_opt = fabric.setup(ours, ours_opt)
    fabric_loader = fabric.setup_dataloaders(loader)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-4)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)

    plain_epoch(plain, loader, loss_fn, plain_opt, mean, std)  # warm-up, not timed
    ours_rates, plain_rates, waits = [], [], []

    def ours_epoch(round_: int) -> None:
        generator.manual_seed(round_)
        learner = Learner(ours, ours_opt, scheduler, loss_fn, (mean, std))
        stats = train_one_epoch(fabric, learner, fabric_loader, StepSettings(), LoopState())
        ours_rates.append(stats.images_per_s)
        waits.append(stats.data_wait / stats.seconds)

    def plain_round(round_: int) -> None:
        generator.manual_seed(round_)
        plain_rates.append(plain_epoch(plain, loader, loss_fn, plain_opt, mean, std))

    for round_ in range(args.rounds):
        # ABBA order: whichever runs second in a round gets a warmer cache and a fresher
        # loader, so the two take turns at going first
        first, second = (ours_epoch, plain_round) if round_ % 2 == 0 else (plain_round, ours_epoch)
        first(round_)
        second(round_)
        print(
            f"round {round_ + 1}: segarena {ours_rates[-1]:.2f} img/s, "
            f"plain {plain_rates[-1]:.2f} img/s, data wait {100 * waits[-1]:.1f}%",
            flush=True,
        )
    print(
        f"model Unet/{args.encoder}, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.workers} workers, torch threads {torch.get_num_threads()}"
    )
    print(
        f"segarena median {statistics.median(ours_rates):.2f} img/s; "
        f"plain median {statistics.median(plain_rates):.2f} img/s"
    )
    print(f"data wait share (segarena): {100 * statistics.median(waits):.1f}% of step time")
    print(f"ratio: {statistics.median(ours_rates) / statistics.median(plain_rates):.2f}")


if __name__ == "__main__":
    main()
