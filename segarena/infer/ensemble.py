"""Ensembles: the fold checkpoints of one or several run directories, averaged.

Members may differ in arch, encoder and data.image_size. Each member prepares the image
as its own validation did (Resize to its data.image_size, augment.val, its mean/std), runs
with its own inference options (config.infer, overridden by the CLI), and returns
probabilities at the size asked for; the ensemble is the weighted mean of those.

Weights are given per run directory (default: equal) and split evenly among that run's
folds, so a 5-fold run and a 1-fold run count alike unless told otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import Tensor, nn

from segarena.config import Config, InferConfig
from segarena.data.augment import build_transforms
from segarena.data.dataset import normalize
from segarena.errors import BadOption, UserError
from segarena.infer.options import infer_options
from segarena.infer.sliding import infer_probs
from segarena.model.build import build_model
from segarena.run_dir.checkpoints import CHECKPOINT_KINDS, fold_checkpoints, load_checkpoint
from segarena.run_dir.layout import RunDir


@dataclass
class Member:
    """One trained model with everything needed to run it on a raw image."""

    name: str  # "<run_dir>/fold_<k>/<checkpoint>.ckpt"
    model: nn.Module
    transform: A.Compose
    mean_std: tuple[Tensor, Tensor]  # (1,3,1,1) each, on the CPU
    options: InferConfig
    weight: float
    precision: str


@dataclass(frozen=True)
class EnsembleSpec:
    """Which trained models an inference command runs, and how: built once (by the CLI),
    then handed to evaluate, predict and pseudo.

    `weights` are per run directory (default: equal), split evenly among its folds;
    `overrides` are inference options (tta, scales, merge, window, overlap,
    sw_batch_size) over each run's config.infer; `folds` keeps only those folds;
    `batch_size` is how many images of one size go through a member in one pass."""

    run_dirs: tuple[Path, ...]
    checkpoint: str = "best"
    weights: tuple[float, ...] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    folds: tuple[int, ...] | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dirs", tuple(Path(r) for r in self.run_dirs))
        if not self.run_dirs:
            raise UserError("no run directory given; expected one or more")
        if self.checkpoint not in CHECKPOINT_KINDS:
            raise BadOption(
                "checkpoint",
                f"{self.checkpoint!r}: expected one of {', '.join(CHECKPOINT_KINDS)}"
            )
        if self.batch_size < 1:
            raise BadOption("batch_size", f"{self.batch_size}: expected 1 or more images")
        weights = self.weights
        if weights is not None and (
            len(weights) != len(self.run_dirs) or min(weights) < 0 or sum(weights) <= 0
        ):
            raise BadOption(
                "weights",
                f"{list(weights)}: expected {len(self.run_dirs)} weights >= 0 (one "
                "per run directory), not all zero"
            )

    def with_folds(self, folds: Sequence[int] | None) -> EnsembleSpec:
        return replace(self, folds=None if folds is None else tuple(folds))

    @property
    def run_weights(self) -> list[float]:
        return [1.0] * len(self.run_dirs) if self.weights is None else list(self.weights)


def pick_device(device: str) -> torch.device:
    """`auto` = the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise BadOption("device", f"{device!r}: expected auto, cpu, cuda or cuda:N") from None


def _load_model(config: Config, path: Path, device: torch.device) -> nn.Module:
    model = build_model(
        config.model.model_copy(update={"encoder_weights": None}), config.data.num_classes
    )
    try:
        model.load_state_dict(load_checkpoint(path)["model"])
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{path}: does not fit the run's config.yaml model: {exc}") from None
    return inference_model(model, device)


def inference_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """`model` in eval mode on `device`, its weights channels-last: convolutions then run
    in NHWC, 1.4x (ResNet-18 Unet, 512x512) to 2.4x (lite0 Unet, 192x256) faster on this
    CPU (bench/predict.py, bench/infer.py); outputs differ only by float rounding."""
    return model.eval().to(device, memory_format=torch.channels_last)


def load_members(spec: EnsembleSpec, device: torch.device | str = "cpu") -> list[Member]:
    """Every fold's `spec.checkpoint` of every run directory (only `spec.folds`, when
    given); UserError if their classes differ or a run has none of those folds."""
    run_dirs, weights, folds = spec.run_dirs, spec.run_weights, spec.folds
    device = torch.device(device)
    members: list[Member] = []
    first: Config | None = None
    for run_dir, run_weight in zip(map(Path, run_dirs), weights):
        config = RunDir(run_dir).config()
        first = first or config
        if config.data.classes != first.data.classes:
            raise UserError(
                f"{run_dir}: classes {config.data.classes} differ from "
                f"{run_dirs[0]}'s {first.data.classes}; ensemble members must share classes"
            )
        checkpoints = [
            path
            for fold, path in fold_checkpoints(run_dir, spec.checkpoint)
            if folds is None or fold in folds
        ]
        if not checkpoints:
            raise UserError(
                f"{run_dir}: no {spec.checkpoint} checkpoint of fold(s) {list(folds or [])}"
            )
        transform = build_transforms(config.data, config.augment.val, False, "augment.val")
        mean = torch.tensor(config.data.mean).view(1, 3, 1, 1)
        std = torch.tensor(config.data.std).view(1, 3, 1, 1)
        options = infer_options(config.infer, spec.overrides)
        for path in checkpoints:
            members.append(
                Member(
                    name=str(path),
                    model=_load_model(config, path, device),
                    transform=transform,
                    mean_std=(mean, std),
                    options=options,
                    weight=run_weight / sum(weights) / len(checkpoints),
                    precision=config.train.precision,
                )
            )
    return members


class Ensemble:
    """The weighted mean of its members' probabilities; `probs` takes one raw image."""

    def __init__(self, members: list[Member], classes: list[str], device: torch.device):
        self.members = members
        self.classes = classes
        self.device = device

    @classmethod
    def from_spec(cls, spec: EnsembleSpec) -> Ensemble:
        """Load the members that `spec` names (see `load_members`) on its device."""
        target = pick_device(spec.device)
        members = load_members(spec, target)
        return cls(members, RunDir(spec.run_dirs[0]).config().data.classes, target)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @torch.inference_mode()
    def probs(self, image: np.ndarray, out_size: tuple[int, int] | None = None) -> Tensor:
        """Probabilities [C,*out_size] (float32, on the CPU) of an HxWx3 uint8 RGB image;
        `out_size` defaults to the image's (H, W)."""
        return self.batch_probs([image], out_size)[0]

    @torch.inference_mode()
    def batch_probs(
        self, images: Sequence[np.ndarray], out_size: tuple[int, int] | None = None
    ) -> Tensor:
        """Probabilities [N,C,*out_size] (float32, on the CPU) of N HxWx3 uint8 RGB images
        of one shape, through each member in one batch; `out_size` defaults to (H, W)."""
        out_size = tuple(out_size) if out_size is not None else images[0].shape[:2]
        total = None
        for member in self.members:
            probs = member_probs(member, images, out_size, self.device).cpu()
            if total is None:
                total = probs.mul_(member.weight)
            else:
                total.add_(probs, alpha=member.weight)
        return total


def member_probs(
    member: Member, images: Sequence[np.ndarray], out_size: tuple[int, int], device: torch.device
) -> Tensor:
    """One member's probabilities [N,C,*out_size] of raw HxWx3 uint8 images of one shape:
    float32, or float16 for huge sliding-window outputs (see segarena.infer.sliding)."""
    prepared = np.stack([member.transform(image=image)["image"] for image in images])
    x = torch.from_numpy(np.ascontiguousarray(prepared.transpose(0, 3, 1, 2)))
    mean, std = (t.to(device) for t in member.mean_std)

    def prepare(pixels: Tensor) -> Tensor:
        return normalize(pixels, mean, std)

    # The images stay uint8 on the CPU; with a sliding window only batches of windows
    # move to the device and are normalised there, so a huge image never exists as floats.
    with _autocast(member.precision, device):
        return infer_probs(member.model, x, member.options, out_size, prepare)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The run's mixed precision, as its validation ran under Fabric: bf16 on a GPU or the
    CPU (1.9x the images/s of float32 on this project's CPU, bench/predict.py), float16 on
    a GPU only (CPU float16 kernels are slow); float32 otherwise."""
    if precision == "bf16-mixed" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
