"""Test-time augmentation: flips, rot90 and multi-scale, merged into one probability map.

Views
    Each view is an element of the dihedral group D4: an optional horizontal flip followed
    by k quarter turns (`torch.rot90`, k = 0..3). The presets are `none` (identity),
    `hflip`, `vflip` (identity + that flip) and `d4` (all 8). A view's prediction is mapped
    back by the inverse transform before merging.

Batching
    All views of one scale that give the same input shape go through the model in one
    forward pass of N x views images. On a square input that is every view; on a
    non-square input the four views that swap height and width (rot90, rot270, transpose,
    antitranspose) form a second forward pass at (W, H): no padding, so the model never
    sees made-up borders. Peak memory grows with the number of views.

Scales
    Each scale resizes the input (bilinear) and is a separate forward pass, since sizes
    differ; its logits are resized back to the input size before merging.

Output size
    The merged probabilities are resized (bilinear) to `out_size`: probabilities, not
    logits or class ids, as contest rules ask for masks predicted at another size.

Merge
    `mean` averages the views' softmax probabilities, `gmean` takes their normalised
    geometric mean (softmax of the mean log-probability), `logits` is the softmax of the
    mean logits. With one view all three give softmax(logits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segarena.errors import BadOption, UserError
from segarena.model.build import forward_logits

# name -> (hflip first?, quarter turns k): x -> rot90(hflip(x), k)
VIEWS: dict[str, tuple[bool, int]] = {
    "identity": (False, 0),
    "rot90": (False, 1),
    "rot180": (False, 2),
    "rot270": (False, 3),
    "hflip": (True, 0),
    "transpose": (True, 1),
    "vflip": (True, 2),
    "antitranspose": (True, 3),
}
PRESETS: dict[str, list[str]] = {
    "none": ["identity"],
    "hflip": ["identity", "hflip"],
    "vflip": ["identity", "vflip"],
    "d4": list(VIEWS),
}
MERGES = ("mean", "gmean", "logits")


def view_names(tta: str | Sequence[str]) -> list[str]:
    """The view names of a preset (`none`, `hflip`, `vflip`, `d4`) or of a list of views."""
    if isinstance(tta, str):
        if tta not in PRESETS:
            raise BadOption("tta", f"{tta!r}: expected one of {', '.join(PRESETS)}")
        return PRESETS[tta]
    unknown = [name for name in tta if name not in VIEWS]
    if unknown or not tta:
        raise UserError(f"tta views {list(tta)}: expected a non-empty list of {', '.join(VIEWS)}")
    return list(tta)


def apply_view(x: Tensor, name: str) -> Tensor:
    """`x` [..., H, W] as the view `name` sees it."""
    flip, turns = VIEWS[name]
    x = x.flip(-1) if flip else x
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def invert_view(y: Tensor, name: str) -> Tensor:
    """Map a prediction made on view `name` back onto the original image grid."""
    flip, turns = VIEWS[name]
    y = torch.rot90(y, -turns, dims=(-2, -1)) if turns else y
    return y.flip(-1) if flip else y


def _merge_space(logits: Tensor, merge: str) -> Tensor:
    """What is summed over the views for each merge rule."""
    if merge == "mean":
        return logits.softmax(1)
    if merge == "gmean":
        return logits.log_softmax(1)
    return logits


def _finish(total: Tensor, count: int, merge: str) -> Tensor:
    mean = total / count
    return mean if merge == "mean" else mean.softmax(1)


def tta_probs(
    model: nn.Module,
    images: Tensor,
    tta: str | Sequence[str] = "none",
    scales: Sequence[float] = (1.0,),
    merge: str = "mean",
    *,
    out_size: tuple[int, int] | None = None,
) -> Tensor:
    """Merged class probabilities [N,C,*out_size] (float32) of the TTA views of `images`.

    `images` [N,3,H,W] are normalised float images on the model's device; `out_size`
    defaults to (H, W). Runs under the caller's grad mode and the model's train/eval mode
    (call it in `torch.inference_mode()` with `model.eval()`).
    """
    if merge not in MERGES:
        raise BadOption("merge", f"{merge!r}: expected one of {', '.join(MERGES)}")
    total, count = None, 0
    for logits in view_logits(model, images, view_names(tta), scales):
        part = _merge_space(logits, merge)
        # clone: `part` may be a view of the model output; never sum into that in place
        total = part.clone() if total is None else total.add_(part)
        count += 1
    probs = _finish(total, count, merge)
    if out_size is not None and tuple(out_size) != tuple(images.shape[-2:]):
        probs = F.interpolate(probs, tuple(out_size), mode="bilinear", align_corners=False)
    return probs


def view_logits(
    model: nn.Module, images: Tensor, names: list[str], scales: Sequence[float]
) -> Iterator[Tensor]:
    """Float32 logits [N,C,H,W] of each view and scale, mapped back to the image grid."""
    size = tuple(images.shape[-2:])
    for scale in scales:
        scaled = _rescale(images, scale)
        for group in _shape_groups(names, scaled.shape[-2:]):
            batch = torch.cat([apply_view(scaled, name) for name in group])
            logits = forward_logits(model, batch).float()
            for name, chunk in zip(group, logits.split(len(images))):
                chunk = invert_view(chunk, name)
                if tuple(chunk.shape[-2:]) != size:
                    chunk = F.interpolate(chunk, size, mode="bilinear", align_corners=False)
                yield chunk


def _rescale(images: Tensor, scale: float) -> Tensor:
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def _shape_groups(names: list[str], size: torch.Size) -> list[list[str]]:
    """Views that can share a forward pass: all of them on a square input, else split by
    whether they swap height and width."""
    if size[0] == size[1]:
        return [names]
    keep = [n for n in names if VIEWS[n][1] % 2 == 0]
    swap = [n for n in names if VIEWS[n][1] % 2 == 1]
    return [group for group in (keep, swap) if group]
