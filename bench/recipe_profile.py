"""Where one CamVid recipe epoch spends its time (issue 24): the step, the data, the loader.

  losses    forward + backward of SMP's Dice and Focal, segarena's one-pass kernels of
            the same losses, and cross-entropy, on one recipe batch of real masks.
  step      one training step of the recipe's model (U-Net, lite0, batch 4, the recipe's
            input size, float32) on real frames held in memory, split into forward, loss,
            backward and optimizer (AdamW), for each memory format x loss (cross-entropy,
            the recipe's Dice + Focal). Medians over `--steps` steps after 2 warm-ups.
  data      the recipe's training transforms applied one by one to the cached full-size
            frames in this process: milliseconds per image for each (Resize, flip, colour
            jitter, pad), and the uint8 tensor and the collate of a batch.
  pipeline  `fit` of configs/camvid.yaml for one epoch (images/s as metrics.jsonl records
            it, data waits included), as shipped and with one change at a time: workers,
            memory format, loss. Rotating order, medians over `--rounds`.

Time it alone: the 2 cores are the subject.

    python bench/recipe_profile.py [--data ../shared/data/camvid] [--images 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from recipe_speed import RECIPE, lay_out, load_frames, plain_model, segarena_epoch

from segarena.config import load_config
from segarena.data.augment import build_transforms
from segarena.data.readers import load_image, load_mask, read_samples
from segarena.train.losses import build_loss

PIPELINE_ARMS = {
    "as shipped": [],
    "num_workers=0": ["data.num_workers=0"],
    "num_workers=1": ["data.num_workers=1"],
    "contiguous memory": ["train.channels_last=false"],
    "cross-entropy loss": ["loss.terms=[{name: ce, weight: 1.0}]"],
}


def ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def step_split(frames: torch.Tensor, masks: torch.Tensor, steps: int) -> None:
    """Forward / loss / backward / optimizer milliseconds per step of batch 4."""
    config = load_config(RECIPE)
    losses = {
        "cross-entropy": torch.nn.CrossEntropyLoss(ignore_index=11),
        "dice+focal": build_loss(config.loss, 11, 11),
    }
    print(f"step (batch 4, {frames.shape[2]}x{frames.shape[1]}, float32), ms per step:")
    print(f"  {'memory format':<15} {'loss':<14} forward   loss backward optimizer  total img/s")
    for memory in (torch.contiguous_format, torch.channels_last):
        for loss_name, loss_fn in losses.items():
            model = plain_model().train().to(memory_format=memory)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
            parts: dict[str, list[float]] = {k: [] for k in ("forward", "loss", "backward", "opt")}
            for i in range(steps + 2):
                idx = torch.arange(4 * i, 4 * i + 4) % len(frames)
                images = ((frames[idx].permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5).contiguous(
                    memory_format=memory
                )
                t0 = time.perf_counter()
                logits = model(images)
                t1 = time.perf_counter()
                loss = loss_fn(logits, masks[idx])
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                t4 = time.perf_counter()
                if i >= 2:
                    for key, span in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        parts[key].append(span)
            total = sum(ms(v) for v in parts.values())
            name = "channels-last" if memory is torch.channels_last else "contiguous"
            cells = " ".join(f"{ms(parts[k]):7.0f}" for k in parts)
            print(f"  {name:<15} {loss_name:<14} {cells} {total:6.0f} {4000 / total:5.2f}")


def loss_times(masks: torch.Tensor, repeats: int = 9) -> None:
    """Forward + backward ms of each loss on one recipe batch of logits (channels-last):
    SMP's Dice and Focal against segarena's one-pass kernels, and cross-entropy."""
    import segmentation_models_pytorch as smp

    from segarena.train.loss_kernels import OneVsRestFocal, SoftDice

    losses = {
        "SMP DiceLoss": smp.losses.DiceLoss(mode="multiclass", ignore_index=11),
        "segarena dice": SoftDice(11, {}),
        "SMP FocalLoss": smp.losses.FocalLoss(mode="multiclass", ignore_index=11),
        "segarena focal": OneVsRestFocal(11, {}),
        "cross-entropy": torch.nn.CrossEntropyLoss(ignore_index=11),
    }
    target = masks[:4]
    logits = torch.randn(4, 11, *target.shape[1:], generator=torch.Generator().manual_seed(0))
    logits = logits.contiguous(memory_format=torch.channels_last).requires_grad_()
    print(f"losses (4 x 11 x {target.shape[2]}x{target.shape[1]}, channels-last), ms:")
    for name, loss_fn in losses.items():
        spans = []
        for _ in range(repeats):
            logits.grad = None
            start = time.perf_counter()
            loss_fn(logits, target).backward()
            spans.append(time.perf_counter() - start)
        print(f"  {name:<15} {ms(spans[1:]):6.1f}")


def data_split(root: Path) -> None:
    """Milliseconds per image of each training transform, on cached full-size frames."""
    config = load_config(RECIPE, [f"data.root={root}"])
    samples = read_samples(config.data)[:48]
    cache = [(load_image(s.image_path), load_mask(s)) for s in samples]
    transform = build_transforms(config.data, config.augment.train, True, "augment.train")
    spans: dict[str, list[float]] = {}
    for image, mask in cache:
        for step in transform.transforms:
            start = time.perf_counter()
            out = step(image=image, mask=mask)
            spans.setdefault(type(step).__name__, []).append(time.perf_counter() - start)
            image, mask = out["image"], out["mask"]
        start = time.perf_counter()
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        torch.from_numpy(mask.astype(np.int64))
        spans.setdefault("to uint8 tensor", []).append(time.perf_counter() - start)
    print(f"data (one process, {len(cache)} frames {cache[0][0].shape[1]}x"
          f"{cache[0][0].shape[0]}), ms per image:")  # fmt: skip
    for name, values in spans.items():
        print(f"  {name:<18} {ms(values):6.2f}")
    print(f"  {'total':<18} {sum(ms(v) for v in spans.values()):6.2f}")


def pipeline(root: Path, out: Path, rounds: int) -> None:
    """One recipe epoch per arm and round, images/s; rotating order."""
    names = list(PIPELINE_ARMS)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            tag = f"{round_}{names.index(name)}"
            speeds[name].append(segarena_epoch(root, out, tag, PIPELINE_ARMS[name]))
    base = statistics.median(speeds["as shipped"])
    print(f"pipeline (fit, one epoch, medians of {rounds} rounds), img/s:")
    for name, values in speeds.items():
        median = statistics.median(values)
        each = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<20} {median:6.2f}  x{median / base:.2f}   ({each})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/camvid")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--parts", default="losses,step,data,pipeline")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segarena-bench-profile-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    lay_out(Path(args.data), root / "data", args.images)
    print(f"torch threads {torch.get_num_threads()}")
    parts = args.parts.split(",")
    size = tuple(load_config(RECIPE).data.image_size)
    if "losses" in parts:
        loss_times(load_frames(root / "data", size)[1])
    if "step" in parts:
        step_split(*load_frames(root / "data", size), args.steps)
    if "data" in parts:
        data_split(root / "data")
    if "pipeline" in parts:
        pipeline(root / "data", root / "runs", args.rounds)


if __name__ == "__main__":
    main()
