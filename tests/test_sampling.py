"""Class-balanced sampling: rare-class images are drawn as often as their weights say,
and the draws are reproducible from the loader's generator."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from segarena.config import SamplerConfig, config_from_dict
from segarena.data.dataset import train_loader
from segarena.data.sampling import SAMPLERS, build_sampler, class_balanced_weights
from segarena.errors import UserError
from segarena.train.parts import check_names

RARE, COMMON = 10, 90  # 10 images hold class 1 and background; 90 hold background only


class Indexes(Dataset):
    """A dataset whose items are their own index, with per-item classes."""

    def __init__(self, item_classes):
        self.item_classes = item_classes

    def __len__(self):
        return len(self.item_classes)

    def __getitem__(self, index):
        return index


def rare_and_common() -> Indexes:
    return Indexes([(0, 1)] * RARE + [(0,)] * COMMON)


def epochs_of_draws(dataset, cfg, seed: int, epochs: int) -> list[int]:
    """Indexes drawn over `epochs`, reseeding the generator per epoch as fit.py does."""
    generator = torch.Generator()
    sampler = build_sampler(cfg, dataset.item_classes, generator)
    loader = train_loader(dataset, 10, 0, generator, sampler)
    drawn = []
    for epoch in range(epochs):
        generator.manual_seed(seed + epoch)
        drawn += [int(i) for batch in loader for i in batch]
    return drawn


def test_weights_follow_inverse_image_frequency():
    # class 1 in 1 of 4 images, class 2 in 2 of 4, background in all; the rarest class wins
    weights = class_balanced_weights([(0, 1), (0, 2), (0, 2), (0,), ()], power=0.5)
    expected = [(5 / 1) ** 0.5, (5 / 2) ** 0.5, (5 / 2) ** 0.5, (5 / 4) ** 0.5, 1.0]
    assert weights.tolist() == pytest.approx(expected)
    assert class_balanced_weights([(0, 1), (0,)], power=0.0).tolist() == [1.0, 1.0]


def test_rare_class_images_are_drawn_as_often_as_their_weight_says():
    dataset = rare_and_common()
    cfg = SamplerConfig(name="class_balanced", power=0.5)
    drawn = epochs_of_draws(dataset, cfg, seed=0, epochs=200)
    assert len(drawn) == 200 * len(dataset)  # an epoch is len(dataset) draws
    counts = Counter(drawn)
    rare_rate = sum(counts[i] for i in range(RARE)) / RARE
    common_rate = sum(counts[i] for i in range(RARE, RARE + COMMON)) / COMMON
    # class 1 is in 10% of the images: weight (1 / 0.1) ** 0.5 against 1 for the others
    assert rare_rate / common_rate == pytest.approx(10**0.5, rel=0.08)
    assert len(counts) == RARE + COMMON  # every image still comes up


def test_uniform_draws_every_image_once_per_epoch():
    dataset = rare_and_common()
    assert build_sampler(SamplerConfig(), dataset.item_classes, torch.Generator()) is None
    drawn = epochs_of_draws(dataset, SamplerConfig(name="uniform"), seed=0, epochs=2)
    assert sorted(drawn[:100]) == list(range(100)) and drawn[:100] != drawn[100:]


def test_same_seed_same_draws_other_seed_other_draws():
    dataset = rare_and_common()
    cfg = SamplerConfig(name="class_balanced")
    first = epochs_of_draws(dataset, cfg, seed=3, epochs=2)
    assert epochs_of_draws(dataset, cfg, seed=3, epochs=2) == first
    assert epochs_of_draws(dataset, cfg, seed=4, epochs=2) != first
    assert first[:100] != first[100:]  # each epoch draws afresh


def test_sampler_config_is_checked():
    base = {"data": {"sources": [{"images": "i", "masks": "m"}], "classes": ["a", "b"]}}
    # the name is checked against the registry (config/ comes before data/): did-you-mean
    config = config_from_dict({**base, "train": {"sampler": {"name": "balanced"}}})
    hint = r"unknown sampler 'balanced'; did you mean 'class_balanced'\? \(known: "
    with pytest.raises(UserError, match=hint):
        build_sampler(config.train.sampler, [(0,)], torch.Generator())
    with pytest.raises(UserError, match=r"^train.sampler.name: " + hint):
        check_names(config)  # what a caller runs before anything trains
    with pytest.raises(UserError, match=r"train.sampler.powr: unknown key; did you mean 'power'"):
        config_from_dict({**base, "train": {"sampler": {"name": "uniform", "powr": 1}}})


def test_every_registered_sampler_is_tested_by_name():
    assert SAMPLERS.names() == ["class_balanced", "uniform"]
