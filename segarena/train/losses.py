"""Registered segmentation losses and their weighted sum.

Every factory takes `(num_classes, ignore_index, **params)` and returns a module
`loss(logits[N,C,H,W], target[N,H,W]) -> scalar` in which pixels whose target equals
`ignore_index` contribute nothing: neither to the value nor to the gradient. A batch where
every pixel is ignored gives 0 (with a zero gradient), never NaN.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from segarena.config import LossConfig
from segarena.errors import UserError
from segarena.train.loss_kernels import OneVsRestFocal, SoftDice
from segarena.util.registry import Registry

LOSSES = Registry("loss")


def _check_class_weights(class_weights: Any, num_classes: int) -> None:
    if class_weights is not None and len(class_weights) != num_classes:
        raise UserError(
            f"class_weights has {len(class_weights)} values {list(class_weights)}, "
            f"expected one per class ({num_classes})"
        )


class CrossEntropy(nn.Module):
    """Cross entropy with class weights, label smoothing and ignored pixels."""

    def __init__(
        self, ignore_index: int, class_weights: list[float] | None, label_smoothing: float
    ):
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The caller may not move the loss module to the logits' device (SMP losses do not
        # need it either), so the weights follow the logits.
        weight = None if self.weight is None else self.weight.to(logits.device)
        per_pixel = F.cross_entropy(
            logits,
            target,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        # The same normaliser as torch's reduction="mean", but an all-ignored batch gives
        # 0 instead of torch's 0/0 = NaN, and without a host sync to check for it.
        valid = target != self.ignore_index
        if weight is None:
            total = valid.sum()
        else:
            total = (weight[target.where(valid, 0)] * valid).sum()
        return per_pixel.sum() / torch.where(total > 0, total, torch.ones_like(total))


class TopKCrossEntropy(nn.Module):
    """nnU-Net's TopK loss: mean per-pixel CE over the k percent hardest non-ignored pixels.

    Hand-written because no installed library has it (nnU-Net is not a dependency).
    Unlike nnU-Net, k is a percentage of the non-ignored pixels, not of all pixels.
    """

    def __init__(self, ignore_index: int, k: float):
        super().__init__()
        self.ignore_index = ignore_index
        self.k = k

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(
            logits, target, ignore_index=self.ignore_index, reduction="none"
        )
        per_pixel = per_pixel[target != self.ignore_index]
        if per_pixel.numel() == 0:
            return logits.sum() * 0.0
        count = max(1, int(per_pixel.numel() * self.k / 100))
        return per_pixel.topk(count, sorted=False).values.mean()


class SkipAllIgnored(nn.Module):
    """Returns 0 for a batch without any non-ignored pixel, else the wrapped loss.

    SMP 0.6.0 mishandles that batch: FocalLoss gives NaN (mean of an empty tensor)
    and LovaszLoss returns an empty [0, C] tensor instead of a scalar.
    """

    def __init__(self, loss: nn.Module, ignore_index: int):
        super().__init__()
        self.loss = loss
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        return self.loss(logits, target)


class PerImage(nn.Module):
    """Mean of a loss computed image by image, over the images with a non-ignored pixel.

    Replaces SMP's LovaszLoss(per_image=True): there, one fully ignored image turns the
    loss of the whole batch into an empty tensor, which silently sums to 0.
    """

    def __init__(self, loss: nn.Module, ignore_index: int):
        super().__init__()
        self.loss = loss
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        has_pixels = (target != self.ignore_index).flatten(1).any(dim=1).tolist()
        losses = [
            self.loss(logits[i : i + 1], target[i : i + 1])
            for i, keep in enumerate(has_pixels)
            if keep
        ]
        return torch.stack(losses).mean() if losses else logits.sum() * 0.0


@LOSSES.register("ce")
def cross_entropy(
    num_classes: int,
    ignore_index: int,
    class_weights: list[float] | None = None,
    label_smoothing: float = 0.0,
) -> nn.Module:
    """Cross entropy; `class_weights` has one weight per class."""
    _check_class_weights(class_weights, num_classes)
    if not 0.0 <= label_smoothing <= 1.0:
        raise UserError(f"label_smoothing={label_smoothing!r}: expected a value in [0, 1]")
    return CrossEntropy(ignore_index, class_weights, label_smoothing)


@LOSSES.register("topk")
def topk_cross_entropy(num_classes: int, ignore_index: int, k: float = 10.0) -> nn.Module:
    """nnU-Net's TopK CE: the mean CE of the `k` percent pixels with the largest CE."""
    if not 0 < k <= 100:
        raise UserError(f"k={k!r}: expected a percentage in (0, 100]")
    return TopKCrossEntropy(ignore_index, k)


# SMP's dice options this module's one-pass dice does not take: those keep SMP's DiceLoss
_SMP_ONLY_DICE = ("classes", "from_logits")


@LOSSES.register("dice")
def dice(num_classes: int, ignore_index: int, **params: Any) -> nn.Module:
    """Soft Dice (multiclass), SMP DiceLoss's parameters and value."""
    _check_class_weights(params.get("class_weights"), num_classes)
    # SMP checks the parameters (a misspelt one is a TypeError naming it)
    loss = smp.losses.DiceLoss(mode="multiclass", ignore_index=ignore_index, **params)
    if any(name in params for name in _SMP_ONLY_DICE):
        return loss
    return SoftDice(ignore_index, params)


@LOSSES.register("jaccard")
def jaccard(num_classes: int, ignore_index: int, **params: Any) -> nn.Module:
    """SMP JaccardLoss (soft IoU, multiclass); params go to `smp.losses.JaccardLoss`."""
    _check_class_weights(params.get("class_weights"), num_classes)
    return smp.losses.JaccardLoss(mode="multiclass", ignore_index=ignore_index, **params)


@LOSSES.register("tversky")
def tversky(num_classes: int, ignore_index: int, **params: Any) -> nn.Module:
    """SMP TverskyLoss (multiclass); alpha weighs false positives, beta false negatives."""
    _check_class_weights(params.get("class_weights"), num_classes)
    return smp.losses.TverskyLoss(mode="multiclass", ignore_index=ignore_index, **params)


# SMP's focal options that change the reduction: those keep SMP's own (slower) loop
_SMP_ONLY_FOCAL = ("normalized", "reduction", "from_logits", "eps")


@LOSSES.register("focal")
def focal(num_classes: int, ignore_index: int, **params: Any) -> nn.Module:
    """Focal loss (multiclass, one-vs-rest per class), SMP FocalLoss's parameters and value."""
    _check_class_weights(params.get("class_weights"), num_classes)
    # SMP checks the parameters (a misspelt one is a TypeError naming it)
    loss = smp.losses.FocalLoss(mode="multiclass", ignore_index=ignore_index, **params)
    if not any(name in params for name in _SMP_ONLY_FOCAL):
        loss = OneVsRestFocal(ignore_index, params)
    return SkipAllIgnored(loss, ignore_index)


@LOSSES.register("lovasz")
def lovasz(
    num_classes: int, ignore_index: int, per_image: bool = False, **params: Any
) -> nn.Module:
    """SMP LovaszLoss (Lovasz-softmax); `per_image` averages the loss of each image."""
    loss = smp.losses.LovaszLoss(mode="multiclass", ignore_index=ignore_index, **params)
    if per_image:
        return PerImage(SkipAllIgnored(loss, ignore_index), ignore_index)
    return SkipAllIgnored(loss, ignore_index)


class CompoundLoss(nn.Module):
    """Weighted sum of named losses; `last_terms` holds each term's unweighted last value."""

    def __init__(self, terms: list[tuple[str, float, nn.Module]]):
        super().__init__()
        self.names = _unique_names([name for name, _, _ in terms])
        self.weights = [weight for _, weight, _ in terms]
        self.losses = nn.ModuleList([loss for _, _, loss in terms])
        self._last: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros(())
        last = {}
        for name, weight, loss in zip(self.names, self.weights, self.losses, strict=True):
            value = loss(logits, target)
            last[name] = value.detach()
            total = total + weight * value
        self._last = last
        return total

    @property
    def last_terms(self) -> dict[str, float]:
        """Per-term (unweighted) values of the last call, for logging."""
        # Kept as tensors until read, so that a step without logging does not sync the GPU.
        return {name: float(value) for name, value in self._last.items()}


def _unique_names(names: list[str]) -> list[str]:
    """`ce, dice, ce` -> `ce[0], dice, ce[2]`: logging keys stay distinct."""
    return [f"{name}[{i}]" if names.count(name) > 1 else name for i, name in enumerate(names)]


def build_loss(cfg: LossConfig, num_classes: int, ignore_index: int) -> CompoundLoss:
    """The weighted sum of the loss terms in `cfg`; UserError on an unknown name or bad params."""
    terms = []
    for i, term in enumerate(cfg.terms):
        factory = LOSSES.get(term.name)  # UserError with a did-you-mean
        try:
            loss = factory(num_classes=num_classes, ignore_index=ignore_index, **term.params)
        except (TypeError, ValueError, UserError) as exc:
            raise UserError(
                f"loss.terms[{i}].params {term.params!r} are not valid for loss "
                f"{term.name!r}: {exc}"
            ) from None
        terms.append((term.name, term.weight, loss))
    return CompoundLoss(terms)
