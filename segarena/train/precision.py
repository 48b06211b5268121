"""`train.precision: auto`: the fastest training precision for this model on this machine.

bf16 autocast is 1.6x float32 for the CamVid recipe's model on a CPU with AVX512-BF16 or
AMX, and 0.04x on one without (an AMD EPYC here: `bench/precision.py`), so no fixed choice
is right for every machine. On a GPU the rule needs no probe: bf16-mixed where the GPU
supports it, else 16-mixed. On a CPU one process times a training step (forward, backward,
update) of the config's own model at its input size in float32 and in bf16-mixed, and
keeps bf16 only when it is clearly faster. The choice is written into the run's resolved
config (config.yaml), so a resumed run and inference use it without probing again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from segarena.config import Config, with_settings
from segarena.model.build import build_model

log = logging.getLogger(__name__)

# bf16 must beat float32 by this factor to be chosen: near a tie float32 wins, as the
# more exact arithmetic and the choice that two probes agree on.
BF16_MARGIN = 1.2


def resolve_precision(config: Config) -> tuple[Config, dict[str, Any] | None]:
    """`config` with train.precision resolved when it is "auto", and what decided it
    (None when the config named a precision)."""
    if config.train.precision != "auto":
        return config, None
    chosen, record = choose_precision(config)
    log.info("train.precision auto -> %s (%s)", chosen, record["reason"])
    return with_precision(config, chosen), {"chosen": chosen, **record}


def with_precision(config: Config, precision: str) -> Config:
    """`config` with train.precision = `precision` when it says "auto" (a chosen precision
    stays): how a study (an ablation, a competition) gives every run the one it chose."""
    if config.train.precision != "auto":
        return config
    return with_settings(config, {"train.precision": precision})


def choose_precision(config: Config) -> tuple[str, dict[str, Any]]:
    """(precision, {reason, images_per_s}) for this config on this machine."""
    train = config.train
    on_gpu = train.accelerator in ("gpu", "cuda") or (
        train.accelerator == "auto" and torch.cuda.is_available()
    )
    if on_gpu:
        chosen = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return chosen, {"reason": "a GPU: mixed precision, bf16 where supported"}
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun started this process
    if several or train.devices not in (1, "1") or train.strategy != "auto":
        # every process must choose the same: a probe in each could disagree
        return "32-true", {"reason": "several CPU processes: float32 without a probe"}
    speeds = probe_cpu(config)
    faster = speeds["bf16-mixed"] > BF16_MARGIN * speeds["32-true"]
    shown = ", ".join(f"{p} {v:.2f} img/s" for p, v in speeds.items())
    return ("bf16-mixed" if faster else "32-true"), {
        "reason": f"a CPU step timed: {shown}",
        "images_per_s": speeds,
    }


def probe_cpu(config: Config, batch: int = 1) -> dict[str, float]:
    """Training images/s of one step (after a warm-up step) in float32 and bf16-mixed, at
    the config's input size and memory format. bf16 is not timed further when its warm-up
    alone takes 4x float32's step: it has lost (seconds per step on a CPU without bf16)."""
    torch.manual_seed(config.train.seed)
    model = build_model(config.model.model_copy(update={"encoder_weights": None}),
                        config.data.num_classes)  # fmt: skip
    fmt = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    height, width = config.data.image_size or (256, 256)
    images = torch.randn(batch, 3, height, width).contiguous(memory_format=fmt)
    masks = torch.randint(0, config.data.num_classes, (batch, height, width))

    def step(precision: str) -> float:
        return step_seconds(model, optimizer, images, masks, precision)

    step("32-true")
    fp32 = step("32-true")
    warm = step("bf16-mixed")
    bf16 = warm if warm > 4 * fp32 else step("bf16-mixed")
    return {"32-true": batch / fp32, "bf16-mixed": batch / bf16}


def step_seconds(model, optimizer, images, masks, precision: str) -> float:
    """Seconds of one training step (forward, CE loss, backward, update) under `precision`
    (32-true, or bf16-mixed autocast on the inputs' device)."""
    autocast = (
        torch.autocast(images.device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else contextlib.nullcontext()
    )
    start = time.perf_counter()
    with autocast:
        loss = F.cross_entropy(model(images).float(), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
