"""Sliding-window inference with Gaussian blending, for images larger than a window.

Windows overlap by `overlap` of their size; the last window of each row and column is
aligned to the image edge, so any image size is covered. Each window's TTA-merged
probabilities are weighted by a Gaussian centred on the window (sigma = size / 8, as in
nnU-Net and MONAI: a window's borders see the least context, so they count least) and
the weighted sum is divided by the summed weights.

Memory stays bounded: windows go through the model `sw_batch_size` at a time, and only
two buffers the size of the image are kept, a float32 (C, H, W) sum and an (H, W) weight
sum, on `accum_device` (the image's device by default; keep a huge image on the CPU and
only the window batches travel to the model's device).

Hand-written because no dependency does this: torch's `F.fold` blends overlapping
windows but needs all of them in memory at once and a regular stride, and MONAI's
`sliding_window_inference` would make MONAI a dependency (bench/infer.py compares the two).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segarena.config import InferConfig
from segarena.data.tiles import window_starts
from segarena.infer.tta import tta_probs

SIGMA_SCALE = 1 / 8  # Gaussian sigma as a share of the window size (nnU-Net, MONAI)


def gaussian_weights(
    size: tuple[int, int], sigma_scale: float = SIGMA_SCALE, device: torch.device | None = None
) -> Tensor:
    """An (h, w) Gaussian importance map with peak 1 at the centre, sigma = size * sigma_scale."""
    rows, cols = (
        torch.signal.windows.gaussian(n, std=max(n * sigma_scale, 1e-3), device=device)
        for n in size
    )
    return torch.outer(rows, cols)


def sliding_probs(
    model: nn.Module,
    image: Tensor,
    window: tuple[int, int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: str | Sequence[str] = "none",
    scales: Sequence[float] = (1.0,),
    merge: str = "mean",
    out_size: tuple[int, int] | None = None,
    accum_device: torch.device | None = None,
) -> Tensor:
    """Class probabilities [C,*out_size] of one normalised image [3,H,W], window by window.

    A window larger than the image is shrunk to it (one window: the plain TTA prediction).
    Windows travel to the model's device in batches of `sw_batch_size` (each batch is
    `sw_batch_size` x TTA views images in one forward pass); sums are kept on
    `accum_device` (default: the image's device). Call under `torch.inference_mode()`.
    """
    height, width = image.shape[-2:]
    win_h, win_w = min(window[0], height), min(window[1], width)
    # at least one pixel of stride: overlap close to 1 must not loop forever
    step_h, step_w = (max(1, int(n * (1 - overlap))) for n in (win_h, win_w))
    corners = [
        (y, x)
        for y in window_starts(height, win_h, step_h)
        for x in window_starts(width, win_w, step_w)
    ]
    accum_device = image.device if accum_device is None else torch.device(accum_device)
    model_device = _device_of(model, image.device)
    weights = gaussian_weights((win_h, win_w), device=accum_device)
    weight_sum = torch.zeros((height, width), device=accum_device)
    total = None
    for first in range(0, len(corners), sw_batch_size):
        batch = corners[first : first + sw_batch_size]
        crops = torch.stack([image[:, y : y + win_h, x : x + win_w] for y, x in batch])
        probs = tta_probs(model, crops.to(model_device), tta, scales, merge).to(accum_device)
        if total is None:  # the class count is known after the first forward pass
            total = torch.zeros((probs.shape[1], height, width), device=accum_device)
        for (y, x), window_probs in zip(batch, probs):
            total[:, y : y + win_h, x : x + win_w].addcmul_(window_probs, weights)
            weight_sum[y : y + win_h, x : x + win_w].add_(weights)
    total /= weight_sum
    if out_size is not None and tuple(out_size) != (height, width):
        total = F.interpolate(total[None], tuple(out_size), mode="bilinear", align_corners=False)
        total = total[0]
    return total


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    param = next(model.parameters(), None)
    return default if param is None else param.device


def infer_probs(
    model: nn.Module, images: Tensor, options: InferConfig, out_size: tuple[int, int] | None = None
) -> Tensor:
    """Probabilities [N,C,*out_size] of `images` [N,3,H,W] with the TTA, scales, merge rule
    and sliding window of `options`; whole-image TTA when no window is set or the images
    fit in one."""
    window = options.window
    height, width = images.shape[-2:]
    if window is None or (height <= window[0] and width <= window[1]):
        images = images.to(_device_of(model, images.device))
        return tta_probs(model, images, options.tta, options.scales, options.merge, out_size)
    return torch.stack(
        [
            sliding_probs(
                model,
                image,
                window,
                options.overlap,
                options.sw_batch_size,
                options.tta,
                options.scales,
                options.merge,
                out_size,
            )
            for image in images
        ]
    )


class InferenceModel(nn.Module):
    """`module` run through `infer_probs`, returning log-probabilities: a drop-in for code
    that expects logits (their argmax and softmax are those of the merged prediction).

    The wrapped model sits in `.module`, the DDP convention that `model_divisor` unwraps,
    so inputs are padded exactly as for the plain model. Code that resizes this output
    (validate, to the mask) resizes log-probabilities where predict resizes probabilities;
    their argmax can differ on a few boundary pixels.
    """

    def __init__(self, module: nn.Module, options: InferConfig):
        super().__init__()
        self.module = module
        self.options = options

    def forward(self, images: Tensor) -> Tensor:
        probs = infer_probs(self.module, images, self.options)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
