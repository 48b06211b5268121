"""The speed probe of `segarena compete`: seconds per image per megapixel, measured.

The planner needs the training and inference speed of the config's model on this machine
before it trains anything. The probe builds the model, times a few forward + backward
passes of random batches of the config's batch size at a reference size, then a few
forward passes without gradients, and scales both to one megapixel. Time grows about
linearly with the pixel count for these fully convolutional models, so the planner scales
it to every size it considers.

Each image also costs time outside the model that does not shrink with the input size:
a training item is decoded (unless data.cache holds it), resized and augmented; a
validation item is resized, and its probabilities are resized back to the mask's own
resolution and scored there. On 2 CPU cores these took as long as the model itself at
small inputs (CamVid at 96x64: 0.046 s per training image where the bare model took
0.022), so the probe times them on a few real samples (`item_costs`).
Tests pass a stub `Speed` instead of measuring.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from segarena.config import Config

WARM_STEPS = 2  # first passes (allocator, cudnn / oneDNN choice) are not timed
TIMED_STEPS = 3
ITEMS = 6  # samples item_costs times
MIN_SIDE = 32


@dataclass(frozen=True)
class Speed:
    """Measured seconds per image per megapixel: a training step and an inference pass."""

    train_s_per_mpx: float
    infer_s_per_mpx: float
    device: str
    train_item_s: float = 0.0  # per training image, outside the model (item_costs)
    infer_item_s: float = 0.0  # per validation image, outside the model

    def as_dict(self) -> dict:
        return asdict(self)


def measure_speed(
    config: Config, size: tuple[int, int], device: str = "auto", samples: list | None = None
) -> Speed:
    """Time the config's model at `size` (H, W) on `device`, and each image's cost outside
    the model on a few of `samples` (none given: 0; see the module docstring)."""
    import torch

    from segarena.infer.ensemble import pick_device
    from segarena.model.build import build_model

    dev = pick_device(device)
    model = build_model(config.model, config.data.num_classes).to(dev)
    batch = max(1, min(config.train.batch_size, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    # as training runs: autocast on a GPU for both mixed precisions, on a CPU for bf16
    mixed = config.train.precision == "bf16-mixed" or (
        dev.type == "cuda" and config.train.precision == "16-mixed"
    )
    dtype = torch.bfloat16 if config.train.precision.startswith("bf16") else torch.float16

    def timed(step, x) -> float:
        """Seconds per image of `step` on the batch `x`."""
        for _ in range(WARM_STEPS):
            step(x)
        _synchronize(dev)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step(x)
        _synchronize(dev)
        return (time.perf_counter() - start) / TIMED_STEPS / batch

    def train_step(x) -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=mixed):
            loss = model(x).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step(x) -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=mixed):
            model(x)

    # two sizes: time per image = a fixed part + a part per megapixel (a small input
    # runs at fewer images per pixel-second: 6.2 s/MPx at 96x64, 3.6 at 256x192 on 2 cores)
    small = tuple(max(MIN_SIDE, side // 2 // MIN_SIDE * MIN_SIDE) for side in size)
    sizes = [tuple(size), small] if small != tuple(size) else [tuple(size)]
    measured = []
    for shape in sizes:
        x = torch.randn(batch, 3, *shape, device=dev)
        model.train()
        train_s = timed(train_step, x)
        model.eval()
        measured.append((shape[0] * shape[1] / 1e6, train_s, timed(infer_step, x)))
    (train_slope, train_fixed), (infer_slope, infer_fixed) = (
        affine([(mpx, m[i]) for mpx, *m in measured]) for i in (0, 1)
    )
    train_item_s, infer_item_s = item_costs(config, samples[:ITEMS]) if samples else (0.0, 0.0)
    return Speed(train_slope, infer_slope, str(dev), train_fixed + train_item_s,
                 infer_fixed + infer_item_s)  # fmt: skip


def affine(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(seconds per megapixel, fixed seconds) through (megapixels, seconds) points; one
    point, or a fit that would make either part negative, is all per megapixel."""
    (x1, y1), *rest = points
    if rest:
        x2, y2 = rest[0]
        slope = (y1 - y2) / (x1 - x2)
        fixed = y1 - slope * x1
        if slope > 0 and fixed >= 0:
            return slope, fixed
    return y1 / x1, 0.0


def item_costs(config: Config, samples: list) -> tuple[float, float]:
    """Seconds per (training item, validation item) outside the model: the fold's own
    datasets over `samples` (decoded each time unless data.cache), and the validation's
    resize of C-class probabilities to each mask and its confusion matrix."""
    import torch
    import torch.nn.functional as F

    from segarena.data.augment import build_transforms
    from segarena.data.dataset import SegDataset
    from segarena.metrics import confusion_matrix
    from segarena.train.parts import train_dataset

    data = config.data
    train_ds = train_dataset(config, samples)  # data.cache decodes here, untimed: once a run
    val_ds = SegDataset(samples, build_transforms(data, config.augment.val, False, "augment.val"),
                        full_mask=True, cache=data.cache)  # fmt: skip
    start = time.perf_counter()
    for i in range(len(samples)):
        train_ds[i]
    train_item_s = (time.perf_counter() - start) / len(samples)
    start = time.perf_counter()
    for i in range(len(samples)):
        item = val_ds[i]
        image, mask = item["image"], item["mask"]
        probs = torch.rand(1, data.num_classes, *image.shape[1:]).softmax(1)
        probs = F.interpolate(probs, size=tuple(mask.shape), mode="bilinear", align_corners=False)
        confusion_matrix(probs.argmax(1)[0], mask, data.num_classes, data.ignore_index)
    return train_item_s, (time.perf_counter() - start) / len(samples)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
