"""Space-to-depth input stem ("downconv", model.downconv = k) around an SMP model.

segarena.model.build.build_model builds the SMP net with 3*k*k input channels and classes*k*k
outputs and wraps it in DownconvNet; model_divisor multiplies the net's stride by k.
"""

from __future__ import annotations

import torch.nn.functional as F
from timm.models import adapt_input_conv
from torch import Tensor, nn


class DownconvNet(nn.Module):
    """Run `net` on the image folded k x k into channels, at 1/k of its height and width.

    Stem: F.pixel_unshuffle turns [N,3,H,W] into [N,3k²,H/k,W/k] with no pixel lost, so the
    net costs about 1/k² of a full-size run yet still sees every pixel (a downscaled image
    averages them away). The channels are put in sub-pixel-major order, so channel i holds
    colour i % 3: the order in which SMP and timm repeat pretrained RGB stem weights, which
    makes a pretrained stem start out seeing the k x k average of each colour.

    Head: `net` predicts classes*k*k channels and F.pixel_shuffle lays them out as k x k
    full-resolution pixels (sub-pixel convolution, Shi et al. 2016), so SMP's own last conv
    is the learned upsampler at no extra cost. Bilinear upsampling of 1/k-size logits would
    be free too, but it cannot draw a boundary finer than k pixels: the detail kept by folding.

    The input must be divisible by k times the net's own stride
    (segarena.model.build.model_divisor).
    State keys are the net's under `net.`; k = 1 builds no wrapper, so plain models keep theirs.
    """

    def __init__(self, net: nn.Module, factor: int):
        super().__init__()
        self.net = net
        self.factor = factor

    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Logits at the input's size; SMP's aux class logits (aux_params) pass through."""
        k = self.factor
        folded = F.pixel_unshuffle(images, k)  # channel c*k*k + s: colour c, sub-pixel s
        n, channels, height, width = folded.shape
        folded = folded.view(n, -1, k * k, height, width).transpose(1, 2)
        out = self.net(folded.reshape(n, channels, height, width))
        if isinstance(out, tuple):
            return (F.pixel_shuffle(out[0], k), *out[1:])
        return F.pixel_shuffle(out, k)


def widen_stem(tensor: Tensor, target: Tensor | None, factor: int) -> Tensor:
    """A stem conv weight [O, C, kh, kw] from a weights file, widened by timm's
    adapt_input_conv to the [O, C*k*k, kh, kw] of a DownconvNet net (k = `factor`); any
    other tensor is returned unchanged, so a real mismatch is still reported by the caller."""
    if tensor.ndim != 4 or target is None or target.ndim != 4:
        return tensor
    channels = tensor.shape[1]
    if tuple(target.shape) != (tensor.shape[0], channels * factor**2, *tensor.shape[2:]):
        return tensor
    return adapt_input_conv(target.shape[1], tensor, base_chans=channels)
