"""The speed probe of `segarena compete`: seconds per image per megapixel, measured.

The planner needs the training and inference speed of the config's model on this machine
before it trains anything. The probe builds the model, times a few forward + backward
passes of random batches of the config's batch size at a reference size (no data
loading: the planner adds DATA_FACTOR for it), then a few forward passes without
gradients, and scales both to one megapixel. Time grows about linearly with the pixel
count for these fully convolutional models, so the planner scales it to every size it
considers. Tests pass a stub `Speed` instead of measuring.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from segarena.config import Config

WARM_STEPS = 2  # first passes (allocator, cudnn / oneDNN choice) are not timed
TIMED_STEPS = 3


@dataclass(frozen=True)
class Speed:
    """Measured seconds per image per megapixel: a training step and an inference pass."""

    train_s_per_mpx: float
    infer_s_per_mpx: float
    device: str

    def as_dict(self) -> dict:
        return asdict(self)


def measure_speed(config: Config, size: tuple[int, int], device: str = "auto") -> Speed:
    """Time the config's model at `size` (H, W) on `device` (see the module docstring)."""
    import torch

    from segarena.infer.ensemble import pick_device
    from segarena.model.build import build_model

    dev = pick_device(device)
    model = build_model(config.model, config.data.num_classes).to(dev)
    batch = max(1, min(config.train.batch_size, 8))
    x = torch.randn(batch, 3, *size, device=dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    # as training runs: autocast on a GPU for both mixed precisions, on a CPU for bf16
    mixed = config.train.precision == "bf16-mixed" or (
        dev.type == "cuda" and config.train.precision == "16-mixed"
    )
    dtype = torch.bfloat16 if config.train.precision.startswith("bf16") else torch.float16

    def timed(step) -> float:
        for _ in range(WARM_STEPS):
            step()
        _synchronize(dev)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step()
        _synchronize(dev)
        return (time.perf_counter() - start) / TIMED_STEPS

    def train_step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=mixed):
            loss = model(x).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=mixed):
            model(x)

    model.train()
    train_s = timed(train_step)
    model.eval()
    infer_s = timed(infer_step)
    mpx = size[0] * size[1] / 1e6
    return Speed(train_s / batch / mpx, infer_s / batch / mpx, str(dev))


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
