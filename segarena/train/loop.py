"""One training epoch and one validation pass, on Lightning Fabric.

Fabric carries the device, the precision (32 / bf16-mixed / 16-mixed) and DDP, so
these two functions stay plain PyTorch that reads top to bottom.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lightning_fabric import Fabric
from torch import Tensor, nn

from segarena.data.mixing import BatchMixer
from segarena.errors import TrainingError
from segarena.metrics import ConfusionMatrix
from segarena.models import predict_logits


@dataclass
class EpochStats:
    loss: float
    lr: float
    images: int
    seconds: float
    data_wait: float  # seconds spent waiting for the loader

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW on the device -> float, normalised (done here, not in the workers)."""
    return (images.float().div_(255.0) - mean) / std


def train_one_epoch(
    fabric: Fabric,
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    optimizer,
    scheduler,
    epoch: int,
    num_updates: int,
    mean_std: tuple[torch.Tensor, torch.Tensor],
    accumulate: int = 1,
    grad_clip: float | None = None,
    channels_last: bool = False,
    on_step: Callable[[int, float, float, float], None] | None = None,
    mixer: BatchMixer | None = None,
    on_update: Callable[[], None] | None = None,
) -> tuple[EpochStats, int]:
    """Train over `loader` once; returns the epoch's stats and the updated update count.
    `mixer` (augment.mixing) mixes each normalised batch on the device before the forward;
    `on_update()` runs after every optimizer update (train.ema averages the weights there)."""
    model.train()
    mean, std = mean_std
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    total_loss, images_seen, data_wait = 0.0, 0, 0.0
    steps = len(loader)
    start = time.perf_counter()
    fetch_start = start
    for step, batch in enumerate(loader):
        data_wait += time.perf_counter() - fetch_start
        images = normalize(batch["image"], mean, std)
        targets = batch["mask"]
        if mixer is not None:
            images, targets = mixer(images, targets, model)
        images = images.contiguous(memory_format=memory_format)
        is_update = (step + 1) % accumulate == 0 or step + 1 == steps
        with fabric.no_backward_sync(model, enabled=not is_update):
            logits = model(images)
            if mixer is None:
                loss = loss_fn(logits, targets)
            else:  # MixUp's loss has two terms
                loss = mixer.loss(loss_fn, logits, targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss is {loss_value} at epoch {epoch + 1}, step {step + 1}: lower "
                    "optimizer.lr, set train.grad_clip, or use train.precision=32-true"
                )
            fabric.backward(loss / accumulate)
        if is_update:
            if grad_clip is not None:
                fabric.clip_gradients(model, optimizer, max_norm=grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            scheduler.step_update(num_updates)
            if on_update is not None:
                on_update()
        total_loss += loss_value * len(images)
        images_seen += len(images)
        lr = optimizer.param_groups[0]["lr"]
        if on_step is not None:
            on_step(step + 1, loss_value, lr, images_seen / (time.perf_counter() - start))
        fetch_start = time.perf_counter()
    seconds = time.perf_counter() - start
    stats = EpochStats(
        loss=total_loss / max(images_seen, 1),
        lr=optimizer.param_groups[0]["lr"],
        images=images_seen,
        seconds=seconds,
        data_wait=data_wait,
    )
    return stats, num_updates


def mask_probs(model: nn.Module, images: Tensor, mask_size: tuple[int, int]) -> Tensor:
    """Float32 softmax probabilities [N,C,*mask_size] of normalised `images`.

    Probabilities, not logits, are resized to the mask: the one rule that validation,
    `evaluate` and `predict` (and the contests' "resize, then argmax") all follow, so a
    score measured here is the score of the submission that predict would write.
    """
    probs = predict_logits(model, images).float().softmax(1)
    if tuple(probs.shape[-2:]) != tuple(mask_size):
        probs = F.interpolate(probs, size=tuple(mask_size), mode="bilinear", align_corners=False)
    return probs


@torch.no_grad()
def validate(
    fabric: Fabric,
    model: nn.Module,
    loader,
    num_classes: int,
    ignore_index: int,
    mean_std: tuple[torch.Tensor, torch.Tensor],
    on_probs: Callable[[list[int], torch.Tensor], None] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of the model on `loader`, scored at each mask's own resolution.

    `on_probs(indices, probs)` receives softmax probabilities at mask resolution, one image
    at a time (used to write out-of-fold predictions).
    """
    model.eval()
    mean, std = mean_std
    matrix = ConfusionMatrix(num_classes, ignore_index)
    for batch in loader:
        images, masks, indices = batch["image"], batch["mask"], batch["index"]
        same_size = isinstance(images, torch.Tensor) and all(
            m.shape == masks[0].shape for m in masks
        )
        groups = (
            [(images, masks, indices)]
            if same_size
            else [(images[i][None], [masks[i]], [indices[i]]) for i in range(len(masks))]
        )
        for group_images, group_masks, group_indices in groups:
            group_images = normalize(fabric.to_device(group_images), mean, std)
            probs = mask_probs(model, group_images, tuple(group_masks[0].shape))
            target = fabric.to_device(torch.stack(group_masks))
            matrix.update(probs.argmax(1), target)
            if on_probs is not None:
                for index, image_probs in zip(group_indices, probs):
                    on_probs([index], image_probs[None])
    if fabric.world_size > 1:
        total = fabric.all_reduce(matrix.matrix.to(fabric.device), reduce_op="sum")
        matrix.reset()
        matrix.update_matrix(total.cpu())
    return matrix
