"""Encoder weights: which file a model.encoder_weights setting selects, and loading it.

A setting is null (random init), a hub weight set SMP or timm knows ("imagenet"), the
packaged ImageNet file of a lite encoder (segarena.model.pretrained), or a local
`.safetensors`/`.pth`/`.pt`/`.bin` file loaded into the encoder by tensor name.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from segarena.config import ModelConfig
from segarena.errors import UserError
from segarena.model.downconv import DownconvNet, widen_stem
from segarena.model.pretrained import (
    PACKAGED_SET,
    is_lukemelas_layout,
    lite_name,
    lukemelas_to_timm,
    packaged_file,
)
from segarena.util.files import file_sha256

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
MIN_MATCHED = 0.5  # fewer matched encoder tensors than this means the file is for another model


def weights_record(cfg: ModelConfig) -> dict[str, str | None]:
    """What `cfg.encoder_weights` loads, for env.json and run.json: the setting, and the file
    with its sha256 when it is a local or packaged file (hub sets are named by the setting)."""
    path = weights_file(cfg.encoder, cfg.encoder_weights)
    return {
        "encoder": cfg.encoder,
        "encoder_weights": cfg.encoder_weights,
        "file": None if path is None else str(path.resolve()),
        "sha256": None if path is None else file_sha256(path),
    }


def goes_to_timm(encoder: str) -> bool:
    return encoder.startswith("tu-") or smp.encoders.is_equivalent_to_timm_universal(encoder)


def weights_file(encoder: str, weights: str | None) -> Path | None:
    """The local file that `weights` selects: the packaged ImageNet file for a lite encoder's
    "imagenet" (segarena.model.pretrained), a file path, or None for null and hub weight sets."""
    if weights == PACKAGED_SET and lite_name(encoder) is not None:
        return packaged_file(encoder)
    if weights is None or weights in _weight_names(encoder):
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"model.encoder_weights={weights!r}: no such file, and not a weight set of encoder "
            f"{encoder!r} (known: {', '.join(_weight_names(encoder)) or 'none'}; or null)"
            + (TIMM_TAG_HINT if goes_to_timm(encoder) else "")
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UserError(
            f"model.encoder_weights={weights!r}: expected a "
            f"{'/'.join(WEIGHT_SUFFIXES)} file, found suffix {path.suffix!r}"
        )
    return path


TIMM_TAG_HINT = "; timm encoders take their pretrained tag in the name, e.g. tu-resnet50.a1_in1k"


def _weight_names(encoder: str) -> list[str]:
    if encoder in smp.encoders.encoders:
        return list(smp.encoders.encoders[encoder]["pretrained_settings"])
    # timm encoders pick their pretrained tag in the name (tu-resnet50.a1_in1k)
    name = encoder.removeprefix("tu-").removeprefix("timm-")
    return ["imagenet"] if timm.is_model_pretrained(name) else []


def smp_weights(encoder: str, weights: str | None) -> str | bool | None:
    # For timm encoders SMP wants True (and warns on a name): the tag lives in the encoder name.
    if weights is not None and goes_to_timm(encoder):
        return True
    return weights


def load_encoder_weights(model: nn.Module, path: str | Path, stem_factor: int = 1) -> int:
    """Load a local weights file into `model.encoder` and return how many tensors it loaded.

    The file may hold a bare encoder state dict, a full-model state dict (`encoder.` keys),
    or a checkpoint dict with the state dict under `state_dict` or `model`. Tensors are
    matched by name; UserError when under half of the encoder's tensors match, or when a
    matched name has another shape (a file made for a different encoder). With
    `stem_factor` k > 1 (model.downconv), the file's first conv is widened to k*k times its
    input channels by timm's `adapt_input_conv`, as SMP and timm do for pretrained weights.
    """
    path = Path(path)
    encoder = (model.net if isinstance(model, DownconvNet) else model).encoder
    own = encoder.state_dict()
    state = read_state_dict(path)
    if is_lukemelas_layout(state):  # EfficientNet(-Lite) files of lukemelas' layout
        state = lukemelas_to_timm(state, list(own))
    state = _encoder_keys(state, list(own))
    if stem_factor > 1:
        state = {k: widen_stem(v, own.get(k), stem_factor) for k, v in state.items()}
    common = [k for k in own if k in state]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in common
        if state[k].shape != own[k].shape
    ]
    if wrong:
        raise UserError(
            f"{path}: {len(wrong)} encoder tensors have the wrong shape, e.g. "
            f"{'; '.join(wrong[:3])}"
        )
    if len(common) < MIN_MATCHED * len(own):
        missing = [k for k in own if k not in state][:3]
        extra = [k for k in state if k not in own][:3]
        raise UserError(
            f"{path}: only {len(common)} of the encoder's {len(own)} tensors are in the file; "
            f"it seems made for another encoder (model keys e.g. {missing}, file keys e.g. {extra})"
        )
    encoder.load_state_dict({k: state[k] for k in common}, strict=False)
    log.debug("loaded %d of %d encoder tensors from %s", len(common), len(own), path)
    return len(common)


def load_tensors(path: Path, kind: str) -> Any:
    """torch.load on CPU with weights_only=True: tensors and plain values only, no code runs.

    UserError naming `path` and the expected `kind` of file when it holds other pickled
    objects (refused unloaded) or cannot be read; torch's own advice is never repeated.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc):  # not a refusal: the bytes are not a pickle
            raise UserError(f"{path}: not a readable {kind} ({_first_line(exc)})") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"a pickled {found[1]}" if found else "pickled objects other than tensors"
        raise UserError(f"{path}: refused, it holds {what}; expected a {kind}") from None
    except Exception as exc:  # arbitrary bytes fail in many ways; say which, in one line
        raise UserError(f"{path}: not a readable {kind} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = text.splitlines()[0].split(". ")[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors from `.safetensors` or a `.pth/.pt/.bin` state dict; never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as exc:
            raise UserError(f"{path}: not a readable safetensors file: {exc}") from None
    obj = load_tensors(path, "torch weights file (save model.state_dict())")
    for key in ("state_dict", "model"):  # timm / Lightning style checkpoints
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return dict(obj)


def _encoder_keys(state: dict[str, Tensor], own_keys: list[str]) -> dict[str, Tensor]:
    """Rename the file's keys to the encoder's own: drop wrappers, keep only encoder entries."""
    for wrapper in ("module.", "_orig_mod."):  # DDP and torch.compile prefixes
        if state and all(k.startswith(wrapper) for k in state):
            state = {k.removeprefix(wrapper): v for k, v in state.items()}
    # a full model saves its encoder as `encoder.*`, or `model.encoder.*` inside a Lightning module
    prefixes = Counter(
        k.split("encoder.")[0] + "encoder."
        for k in state
        if k.startswith("encoder.") or ".encoder." in k
    )
    if prefixes:
        prefix = prefixes.most_common(1)[0][0]
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    # a plain timm checkpoint for a tu- encoder, which keeps its timm model under `model.`
    if all(k.startswith("model.") for k in own_keys) and not any(
        k.startswith("model.") for k in state
    ):
        state = {"model." + k: v for k, v in state.items()}
    return state
