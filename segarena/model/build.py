"""Models: SMP architectures from config, safe local encoder weights, padded inference.

Every architecture and encoder comes from segmentation-models-pytorch (`smp.create_model`);
this module only checks names (with a did-you-mean), loads a local weights file into the
encoder without unpickling arbitrary objects, and pads inputs to the size the model needs.
"""

from __future__ import annotations

import inspect

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segarena.config import ModelConfig
from segarena.errors import UserError
from segarena.model.downconv import DownconvNet
from segarena.model.hub import hub_access
from segarena.model.weights import goes_to_timm, load_encoder_weights, smp_weights, weights_file
from segarena.util.text import did_you_mean

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
    hub_weights = None if local_file is not None else smp_weights(cfg.encoder, cfg.encoder_weights)
    try:
        with hub_access(cfg.encoder, cfg.encoder_weights if hub_weights else None):
            model = smp.create_model(
                arch,
                encoder_name=cfg.encoder,
                encoder_weights=hub_weights,
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
    return model if cfg.downconv == 1 else DownconvNet(model, cfg.downconv)


def _check_arch(arch: str) -> str:
    """SMP matches architectures case-insensitively; suggest the spelling SMP documents."""
    if arch.lower() in smp.MODEL_ARCHITECTURES_MAPPING:
        return arch
    known = [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]
    hint = did_you_mean(arch, known, n=3, fold_case=True)
    raise UserError(f"model.arch={arch!r}: unknown architecture{hint} (known: {', '.join(known)})")


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
    raise UserError(
        f"model.encoder={encoder!r}: unknown {what}{did_you_mean(encoder, pool, n=3)} "
        "(SMP encoders: smp.encoders.get_encoder_names(); any timm model as "
        "'tu-<name>', see timm.list_models())"
    )


def _check_kwargs(arch: str, encoder: str, kwargs: dict) -> None:
    """Reject kwargs the arch does not take: SMP hands extras to the encoder, and its own
    (non-timm) encoders drop them silently, so a typo would change nothing without a word."""
    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()].__init__).parameters
    own = [p for p in params if p not in ("self", "kwargs")]
    for key in kwargs:
        if key in _SET_BY_CONFIG:
            raise UserError(f"model.kwargs.{key}: set it with {_SET_BY_CONFIG[key]} instead")
        if key not in own and not goes_to_timm(encoder):
            raise UserError(
                f"model.kwargs.{key}: {arch} does not take it{did_you_mean(key, own, n=2)} "
                f"(it takes: {', '.join(p for p in own if p not in _SET_BY_CONFIG)}; other "
                f"keys reach only timm encoders 'tu-<name>')"
            )


_SET_BY_CONFIG = {
    "encoder_name": "model.encoder",
    "encoder_weights": "model.encoder_weights",
    "in_channels": "the data's channel count",
    "classes": "data.classes",
}


def model_divisor(model: nn.Module) -> int:
    """The factor the input height and width must be a multiple of: the encoder's output stride
    (times k for model.downconv k, whose net runs at 1/k of the input size).

    SMP checks this in `check_input_shape` for most archs. Unet waives the check (its decoder
    resizes features to the skip connections), but padding to the stride keeps those feature
    grids aligned, so it is padded too. Models without an SMP encoder get 32.
    """
    model = unwrap(model)
    factor = 1
    if isinstance(model, DownconvNet):
        model, factor = model.net, model.factor
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    return factor * (int(stride) if stride else 32)


def forward_logits(
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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under Fabric / DDP / torch.compile wrappers (their state keys differ)."""
    for attr in ("_forward_module", "module", "_orig_mod"):
        while hasattr(model, attr) and isinstance(getattr(model, attr), torch.nn.Module):
            model = getattr(model, attr)
    return model
