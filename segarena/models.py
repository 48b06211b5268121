"""Models: SMP architectures from config, safe local encoder weights, padded inference.

Every architecture and encoder comes from segmentation-models-pytorch (`smp.create_model`);
this module only checks names (with a did-you-mean), loads a local weights file into the
encoder without unpickling arbitrary objects, and pads inputs to the size the model needs.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import pickle
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from segarena.config import ModelConfig
from segarena.downconv import SpaceToDepth, widen_stem
from segarena.errors import UserError
from segarena.hub import hub_access
from segarena.pretrained import (
    PACKAGED_SET,
    is_lukemelas_layout,
    lite_name,
    lukemelas_to_timm,
    packaged_file,
    sha256,
)

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
MIN_MATCHED = 0.5  # fewer matched encoder tensors than this means the file is for another model
# timm asserts without a message, most often when an encoder cannot dilate (HRNet, ViTs)
_BARE_ASSERT = (
    "the encoder refused a setting; e.g. timm's HRNet runs only at output stride 32, which "
    "DeepLabV3/DeepLabV3Plus (8 or 16) and PAN's default (16; set encoder_output_stride: 32) "
    "cannot use"
)


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Create the SMP model that `cfg` describes, with encoder weights as configured.

    `cfg.encoder_weights` is None (random init), a weight-set name SMP knows such as
    "imagenet" (SMP downloads it), or a local `.safetensors`/`.pth`/`.pt`/`.bin` file that
    is loaded into the encoder (see `load_encoder_weights`).
    """
    arch = _check_arch(cfg.arch)
    _check_encoder(cfg.encoder)
    _check_kwargs(arch, cfg.encoder, cfg.kwargs)
    local_file = weights_file(cfg.encoder, cfg.encoder_weights)
    smp_weights = None if local_file is not None else _smp_weights(cfg.encoder, cfg.encoder_weights)
    try:
        with hub_access(cfg.encoder, cfg.encoder_weights if smp_weights else None):
            model = smp.create_model(
                arch,
                encoder_name=cfg.encoder,
                encoder_weights=smp_weights,
                # downconv k: the net sees k*k pixels per input pixel, predicts k*k per output
                in_channels=in_channels * cfg.downconv**2,
                classes=num_classes * cfg.downconv**2,
                **cfg.kwargs,
            )
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        # SMP and timm reject impossible combinations (e.g. an encoder that cannot dilate
        # to DeepLabV3+'s output stride 16) with bare errors; say which config made them.
        why = str(exc) or _BARE_ASSERT
        raise UserError(
            f"model: SMP cannot build arch={cfg.arch!r} encoder={cfg.encoder!r} "
            f"kwargs={cfg.kwargs!r}: {type(exc).__name__}: {why}"
        ) from None
    if local_file is not None:
        load_encoder_weights(model, local_file, stem_factor=cfg.downconv)
    if cfg.bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.bn_momentum
    return model if cfg.downconv == 1 else SpaceToDepth(model, cfg.downconv)


def weights_record(cfg: ModelConfig) -> dict[str, str | None]:
    """What `cfg.encoder_weights` loads, for env.json and run.json: the setting, and the file
    with its sha256 when it is a local or packaged file (hub sets are named by the setting)."""
    path = weights_file(cfg.encoder, cfg.encoder_weights)
    return {
        "encoder": cfg.encoder,
        "encoder_weights": cfg.encoder_weights,
        "file": None if path is None else str(path.resolve()),
        "sha256": None if path is None else sha256(path),
    }


def _check_arch(arch: str) -> str:
    """SMP matches architectures case-insensitively; suggest the spelling SMP documents."""
    if arch.lower() in smp.MODEL_ARCHITECTURES_MAPPING:
        return arch
    known = [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]
    by_lower = {name.lower(): name for name in known}
    hints = [by_lower[m] for m in difflib.get_close_matches(arch.lower(), list(by_lower), n=3)]
    raise UserError(
        f"model.arch={arch!r}: unknown architecture{_did_you_mean(hints)} "
        f"(known: {', '.join(known)})"
    )


def _check_encoder(encoder: str) -> None:
    """Accept SMP's own encoders, `tu-<any timm model>` and SMP's deprecated `timm-` aliases."""
    if encoder in smp.encoders.get_encoder_names():
        return
    if encoder.startswith("tu-") and timm.is_model(encoder[3:]):
        return
    if smp.encoders.is_equivalent_to_timm_universal(encoder):
        return
    if encoder.startswith("tu-"):
        pool = ["tu-" + name for name in timm.list_models()]
        what = "timm model"
    else:
        pool = smp.encoders.get_encoder_names()
        what = "SMP encoder"
    hints = difflib.get_close_matches(encoder, pool, n=3)
    raise UserError(
        f"model.encoder={encoder!r}: unknown {what}{_did_you_mean(hints)} "
        "(SMP encoders: smp.encoders.get_encoder_names(); any timm model as "
        "'tu-<name>', see timm.list_models())"
    )


def _goes_to_timm(encoder: str) -> bool:
    return encoder.startswith("tu-") or smp.encoders.is_equivalent_to_timm_universal(encoder)


def _check_kwargs(arch: str, encoder: str, kwargs: dict) -> None:
    """Reject kwargs the arch does not take: SMP hands extras to the encoder, and its own
    (non-timm) encoders drop them silently, so a typo would change nothing without a word."""
    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()].__init__).parameters
    own = [p for p in params if p not in ("self", "kwargs")]
    for key in kwargs:
        if key in _SET_BY_CONFIG:
            raise UserError(f"model.kwargs.{key}: set it with {_SET_BY_CONFIG[key]} instead")
        if key not in own and not _goes_to_timm(encoder):
            hints = difflib.get_close_matches(key, own, n=2)
            raise UserError(
                f"model.kwargs.{key}: {arch} does not take it{_did_you_mean(hints)} "
                f"(it takes: {', '.join(p for p in own if p not in _SET_BY_CONFIG)}; other "
                f"keys reach only timm encoders 'tu-<name>')"
            )


_SET_BY_CONFIG = {
    "encoder_name": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "in_channels": "the data's channel count",
    "classes": "data.classes",
}


def _did_you_mean(hints: list[str]) -> str:
    return f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""


def weights_file(encoder: str, weights: str | None) -> Path | None:
    """The local file that `weights` selects: the packaged ImageNet file for a lite encoder's
    "imagenet" (segarena.pretrained), a file path, or None for null and hub weight sets."""
    if weights == PACKAGED_SET and lite_name(encoder) is not None:
        return packaged_file(encoder)
    if weights is None or weights in _weight_names(encoder):
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"model.encoder_weights={weights!r}: no such file, and not a weight set of encoder "
            f"{encoder!r} (known: {', '.join(_weight_names(encoder)) or 'none'}; or null)"
            + (TIMM_TAG_HINT if _goes_to_timm(encoder) else "")
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


def _smp_weights(encoder: str, weights: str | None) -> str | bool | None:
    # For timm encoders SMP wants True (and warns on a name): the tag lives in the encoder name.
    if weights is not None and _goes_to_timm(encoder):
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
    encoder = (model.net if isinstance(model, SpaceToDepth) else model).encoder
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
    log.info("loaded %d of %d encoder tensors from %s", len(common), len(own), path)
    return len(common)


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
    try:
        # weights_only=True unpickles tensors and plain containers only: no code runs
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: refused, the file holds objects other than tensors "
            f"(save model.state_dict() instead): {exc}"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise UserError(f"{path}: not a readable torch weights file: {exc}") from None
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


def model_divisor(model: nn.Module) -> int:
    """The factor the input height and width must be a multiple of: the encoder's output stride
    (times k for model.downconv k, whose net runs at 1/k of the input size).

    SMP checks this in `check_input_shape` for most archs. Unet waives the check (its decoder
    resizes features to the skip connections), but padding to the stride keeps those feature
    grids aligned, so it is padded too. Models without an SMP encoder get 32.
    """
    # unwrap Fabric/DDP (`.module`) and torch.compile (`._orig_mod`), nested either way round
    for attr in ("module", "_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    factor = 1
    if isinstance(model, SpaceToDepth):
        model, factor = model.net, model.factor
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    return factor * (int(stride) if stride else 32)


def predict_logits(
    model: nn.Module, images: Tensor, out_size: tuple[int, int] | None = None
) -> Tensor:
    """Logits [N,C,H,W] for `images` [N,3,h,w] of any size, resized to `out_size` if given.

    The batch is padded bottom/right to a multiple of `model_divisor` (reflect where the pad
    is smaller than the image, zeros otherwise), the padding is cropped off the output, and
    the logits are resized bilinearly to `out_size` so that scores are taken at the mask's
    original resolution. Grad mode and train/eval mode are left to the caller.
    """
    height, width = images.shape[-2:]
    divisor = model_divisor(model)
    pad_h, pad_w = -height % divisor, -width % divisor
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "constant"
        images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
    logits = model(images)
    if isinstance(logits, tuple):  # SMP with aux_params also returns class logits
        logits = logits[0]
    logits = logits[..., :height, :width]
    if out_size is not None and tuple(out_size) != (height, width):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits
