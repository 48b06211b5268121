"""predict and evaluate batch consecutive images of one size (segarena.infer.images)."""

from __future__ import annotations

import numpy as np

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
