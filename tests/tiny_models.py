"""Tiny models with known symmetries for the inference tests."""

from __future__ import annotations

import torch
from torch import nn


def pointwise_model(classes: int = 4, seed: int = 0) -> nn.Module:
    """A 1x1 conv: it commutes with every flip and rotation."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, classes, 1).eval()


def asymmetric_model(classes: int = 4, seed: int = 0) -> nn.Module:
    """A random 3x3 conv: its predictions change under flips."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, classes, 3, padding=1).eval()


class CallLog(nn.Module):
    """Records the batch shape of every forward pass."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.shapes = inner, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.inner(x)
