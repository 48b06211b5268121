"""Which training items an epoch draws: uniform shuffling or class-balanced sampling.

Class-balanced sampling draws images that hold a rare class more often. An item's weight
is the largest, over the classes present in it, of (1 / f_c) ** power, where f_c is the
share of items that contain class c. An item holding only common classes keeps a weight
near 1; one holding a class seen in 1% of the items gets 100 ** power. power=0 is uniform;
power=1 gives each class's images about the same share of draws (exactly so when every
image holds one class); the default 0.5 sits between, as the square-root repeat factors
of LVIS do (Gupta et al., 2019).
Drawing uses torch's WeightedRandomSampler with replacement, so an epoch is len(dataset)
draws and a rare image may come up several times in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from segarena.config import SamplerConfig


def class_balanced_weights(item_classes: Sequence[Sequence[int]], power: float) -> torch.Tensor:
    """Per-item weights max_c (1 / f_c) ** power, f_c = share of items containing class c.

    `item_classes[i]` lists the class ids present in item i (ignore_index excluded). An item
    with no class at all (entirely ignore) gets the smallest possible weight, 1.
    """
    if not item_classes:
        return torch.ones(0, dtype=torch.double)
    images_with = Counter(c for classes in item_classes for c in set(classes))
    total = len(item_classes)
    weights = [
        max(((total / images_with[c]) ** power for c in classes), default=1.0)
        for classes in item_classes
    ]
    return torch.tensor(weights, dtype=torch.double)


def build_sampler(
    cfg: SamplerConfig,
    item_classes: Sequence[Sequence[int]],
    generator: torch.Generator | None,
) -> Sampler | None:
    """The sampler `cfg` names, or None for uniform (the loader then shuffles).

    The sampler draws from `generator`, the loader's own, which the training loop reseeds
    every epoch: the same seed gives the same draws, with or without a resume.
    """
    if cfg.name == "uniform":
        return None
    weights = class_balanced_weights(item_classes, cfg.power)
    return WeightedRandomSampler(
        weights, num_samples=len(weights), replacement=True, generator=generator
    )
