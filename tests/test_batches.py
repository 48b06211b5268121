"""predict and evaluate batch consecutive images of one size (segarena.infer.images)."""

from __future__ import annotations

import numpy as np
import torch

from segarena.infer.ensemble import _autocast
from segarena.infer.images import same_size_batches


def shapes_of(batches) -> list[list[tuple[str, tuple]]]:
    return [[(name, image.shape[:2]) for name, image in batch] for batch in batches]


def image(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def test_batches_keep_the_order_and_split_where_the_size_changes():
    items = [("a", image(4, 6)), ("b", image(4, 6)), ("c", image(6, 4)), ("d", image(4, 6))]
    batches = list(same_size_batches(items, 8, lambda item: item[1]))
    assert [[name for name, _ in batch] for batch in batches] == [["a", "b"], ["c"], ["d"]]


def test_batches_stop_at_batch_size_and_at_the_pixel_cap():
    items = [(str(i), image(10, 10)) for i in range(7)]
    sizes = [len(b) for b in same_size_batches(items, 3, lambda item: item[1])]
    assert sizes == [3, 3, 1]
    sizes = [len(b) for b in same_size_batches(items, 8, lambda item: item[1], max_pixels=250)]
    assert sizes == [2, 2, 2, 1]  # 2 x 100 pixels fit under 250, 3 x 100 do not


def test_an_image_over_the_pixel_cap_goes_alone():
    items = [("small", image(2, 2)), ("huge", image(40, 40)), ("huge2", image(40, 40))]
    batches = list(same_size_batches(items, 8, lambda item: item[1], max_pixels=100))
    assert [[name for name, _ in batch] for batch in batches] == [["small"], ["huge"], ["huge2"]]


def test_inference_runs_at_the_precision_the_run_validated_with():
    with _autocast("bf16-mixed", torch.device("cpu")):  # Fabric validates bf16 on the CPU too
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with _autocast("16-mixed", torch.device("cpu")):  # no float16 autocast on the CPU
        assert not torch.is_autocast_enabled("cpu")
    with _autocast("32-true", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
