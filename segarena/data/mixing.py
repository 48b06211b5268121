"""Batch-level mixing for segmentation: MixUp, CutMix, SnapMix (loss-guided) and copy-paste.

It runs in the training loop, on the device, on normalised batches straight from the loader:

    mixer = build_mixer(config.augment.mixing, num_classes, ignore_index)  # None when off
    images, targets = mixer(images, masks, model)
    loss = mixer.loss(loss_fn, model(images), targets)

A batch gets at most one method, drawn with the configured per-batch probabilities. Every
random draw comes from torch's global CPU generator, which segarena.train.fold reseeds each
epoch, so a run mixes the same way whether or not it was resumed. With every probability 0
no mixer is built and the loop is exactly the unmixed one.

MixUp (Zhang et al. 2018): images = lam * x + (1 - lam) * x[perm], one lam ~ Beta(a, a) per
    batch. Labels are not blended into soft targets: the loss is
    lam * L(logits, y) + (1 - lam) * L(logits, y[perm]), so every registered loss works
    unchanged and each term honours ignore_index.
CutMix (Yun et al. 2019): each image gets a box of a permuted image pasted at the same place,
    with its mask: labels stay exact pixels. The box covers 1 - lam of the image, lam ~
    Beta(a, a), and lies wholly inside it at a random position of its own per image.
SnapMix, adapted to segmentation: SnapMix (Huang et al. 2021) uses class activation maps to
    weigh the labels of mixed classification images. Segmentation labels are exact per pixel,
    so there is nothing to weigh; what carries over is letting the model's own view choose the
    boxes. A no-grad forward pass of the current model, in eval mode so that BatchNorm
    statistics and dropout are untouched, gives each pixel's cross entropy (0 where ignored:
    whatever loss.terms says, since Dice or Lovasz have no per-pixel value). Image i then
    receives the box of its source perm[i] with the HIGHEST summed loss (what the model gets
    most wrong), pasted with its mask over image i's own box with the LOWEST summed loss (what
    it already knows, or ignored pixels). Both boxes have one size, drawn as in CutMix, so
    nothing is resized. Cost: one extra inference forward on the batches that get it (about
    a third of a training step) and O(HW) box sums from an integral image.
Copy-paste (Ghiasi et al. 2021): objects are the connected components (4-connected) of one
    class in the other images of the batch, pasted with their masks at the same position.
    Each image gets 1 to copy_paste_max_objects of them. A draw first picks a class with
    weight copy_paste_class_weights[c], or else (1 / share of class c in the batch's labelled
    pixels) ** copy_paste_power, so rare classes are oversampled; then one of its objects,
    uniformly. Objects larger than copy_paste_max_area of the image (usually background or
    stuff) are never pasted. Components are labelled on the CPU (scipy.ndimage): one
    device-to-host copy of the masks per batch that gets copy-paste.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from segarena.config import MixingConfig
from segarena.errors import UserError

# Connect pixels within one image only: 4-neighbours in the middle plane of a 3D structure.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class MixupTargets:
    """MixUp's two label maps: the loss is lam * L(masks) + (1 - lam) * L(partner)."""

    masks: Tensor
    partner: Tensor
    lam: float


Targets = Tensor | MixupTargets


def build_mixer(cfg: MixingConfig, num_classes: int, ignore_index: int) -> BatchMixer | None:
    """The mixer that `augment.mixing` asks for, or None when every probability is 0."""
    return BatchMixer(cfg, num_classes, ignore_index) if cfg.enabled else None


class BatchMixer:
    """Mixes a batch with at most one method (see the module docstring)."""

    def __init__(self, cfg: MixingConfig, num_classes: int, ignore_index: int):
        weights = cfg.copy_paste_class_weights
        if weights is not None and len(weights) != num_classes:
            raise UserError(
                f"augment.mixing.copy_paste_class_weights has {len(weights)} values "
                f"{weights}, expected one per class ({num_classes})"
            )
        self.cfg = cfg
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.methods: list[tuple[float, Callable]] = [
            (cfg.mixup_p, self.mixup),
            (cfg.cutmix_p, self.cutmix),
            (cfg.snapmix_p, self.snapmix),
            (cfg.copy_paste_p, self.copy_paste),
        ]

    def __call__(
        self, images: Tensor, masks: Tensor, model: nn.Module | None = None
    ) -> tuple[Tensor, Targets]:
        """Images [N,3,H,W] (float) and masks [N,H,W] (long) -> mixed images and targets.

        `model` is needed by SnapMix only. Unmixed batches come back as the same tensors.
        """
        if not self.cfg.enabled or len(images) < 2:
            return images, masks  # no random draw either: the RNG stream stays as it was
        draw = float(torch.rand(()))
        for p, method in self.methods:
            if draw < p:
                return method(images, masks, model)
            draw -= p
        return images, masks

    @staticmethod
    def loss(
        loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, targets: Targets
    ) -> Tensor:
        """`loss_fn` on mixed targets: MixUp's lam-weighted pair of terms, else one term."""
        if isinstance(targets, MixupTargets):
            own = loss_fn(logits, targets.masks)
            partner = loss_fn(logits, targets.partner)
            return targets.lam * own + (1 - targets.lam) * partner
        return loss_fn(logits, targets)

    def mixup(self, images: Tensor, masks: Tensor, model=None) -> tuple[Tensor, MixupTargets]:
        """Blend each image with a permuted one; the targets keep both masks."""
        lam = sample_beta(self.cfg.mixup_alpha)
        perm = torch.randperm(len(images)).to(images.device)
        mixed = lam * images + (1 - lam) * images[perm]
        return mixed, MixupTargets(masks, masks[perm], lam)

    def cutmix(self, images: Tensor, masks: Tensor, model=None) -> tuple[Tensor, Tensor]:
        """Paste a box of a permuted image, with its mask, at the same place of each image."""
        n, _, height, width = images.shape
        box_h, box_w = box_size(height, width, 1 - sample_beta(self.cfg.cutmix_alpha))
        tops = torch.randint(0, height - box_h + 1, (n,))
        lefts = torch.randint(0, width - box_w + 1, (n,))
        perm = torch.randperm(n)
        rows = torch.arange(height)[None, :, None]
        cols = torch.arange(width)[None, None, :]
        inside = (
            (rows >= tops[:, None, None])
            & (rows < tops[:, None, None] + box_h)
            & (cols >= lefts[:, None, None])
            & (cols < lefts[:, None, None] + box_w)
        )
        source = torch.where(inside, perm[:, None, None], torch.arange(n)[:, None, None])
        return paste_same_place(images, masks, source.to(images.device))

    def snapmix(self, images: Tensor, masks: Tensor, model: nn.Module) -> tuple[Tensor, Tensor]:
        """Paste each source's highest-loss box over the target's lowest-loss box."""
        if model is None:
            raise ValueError("SnapMix needs the model: call mixer(images, masks, model)")
        n, _, height, width = images.shape
        box_h, box_w = box_size(height, width, 1 - sample_beta(self.cfg.snapmix_alpha))
        perm = torch.randperm(n).tolist()
        if box_h == 0 or box_w == 0:
            return images, masks
        sums = box_sums(pixel_losses(model, images, masks, self.ignore_index), box_h, box_w)
        hardest = sums.flatten(1).argmax(1).tolist()
        easiest = sums.flatten(1).argmin(1).tolist()
        positions = width - box_w + 1
        mixed, mixed_masks = images.clone(), masks.clone()
        for i, j in enumerate(perm):
            sy, sx = box_slices(hardest[j], positions, box_h, box_w)  # in source j
            ty, tx = box_slices(easiest[i], positions, box_h, box_w)  # in target i
            mixed[i, :, ty, tx] = images[j, :, sy, sx]
            mixed_masks[i, ty, tx] = masks[j, sy, sx]
        return mixed, mixed_masks

    def copy_paste(self, images: Tensor, masks: Tensor, model=None) -> tuple[Tensor, Tensor]:
        """Paste class-weighted objects of the other images, with their masks, in place."""
        labels = masks.cpu().numpy()
        n, height, width = labels.shape
        weights = self.class_weights(labels)
        max_pixels = self.cfg.copy_paste_max_area * height * width
        objects = find_objects(labels, np.flatnonzero(weights), max_pixels)
        source = np.broadcast_to(np.arange(n)[:, None, None], labels.shape).copy()
        for i in range(n):
            candidates = [obj for obj in objects if obj.image != i]
            for _ in range(int(torch.randint(1, self.cfg.copy_paste_max_objects + 1, ()))):
                chosen = draw_object(candidates, weights)
                if chosen is None:
                    break
                candidates.remove(chosen)
                source[i][chosen.box][chosen.region] = chosen.image
        return paste_same_place(images, masks, torch.from_numpy(source).to(images.device))

    def class_weights(self, labels: np.ndarray) -> np.ndarray:
        """Copy-paste draw weight of each class: configured, or inverse pixel share ** power."""
        if self.cfg.copy_paste_class_weights is not None:
            return np.asarray(self.cfg.copy_paste_class_weights, dtype=float)
        valid = labels[(labels != self.ignore_index) & (labels < self.num_classes)]
        counts = np.bincount(valid, minlength=self.num_classes).astype(float)
        share = counts / max(counts.sum(), 1.0)
        present = counts > 0
        weights = np.zeros(self.num_classes)
        weights[present] = share[present] ** -self.cfg.copy_paste_power
        return weights


@dataclass(frozen=True, eq=False)  # eq=False: list.remove must find this very object
class PasteObject:
    """One connected component of class `cls` in image `image`: `region` within `box`."""

    image: int
    cls: int
    box: tuple[slice, slice]
    region: np.ndarray


def find_objects(labels: np.ndarray, classes, max_pixels: float) -> list[PasteObject]:
    """The 4-connected components of each of `classes` in masks [N,H,W], at most
    `max_pixels` large, one labelling call per class for the whole batch."""
    objects = []
    for cls in classes:
        components, _ = ndimage.label(labels == cls, structure=_IN_PLANE)
        for label, where in enumerate(ndimage.find_objects(components), start=1):
            region = components[where][0] == label
            if region.sum() <= max_pixels:
                objects.append(PasteObject(where[0].start, int(cls), where[1:], region))
    return objects


def draw_object(candidates: list[PasteObject], class_weights: np.ndarray) -> PasteObject | None:
    """A class drawn by weight among the candidates' classes, then one of its objects."""
    classes = sorted({obj.cls for obj in candidates})
    if not classes:
        return None
    weights = torch.tensor([class_weights[c] for c in classes], dtype=torch.double)
    cls = classes[int(torch.multinomial(weights, 1))]
    of_class = [obj for obj in candidates if obj.cls == cls]
    return of_class[int(torch.randint(len(of_class), ()))]


def sample_beta(alpha: float) -> float:
    """lam ~ Beta(alpha, alpha), from torch's global generator."""
    concentration = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(concentration, concentration).sample())


def box_size(height: int, width: int, area: float) -> tuple[int, int]:
    """Height and width of a box with the image's aspect covering `area` of it."""
    side = max(0.0, min(1.0, area)) ** 0.5
    return round(height * side), round(width * side)


def box_slices(flat: int, positions: int, box_h: int, box_w: int) -> tuple[slice, slice]:
    """Rows and columns of the box whose top-left corner is `flat` in a row-major grid of
    corners `positions` wide (a flat index into box_sums' output)."""
    top, left = divmod(flat, positions)
    return slice(top, top + box_h), slice(left, left + box_w)


def paste_same_place(images: Tensor, masks: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
    """Pixel (i, y, x) of the result is pixel (source[i, y, x], y, x) of the batch."""
    index = source[:, None].expand(-1, images.shape[1], -1, -1)
    return images.gather(0, index), masks.gather(0, source)


@torch.no_grad()
def pixel_losses(model: nn.Module, images: Tensor, masks: Tensor, ignore_index: int) -> Tensor:
    """Per-pixel cross entropy [N,H,W] of `model` (run in eval mode) on the batch, 0 where
    ignored. Eval mode keeps BatchNorm running statistics and the dropout RNG untouched."""
    was_training = model.training
    model.eval()
    try:
        logits = model(images)
    finally:
        model.train(was_training)
    if isinstance(logits, tuple):  # SMP with aux_params also returns class logits
        logits = logits[0]
    return F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="none")


def box_sums(values: Tensor, box_h: int, box_w: int) -> Tensor:
    """Sums of `values` [N,H,W] over every box_h x box_w box, [N, H-box_h+1, W-box_w+1],
    indexed by the box's top-left corner; from an integral image, so O(HW) for any box."""
    # float64 keeps the corner differences of large cumulative sums exact enough; MPS has none
    dtype = torch.float32 if values.device.type == "mps" else torch.float64
    integral = F.pad(values.to(dtype).cumsum(1).cumsum(2), (1, 0, 1, 0))
    return (
        integral[:, box_h:, box_w:]
        - integral[:, :-box_h, box_w:]
        - integral[:, box_h:, :-box_w]
        + integral[:, :-box_h, :-box_w]
    )
