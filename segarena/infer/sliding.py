"""Sliding-window inference with Gaussian blending, for images larger than a window.

Windows overlap by `overlap` of their size; the last window of each row and column is
aligned to the image edge, so any image size is covered. Each window's TTA-merged
probabilities are weighted by a Gaussian centred on the window (sigma = size / 8, as in
nnU-Net and MONAI: a window's borders see the least context, so they count least) and
the weighted sum is divided by the summed weights.

Memory stays bounded whatever the image size:
- windows go through the model `sw_batch_size` at a time, and only they travel to the
  model's device; the image may stay uint8 on the CPU, with `prepare` (e.g. normalising)
  applied to each batch of windows on the device;
- windows run row by row, and the float32 sums cover one band of rows (a window's
  height): rows that no later window reaches are divided by their weights and written to
  the output as the band moves down. The summed weights need no buffer of their own:
  windows form a grid, so they are the outer product of a row sum and a column sum;
- the output is float32, or float16 above HALF_OUTPUT_ELEMENTS (C x H x W) elements,
  where float32 would cost gigabytes (probabilities in [0, 1] keep ~3 decimals in float16).

Hand-written because no dependency does this: torch's `F.fold` blends overlapping
windows but needs all of them in memory at once and a regular stride, and MONAI's
`sliding_window_inference` would make MONAI a dependency (bench/infer.py compares the two).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segarena.config import InferConfig
from segarena.data.tiles import window_starts
from segarena.infer.tta import tta_probs

SIGMA_SCALE = 1 / 8  # Gaussian sigma as a share of the window size (nnU-Net, MONAI)
HALF_OUTPUT_ELEMENTS = 2**25  # C x H x W above this (128 MB in float32): float16 output


def gaussian_profile(
    length: int, sigma_scale: float = SIGMA_SCALE, device: torch.device | None = None
) -> Tensor:
    """A 1-D Gaussian of `length` points, peak 1 at the centre, sigma = length * sigma_scale."""
    return torch.signal.windows.gaussian(length, std=max(length * sigma_scale, 1e-3), device=device)


def gaussian_weights(
    size: tuple[int, int], sigma_scale: float = SIGMA_SCALE, device: torch.device | None = None
) -> Tensor:
    """An (h, w) Gaussian importance map with peak 1 at the centre, sigma = size * sigma_scale."""
    rows, cols = (gaussian_profile(n, sigma_scale, device) for n in size)
    return torch.outer(rows, cols)


def sliding_probs(
    model: nn.Module,
    image: Tensor,
    options: InferConfig,
    *,
    out_size: tuple[int, int] | None = None,
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Class probabilities [C,*out_size] of one image [3,H,W], window by window, on the
    image's device, with the window, overlap, windows per pass and TTA of `options`.

    `image` is what the model takes, or (with `prepare`, applied to each batch of windows
    once on the model's device) e.g. raw uint8 pixels. A window larger than the image is
    shrunk to it (one window: the plain TTA prediction). Each forward pass holds
    `options.sw_batch_size` x TTA views windows. Call under `torch.inference_mode()`.
    """
    if options.window is None:
        raise ValueError("sliding_probs needs options.window (see infer_probs)")
    window, overlap, sw_batch_size = options.window, options.overlap, options.sw_batch_size
    height, width = image.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)
    # at least one pixel of stride: overlap close to 1 must not loop forever
    step_h, step_w = (max(1, int(n * (1 - overlap))) for n in (win_h, win_w))
    rows, cols = window_starts(height, win_h, step_h), window_starts(width, win_w, step_w)
    device = image.device
    model_device = _device_of(model, device)
    row_profile, col_profile = (gaussian_profile(n, device=device) for n in (win_h, win_w))
    weights = torch.outer(row_profile, col_profile)
    row_norm, col_norm = _coverage(rows, row_profile, height), _coverage(cols, col_profile, width)
    corners = [(y, x) for y in rows for x in cols]  # row by row: the band only moves down
    out = band = None
    top = 0  # image row of the band's first row

    def flush(until: int) -> None:
        """Rows [top, until) are final: normalise them into `out`, move the band down."""
        done = until - top
        out[:, top:until] = band[:, :done] / torch.outer(row_norm[top:until], col_norm)
        band[:, : win_h - done] = band[:, done:].clone()
        band[:, win_h - done :] = 0

    for first in range(0, len(corners), sw_batch_size):
        batch = corners[first : first + sw_batch_size]
        crops = torch.stack([image[:, y : y + win_h, x : x + win_w] for y, x in batch])
        crops = crops.to(model_device)
        views = prepare(crops) if prepare else crops
        probs = tta_probs(model, views, options.tta, options.scales, options.merge)
        probs = probs.to(device)
        if out is None:  # the class count is known after the first forward pass
            classes = probs.shape[1]
            dtype = torch.float16 if classes * height * width > HALF_OUTPUT_ELEMENTS else None
            out = torch.empty((classes, height, width), dtype=dtype, device=device)
            band = torch.zeros((classes, win_h, width), device=device)
        for (y, x), window_probs in zip(batch, probs):
            if y > top:  # windows start at or below y from now on
                flush(y)
                top = y
            band[:, :, x : x + win_w].addcmul_(window_probs, weights)
    flush(height)
    if out_size is not None and tuple(out_size) != (height, width):
        out = F.interpolate(out[None], tuple(out_size), mode="bilinear", align_corners=False)[0]
    return out


def _coverage(starts: list[int], profile: Tensor, length: int) -> Tensor:
    """Summed weight profile (1-D) of windows placed at `starts` along an axis of `length`:
    one factor of the separable sum of the windows' Gaussian weights."""
    total = torch.zeros(length, dtype=profile.dtype, device=profile.device)
    for start in starts:
        total[start : start + len(profile)] += profile
    return total


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return default if param is None else param.device


def infer_probs(
    model: nn.Module,
    images: Tensor,
    options: InferConfig,
    out_size: tuple[int, int] | None = None,
    prepare: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Probabilities [N,C,*out_size] of `images` [N,3,H,W] with the TTA, scales, merge rule
    and sliding window of `options`; whole-image TTA when no window is set or the images
    fit in one. `prepare` (e.g. normalisation) runs on the model's device: on the whole
    images, or on each batch of windows (the output then stays on the images' device)."""
    window = options.window
    height, width = images.shape[-2:]
    if window is None or (height <= window[0] and width <= window[1]):
        images = images.to(_device_of(model, images.device))
        images = prepare(images) if prepare is not None else images
        return tta_probs(
            model, images, options.tta, options.scales, options.merge, out_size=out_size
        )
    return torch.stack(
        [
            sliding_probs(model, image, options, out_size=out_size, prepare=prepare)
            for image in images
        ]
    )
