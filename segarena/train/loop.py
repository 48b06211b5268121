"""One training epoch and one validation pass, on Lightning Fabric.

Fabric carries the device, the precision (32 / bf16-mixed / 16-mixed) and DDP, so
these two functions stay plain PyTorch that reads top to bottom.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from lightning_fabric import Fabric
from torch import Tensor, nn
from torch.optim import Optimizer

from segarena.config import TrainConfig
from segarena.data.dataset import normalize
from segarena.data.mixing import BatchMixer
from segarena.errors import TrainingError
from segarena.metrics import ConfusionMatrix
from segarena.model.build import forward_logits
from segarena.train.state import LoopState


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


class Schedule(Protocol):
    """An lr schedule stepped per optimizer update (segarena.train.optim.LrSchedule)."""

    def step_update(self, num_updates: int) -> None: ...


@dataclass(frozen=True)
class StepSettings:
    """How each step updates (train.accumulate, train.grad_clip, train.channels_last)."""

    accumulate: int = 1
    grad_clip: float | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, train: TrainConfig) -> StepSettings:
        return cls(train.accumulate, train.grad_clip, train.channels_last)


@dataclass
class Learner:
    """The model and everything a training step reads or changes to update it."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: Schedule
    loss_fn: nn.Module
    norm: tuple[Tensor, Tensor]  # mean and std, (1,3,1,1) on the device
    mixer: BatchMixer | None = None  # augment.mixing: mixes each batch on the device
    on_update: Callable[[], None] | None = None  # after every optimizer update (train.ema)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


class EpochMeter:
    """Wraps the training loader: times the data wait and the epoch, sums the loss and
    reports each step to `on_step(step, loss, lr, images/s)` (torchvision's log_every).

    A step's loss is read (`.item()`, a device sync) only when the next step is done:
    by then the next step's work is queued on the device, so the GPU never waits for
    the CPU, as it would with a read right after each backward."""

    def __init__(self, loader, on_step: Callable[[int, float, float, float], None] | None):
        self.loader, self.on_step = loader, on_step
        self.total_loss, self.images, self.data_wait = 0.0, 0, 0.0
        self.start = time.perf_counter()
        self.unread: tuple[int, Tensor, int, float] | None = None  # a step's loss, not read

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[int, dict]]:
        self.start = fetch_start = time.perf_counter()
        for step, batch in enumerate(self.loader):
            self.data_wait += time.perf_counter() - fetch_start
            yield step, batch
            fetch_start = time.perf_counter()

    def step_done(self, step: int, loss: Tensor, images: int, lr: float) -> tuple[int, float]:
        """Keep this step's loss unread; read the previous step's: its (step, loss), or
        (-1, 0.0) on the first step."""
        previous, self.unread = self.unread, (step, loss.detach(), images, lr)
        return (-1, 0.0) if previous is None else self._read(*previous)

    def finish(self) -> tuple[int, float]:
        """Read the last step's loss: its (step, loss), or (-1, 0.0) for an empty epoch."""
        last, self.unread = self.unread, None
        return (-1, 0.0) if last is None else self._read(*last)

    def _read(self, step: int, loss: Tensor, images: int, lr: float) -> tuple[int, float]:
        value = loss.item()
        self.total_loss += value * images
        self.images += images
        if self.on_step is not None:
            speed = self.images / (time.perf_counter() - self.start)
            self.on_step(step + 1, value, lr, speed)
        return step, value

    def stats(self, lr: float) -> EpochStats:
        seconds = time.perf_counter() - self.start
        loss = self.total_loss / max(self.images, 1)
        return EpochStats(loss, lr, self.images, seconds, self.data_wait)


def train_one_epoch(
    fabric: Fabric,
    learner: Learner,
    loader,
    settings: StepSettings,
    state: LoopState,
    *,
    on_step: Callable[[int, float, float, float], None] | None = None,
) -> EpochStats:
    """Train over `loader` once (epoch `state.epoch + 1`), counting `state.num_updates`."""
    learner.model.train()
    meter = EpochMeter(loader, on_step)
    for step, batch in meter:
        images, targets = device_batch(batch, learner, settings)
        is_update = (step + 1) % settings.accumulate == 0 or step + 1 == len(meter)
        with fabric.no_backward_sync(learner.model, enabled=not is_update):
            loss = backward(fabric, learner, images, targets, settings.accumulate)
        if is_update:
            update(fabric, learner, settings, state)
        check_finite(*meter.step_done(step, loss, len(images), learner.lr), state)
    check_finite(*meter.finish(), state)
    return meter.stats(learner.lr)


def check_finite(step: int, loss: float, state: LoopState) -> None:
    """TrainingError naming the epoch and step of a NaN or infinite loss. It is found a
    step late (see EpochMeter): the epoch stops before its checkpoint, so no weights that
    a bad update touched are ever saved."""
    if not math.isfinite(loss):
        raise TrainingError(
            f"loss is {loss} at epoch {state.epoch + 1}, step {step + 1}: lower "
            "optimizer.lr, set train.grad_clip, or use train.precision=32-true"
        )


def device_batch(batch: dict, learner: Learner, settings: StepSettings) -> tuple[Tensor, Tensor]:
    """Normalised images (mixed by augment.mixing) and targets of a batch on the device."""
    images = normalize(batch["image"], *learner.norm)
    targets = batch["mask"]
    if learner.mixer is not None:
        images, targets = learner.mixer(images, targets, learner.model)
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    return images.contiguous(memory_format=memory_format), targets


def backward(fabric: Fabric, learner: Learner, images: Tensor, targets, accumulate: int) -> Tensor:
    """Forward, loss and backward of one batch; returns the loss (on the device, unread)."""
    logits = learner.model(images)
    if learner.mixer is None:
        loss = learner.loss_fn(logits, targets)
    else:  # MixUp's loss has two terms
        loss = learner.mixer.loss(learner.loss_fn, logits, targets)
    fabric.backward(loss / accumulate)
    return loss


def update(fabric: Fabric, learner: Learner, settings: StepSettings, state: LoopState) -> None:
    """One optimizer update: clip, step, zero the gradients, advance the schedule."""
    if settings.grad_clip is not None:
        fabric.clip_gradients(learner.model, learner.optimizer, max_norm=settings.grad_clip)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)
    state.num_updates += 1
    learner.scheduler.step_update(state.num_updates)
    if learner.on_update is not None:
        learner.on_update()


def mask_probs(model: nn.Module, images: Tensor, mask_size: tuple[int, int]) -> Tensor:
    """Float32 softmax probabilities [N,C,*mask_size] of normalised `images`.

    Probabilities, not logits, are resized to the mask: the one rule that validation,
    `evaluate` and `predict` (and the contests' "resize, then argmax") all follow, so a
    score measured here is the score of the submission that predict would write.
    """
    probs = forward_logits(model, images).float().softmax(1)
    if tuple(probs.shape[-2:]) != tuple(mask_size):
        probs = F.interpolate(probs, size=tuple(mask_size), mode="bilinear", align_corners=False)
    return probs


@torch.no_grad()
def validate(
    fabric: Fabric,
    model: nn.Module,
    loader,
    *,
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
    if fabric.world_size > 1:  # each process scored its share; a copy: on CPU .to() is a no-op
        total = fabric.all_reduce(matrix.matrix.to(fabric.device, copy=True), reduce_op="sum")
        matrix.reset()
        matrix.update_matrix(total.cpu())
    return matrix
