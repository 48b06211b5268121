"""The final scoring's files: out-of-fold probabilities (fold_k/oof/<id>.npy) and per-image
confusion matrices, from every process.

With one process each image's probabilities are written as they come. With several, each
process scores its share of the validation images and keeps them (compact: downscaled by
train.oof_scale, uint8 or float16) until rank 0 gathers them all and writes them, in the
validation order a one-process run writes. Rank 0 then holds one fold's compact OOF arrays
in memory at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightning_fabric import Fabric

from segarena.config import Config
from segarena.data.readers import Sample
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import PerImageRecorder, oof_name
from segarena.train.distributed import gather_on_zero
from segarena.util.files import atomic_output


def compact_probs(probs: torch.Tensor, config: Config) -> np.ndarray:
    """One image's probabilities [1, C, H, W] as stored: resized by train.oof_scale, then
    uint8 (probability * 255) or float16 (train.oof_dtype)."""
    scale = config.train.oof_scale
    if scale != 1.0:
        probs = F.interpolate(probs, scale_factor=scale, mode="bilinear", align_corners=False)
    probs = probs[0].cpu()
    if config.train.oof_dtype == "uint8":
        return (probs * 255).round().to(torch.uint8).numpy()
    return probs.to(torch.float16).numpy()


class OofCollector:
    """validate()'s `on_probs` for the final scoring; `save` writes the fold's files."""

    def __init__(
        self, fabric: Fabric, run_dir: RunDir, fold: int, samples: list[Sample], config: Config
    ):
        self.fabric, self.samples, self.config = fabric, samples, config
        self.out = run_dir.oof_dir(fold)
        self.fold_dir = run_dir.fold_dir(fold)
        data = config.data
        self.per_image = PerImageRecorder(samples, data.num_classes, data.ignore_index)
        self.record = self.per_image.wrap(self._keep)
        self.kept: list[tuple[int, np.ndarray]] = []  # (validation index, compact probs)
        self.streams = fabric.world_size == 1
        if self.streams:
            self.out.mkdir(parents=True, exist_ok=True)

    def __call__(self, indices: list[int], probs: torch.Tensor) -> None:
        self.record(indices, probs)

    def _keep(self, indices: list[int], probs: torch.Tensor) -> None:
        array = compact_probs(probs, self.config)
        if self.streams:
            self._write(indices[0], array)
        else:
            self.kept.append((indices[0], array))

    def _write(self, index: int, array: np.ndarray) -> None:
        # through a temporary file: a killed run never leaves a torn OOF file
        path = self.out / f"{oof_name(self.samples[index].id)}.npy"
        with atomic_output(path) as tmp, tmp.open("wb") as f:
            np.save(f, array)

    def save(self) -> None:
        """Rank 0 writes the (gathered) OOF files and per_image_cm.npy / per_image_ids.json."""
        if not self.streams:
            mine = [
                (index, array, matrix)
                for (index, array), matrix in zip(self.kept, self.per_image.matrices)
            ]
            every = sorted(gather_on_zero(self.fabric, mine), key=lambda item: item[0])
            if not self.fabric.is_global_zero:
                return
            self.out.mkdir(parents=True, exist_ok=True)
            for index, array, _ in every:
                self._write(index, array)
            self.per_image.ids = [self.samples[index].id for index, _, _ in every]
            self.per_image.matrices = [matrix for _, _, matrix in every]
        if self.fabric.is_global_zero:
            self.per_image.save(self.fold_dir)
