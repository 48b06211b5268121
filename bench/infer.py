"""Inference speed and memory: segarena's sliding window + flip TTA against MONAI's.

Both blend Gaussian-weighted windows (sigma = window / 8) of the same model on the same
image, with the flip views batched into each forward pass, windows `--sw-batch` at a
time on `--device` and the sums kept on the CPU (bounded device memory for huge images).
Each implementation runs in its own subprocess so that its peak resident memory
(getrusage maxrss; plus torch.cuda.max_memory_allocated on a GPU) is its own. The two
outputs are compared on a grid of pixels to show they compute the same thing.

Both run the model as predict loads it: weights channels-last (NHWC convolutions,
segarena.infer.ensemble.inference_model). Until 2026-12-05 MONAI got the model in the
default format, and that format was all of segarena's lead; with the same format the two
blend at about the same speed (the model's forward passes are almost all of the time).

segarena gets the image as predict holds it, uint8 pixels, MONAI the same pixels as
float32 (its output buffers take the input's dtype, so uint8 fails); both normalise each
batch of windows (segarena through `prepare`, MONAI inside its predictor).
Peak memory is the process's: about 1 GB is torch and the model before any pixel is read
(printed as "base"); then the activations of one forward pass (sw_batch x TTA views
windows; ~120 MB per 512x512 window of this Unet on the CPU, hence --sw-batch 2 by
default), and segarena's output buffer.

The outputs differ slightly, most near the image border: MONAI clamps its Gaussian map
at the map's smallest non-zero value (about 1e-3 of the peak, from its truncated
filter), so window corners weigh more than a Gaussian's; where two windows' corners meet
the image edge (rows where every window's weight is tiny) MONAI blends them almost
evenly, segarena by the Gaussian ratio as everywhere else.

The three (segarena, MONAI, and MONAI with the model in the default memory format, as a
user writes it) run in rotating order `--repeats` times; the last line is `ratio: X.XX`,
the median of the repeats' ratios (segarena images/s over MONAI images/s, same format),
with their spread and the ratio against the default-format MONAI above it.
MONAI is a bench-only dependency: `make bench` installs it.

    python bench/infer.py [--size 4000] [--window 512] [--overlap 0.5] [--sw-batch 4]
                          [--tta hflip] [--device cpu] [--rounds 1] [--repeats 3]
                          [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segarena.config import InferConfig, ModelConfig
from segarena.infer.ensemble import inference_model
from segarena.infer.sliding import sliding_probs
from segarena.infer.tta import apply_view, invert_view, view_names
from segarena.model.build import build_model

CLASSES = 4
IMPLS = ("segarena", "monai", "monai-default")  # the last: as a user writes it
GRID = 16  # outputs are compared on every GRID-th pixel (a full 4000x4000 map is 256 MB)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 windows -> float, roughly centred (what predict's per-member normalisation does)."""
    return pixels.float().div_(127.5).sub_(1.0)


def make_model(device: torch.device, impl: str) -> torch.nn.Module:
    """The same weights for all; segarena's loaded as predict loads a checkpoint
    (`inference_model`: weights channels-last); MONAI gets the same format, and
    monai-default the default one."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="Unet", encoder="resnet18"), CLASSES)
    if impl == "monai-default":  # the model as a user loads it: the default memory format
        return model.eval().to(device)
    return inference_model(model, device)


def monai_probs(model, image, args, device) -> torch.Tensor:
    """MONAI's sliding_window_inference with the same views batched in its predictor."""
    from monai.inferers import sliding_window_inference

    names = view_names(args.tta)

    def predictor(windows: torch.Tensor) -> torch.Tensor:
        windows = normalize(windows)
        views = torch.cat([apply_view(windows, name) for name in names])
        logits = model(views).float()
        chunks = logits.split(len(windows))
        return sum(invert_view(c, n).softmax(1) for n, c in zip(names, chunks)) / len(names)

    return sliding_window_inference(
        image[None],
        roi_size=(args.window, args.window),
        sw_batch_size=args.sw_batch,
        predictor=predictor,
        overlap=args.overlap,
        mode="gaussian",
        sigma_scale=0.125,
        sw_device=device,
        device="cpu",
    )[0]


def run_one(args) -> None:
    """Child process: time one implementation, print a JSON line, save a pixel grid."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = make_model(device, args.impl)
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, args.size, args.size), generator=gen, dtype=torch.uint8)
    if args.impl.startswith("monai"):  # its output buffers take the input's dtype: uint8 fails
        image = image.float()
    options = InferConfig(
        window=(args.window, args.window), overlap=args.overlap, sw_batch_size=args.sw_batch,
        tta=args.tta,
    )  # fmt: skip

    def infer(img: torch.Tensor) -> torch.Tensor:
        if args.impl.startswith("monai"):
            return monai_probs(model, img, args, device)
        return sliding_probs(model, img, options, prepare=normalize)

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # model + image
    with torch.inference_mode():
        infer(image[:, : args.window + args.window // 2, : args.window])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.rounds):
            probs = infer(image)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    np.save(args.grid_out, probs[:, ::GRID, ::GRID].numpy())
    peak_cuda = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(
        json.dumps(
            {
                "images_per_s": args.rounds / seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "base_rss_mb": base_rss,
                "peak_cuda_mb": peak_cuda,
            }
        )
    )


def spawn(impl: str, grid_out: Path) -> dict:
    argv = [a for a in sys.argv[1:]]
    cmd = [sys.executable, __file__, *argv, "--impl", impl, "--grid-out", str(grid_out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{impl} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="square image side, pixels")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch", type=int, default=2, help="windows per forward pass")
    parser.add_argument("--tta", default="hflip", help="none, hflip, vflip or d4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=1, help="timed predictions per run")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--repeats", type=int, default=3, help="segarena/MONAI pairs; median")
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--grid-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        run_one(args)
        return
    ratios, user_ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # rotating, so machine noise hits all alike
            order = IMPLS[repeat % 3 :] + IMPLS[: repeat % 3]
            results = {impl: spawn(impl, Path(tmp) / f"{impl}.npy") for impl in order}
            speed = {impl: r["images_per_s"] for impl, r in results.items()}
            ratios.append(speed["segarena"] / speed["monai"])
            user_ratios.append(speed["segarena"] / speed["monai-default"])
            print(f"repeat {repeat + 1}: ratio {ratios[-1]:.3f} (against MONAI with the "
                  f"default memory format {user_ratios[-1]:.3f})", flush=True)  # fmt: skip
        diff = np.abs(np.load(Path(tmp) / "segarena.npy") - np.load(Path(tmp) / "monai.npy"))
    inner = args.window // 2 // GRID + 1  # grid points farther than half a window from the edge
    print(
        f"{args.size}x{args.size} image, window {args.window}, overlap {args.overlap}, "
        f"sw_batch {args.sw_batch}, tta {args.tta}, device {args.device}"
    )
    for impl, r in results.items():
        cuda = f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if r["peak_cuda_mb"] is not None else ""
        print(
            f"{impl:9s} {r['images_per_s']:.4f} images/s, peak RSS {r['peak_rss_mb']:.0f} MB "
            f"(base {r['base_rss_mb']:.0f} MB, {r['peak_rss_mb'] - r['base_rss_mb']:+.0f} MB "
            f"during inference){cuda}  (last repeat)"
        )
    print(
        f"max |segarena - monai| probability on a {GRID}-pixel grid: {diff.max():.2e} "
        f"(inside: {diff[:, inner:-inner, inner:-inner].max():.2e})"
    )
    print(f"ratio against MONAI as a user writes it (default memory format): "
          f"{statistics.median(user_ratios):.2f}")  # fmt: skip
    print(f"ratios of {args.repeats} repeats: min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
