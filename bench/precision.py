"""Training-step speed of the CamVid recipe's model per precision and memory format, on
this machine's CPU (or GPU): forward + backward + AdamW step of `Unet(tu-efficientnet_lite0)`
at 192x256, batch 4, the recipe's Dice + Focal replaced by CE (the loss is not what differs).

    .venv/bin/python bench/precision.py [--steps 6] [--size 192,256] [--batch 4]

Prints images/s for float32 and bf16-mixed, each in the default and channels-last memory
format, then `ratio:` bf16-mixed / float32 (default format). Rounds alternate, and the
first step of each setting is a warm-up that is not timed. Why it exists: bf16 autocast
is fast on CPUs with AVX512-BF16/AMX and much slower than float32 on CPUs without them.
"""

from __future__ import annotations

import argparse

import segmentation_models_pytorch as smp
import torch

from segarena.train.precision import step_seconds


def settings():
    for precision in ("32-true", "bf16-mixed"):
        for channels_last in (False, True):
            yield precision, channels_last


def step_time(model, optimizer, images, masks, precision, channels_last) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    return step_seconds(model, optimizer, images.contiguous(memory_format=fmt), masks, precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", default="192,256")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    height, width = map(int, args.size.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = smp.Unet("tu-efficientnet_lite0", encoder_weights=None, classes=12).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, height, width, device=device)
    masks = torch.randint(0, 12, (args.batch, height, width), device=device)
    times: dict[tuple, list[float]] = {s: [] for s in settings()}
    for s in settings():  # warm-up, untimed
        step_time(model, optimizer, images, masks, *s)
    for _ in range(args.steps):  # alternate settings within each round
        for s in settings():
            times[s].append(step_time(model, optimizer, images, masks, *s))
    speed = {s: args.batch / (sum(t) / len(t)) for s, t in times.items()}
    threads = torch.get_num_threads()
    print(f"device: {device}, {threads} threads, {height}x{width}, batch {args.batch}")
    for (precision, channels_last), value in speed.items():
        fmt = "channels-last" if channels_last else "default"
        print(f"{precision:>10} {fmt:>13}: {value:6.2f} img/s")
    print(f"ratio: {speed[('bf16-mixed', False)] / speed[('32-true', False)]:.2f}")


if __name__ == "__main__":
    main()
