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
from segarena.util.registry import Registry


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


SAMPLERS = Registry("sampler")


def build_sampler(
    cfg: SamplerConfig,
    item_classes: Sequence[Sequence[int]],
    generator: torch.Generator | None,
) -> Sampler | None:
    """The sampler `cfg` names, or None for uniform (the loader then shuffles).

    The sampler draws from `generator`, the loader's own, which the training loop reseeds
    every epoch: the same seed gives the same draws, with or without a resume. Each name is
    a factory in SAMPLERS, called with (cfg, item_classes, generator); an unknown name is a
    UserError with a did-you-mean.
    """
    return SAMPLERS.create(cfg.name, cfg=cfg, item_classes=item_classes, generator=generator)


@SAMPLERS.register("uniform")
def uniform_sampler(
    cfg: SamplerConfig, item_classes: Sequence[Sequence[int]], generator: torch.Generator | None
) -> None:
    """No sampler: the loader shuffles, each item once per epoch."""
    return None


@SAMPLERS.register("class_balanced")
def class_balanced_sampler(
    cfg: SamplerConfig, item_classes: Sequence[Sequence[int]], generator: torch.Generator | None
) -> Sampler:
    """len(items) draws with replacement, weighted by `class_balanced_weights` (cfg.power)."""
    weights = class_balanced_weights(item_classes, cfg.power)
    return WeightedRandomSampler(
        weights, num_samples=len(weights), replacement=True, generator=generator
    )


class RankShard(Sampler[int]):
    """One process's share of each epoch's training draws when several processes train (DDP).

    Every process draws the same epoch order from the same seeded generator: a permutation
    drawn as the loader's own shuffle draws it (uniform), or `base`'s draws (class-balanced).
    The order is padded to a multiple of `world` by repeating its start, as torch's
    DistributedSampler does, so that every process takes the same number of steps; process
    `rank` takes every `world`-th item from position `rank`. Consecutive items go to
    consecutive processes, so the per-process batches of one step (batch_size / world items
    each) together hold the items of the one-process batch of that step.

    A one-process loader draws its worker base seed from the generator before the order; a
    process here gets its worker seeds from a generator of its own, so the order skips that
    draw to come out the same.
    """

    def __init__(
        self,
        size: int,
        rank: int,
        world: int,
        generator: torch.Generator,
        base: Sampler | None = None,
    ) -> None:
        self.size, self.rank, self.world = size, rank, world
        self.generator, self.base = generator, base

    def __len__(self) -> int:
        drawn = self.size if self.base is None else len(self.base)
        return -(-drawn // self.world)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the base seed
        if self.base is None:
            order = torch.randperm(self.size, generator=self.generator).tolist()
        else:
            order = list(self.base)
        while len(order) % self.world:
            order += order[: self.world - len(order) % self.world]
        return iter(order[self.rank :: self.world])
