"""Albumentations pipelines built from config.

Train: Resize(data.image_size) -> augment.preset -> augment.train transforms -> pad to the
model's divisor.
Val: Resize(data.image_size) -> augment.val transforms, applied to the image only: the
mask stays at its original resolution and predictions are resized back to it.

Filled pixels are never a class. Every transform with a `fill_mask` parameter (Affine,
Rotate, PadIfNeeded, CoarseDropout, GridDropout, ...) fills the mask with data.ignore_index,
in the presets and in the user's own lists alike: a user transform whose params do not set
`fill_mask` gets fill_mask=data.ignore_index. Albumentations' own default is 0, a class
(for CoarseDropout and GridDropout it is None: the mask keeps the label of pixels whose
image content was dropped); set `fill_mask` explicitly (null included) to keep it.
Mask resampling stays nearest-neighbour (Albumentations' mask_interpolation default).

Presets (augment.preset), designed for segmentation, run after the Resize:

| preset | transforms |
| ------ | ---------- |
| none   | nothing: only augment.train |
| light  | HorizontalFlip |
| medium | HorizontalFlip; Affine (zoom 0.75-1.33, shift 10%, rotate 10 deg, p 0.7);
|        | ColorJitter (0.2, hue 0.02, p 0.5); CoarseDropout (1-4 holes of 5-15%, p 0.3) |
| heavy  | HorizontalFlip; RandomScale (1-2x, p 0.5) + CropNonEmptyMaskIfExists back to
|        | data.image_size (only when it is set); Affine (zoom 0.6-1.66, shift 20%, rotate
|        | 30 deg, shear 8 deg, p 0.8); ColorJitter (0.3, hue 0.05, p 0.7); GaussianBlur and
|        | GaussNoise (p 0.15 each); CoarseDropout (1-6 holes of 5-20%, p 0.5); GridDropout
|        | (ratio 0.3, p 0.2) |

augment.rotate90 (data without a canonical up, e.g. aerial or microscopy) adds VerticalFlip
and RandomRotate90 to every preset: with HorizontalFlip, all 8 right-angle orientations.
Hue shifts stay small because colour often names the class. Affine zooms are balanced
(as often in as out), and zooming out shows the border, which is ignored. The heavy crop
treats class 0 as background, as data.tiles does: it centres crops on other classes.
"""

from __future__ import annotations

import inspect
from typing import Any

import albumentations as A
import cv2

from segarena.config import DataConfig, TransformSpec
from segarena.errors import UserError
from segarena.util.text import did_you_mean

# Every SMP encoder in common use has output stride 32; odd sizes are padded up to it.
PAD_DIVISOR = 32


def transform_names() -> list[str]:
    """Names of all Albumentations transforms a config may use."""
    return sorted(
        name
        for name in dir(A)
        if isinstance(getattr(A, name), type) and issubclass(getattr(A, name), A.BasicTransform)
    )


def build_transform(
    spec: TransformSpec, where: str, ignore_index: int | None = None
) -> A.BasicTransform:
    """One Albumentations transform from its config entry; UserError names `where` on failure.

    With `ignore_index`, a transform taking `fill_mask` that `spec` leaves unset fills the
    mask with it (Albumentations would fill 0, a class)."""
    cls: Any = getattr(A, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        hint = did_you_mean(spec.name, transform_names())
        raise UserError(f"{where}.name: unknown Albumentations transform {spec.name!r}{hint}")
    known = inspect.signature(cls).parameters
    unknown = sorted(set(spec.params) - set(known))
    if unknown:  # Albumentations only warns, and then ignores them
        hint = did_you_mean(unknown[0], known)
        raise UserError(
            f"{where}.params: {spec.name} has no parameter(s) {unknown}{hint} "
            f"(known: {', '.join(known)})"
        )
    params = dict(spec.params)
    if ignore_index is not None and "fill_mask" in known:
        params.setdefault("fill_mask", ignore_index)
    try:
        return cls(**params)
    except Exception as exc:  # Albumentations validates params with pydantic or TypeError
        raise UserError(f"{where}.params: {spec.name}({spec.params}) failed: {exc}") from None


def build_transforms(
    data: DataConfig,
    specs: list[TransformSpec],
    train: bool,
    section: str,
    *,
    pad_divisor: int = PAD_DIVISOR,
    preset: str = "none",
    rotate90: bool = False,
) -> A.Compose:
    """The train or val pipeline; `section` names the config list for error messages.
    Train batches are padded to a multiple of `pad_divisor` (PAD_DIVISOR * model.downconv);
    train pipelines start with the `preset` transforms (augment.preset, augment.rotate90)."""
    steps: list[A.BasicTransform] = []
    if data.image_size is not None:
        height, width = data.image_size
        steps.append(A.Resize(height, width, interpolation=cv2.INTER_LINEAR))
    if train:
        steps += preset_transforms(data, preset, rotate90)
    steps += [
        build_transform(spec, f"{section}[{i}]", data.ignore_index) for i, spec in enumerate(specs)
    ]
    if train:
        # Padded pixels are not data: they get ignore_index so the loss skips them.
        steps.append(
            A.PadIfNeeded(
                min_height=None,
                min_width=None,
                pad_height_divisor=pad_divisor,
                pad_width_divisor=pad_divisor,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=data.ignore_index,
            )
        )
    return A.Compose(steps)


def preset_specs(data: DataConfig, preset: str, rotate90: bool) -> list[TransformSpec]:
    """The transforms of `augment.preset` (the table in this module's docstring)."""
    if preset == "none":
        return []
    specs = [TransformSpec(name="HorizontalFlip", params={"p": 0.5})]
    if rotate90:
        specs += [
            TransformSpec(name="VerticalFlip", params={"p": 0.5}),
            TransformSpec(name="RandomRotate90", params={"p": 1.0}),
        ]
    if preset == "light":
        return specs
    heavy = preset == "heavy"
    if heavy and data.image_size is not None:
        # Zoom in, then crop back to the training size around a non-background pixel.
        height, width = data.image_size
        specs += [
            TransformSpec(name="RandomScale", params={"scale_limit": (0.0, 1.0), "p": 0.5}),
            TransformSpec(
                name="CropNonEmptyMaskIfExists",
                params={"height": height, "width": width, "ignore_values": [data.ignore_index]},
            ),
        ]
    specs += [_affine(heavy), _color(heavy)]
    if heavy:
        specs += [
            TransformSpec(name="GaussianBlur", params={"sigma_limit": (0.3, 1.2), "p": 0.15}),
            TransformSpec(name="GaussNoise", params={"std_range": (0.01, 0.05), "p": 0.15}),
        ]
    holes = (0.05, 0.2) if heavy else (0.05, 0.15)
    specs.append(
        TransformSpec(
            name="CoarseDropout",
            params={
                "num_holes_range": (1, 6 if heavy else 4),
                "hole_height_range": holes,
                "hole_width_range": holes,
                "fill": 0,
                "fill_mask": data.ignore_index,
                "p": 0.5 if heavy else 0.3,
            },
        )
    )
    if heavy:
        specs.append(
            TransformSpec(
                name="GridDropout",
                params={"ratio": 0.3, "fill": 0, "fill_mask": data.ignore_index, "p": 0.2},
            )
        )
    return specs


def _affine(heavy: bool) -> TransformSpec:
    zoom, shift, angle = (1.66, 0.2, 30) if heavy else (1.33, 0.1, 10)
    return TransformSpec(
        name="Affine",
        params={
            "scale": (1 / zoom, zoom),
            "balanced_scale": True,
            "translate_percent": (-shift, shift),
            "rotate": (-angle, angle),
            "shear": (-8, 8) if heavy else 0,
            "border_mode": cv2.BORDER_CONSTANT,
            "fill": 0,  # fill_mask comes from build_transform: ignore_index
            "p": 0.8 if heavy else 0.7,
        },
    )


def _color(heavy: bool) -> TransformSpec:
    jitter, hue = (0.3, 0.05) if heavy else (0.2, 0.02)
    return TransformSpec(
        name="ColorJitter",
        params={
            "brightness": jitter,
            "contrast": jitter,
            "saturation": jitter,
            "hue": hue,
            "p": 0.7 if heavy else 0.5,
        },
    )


def preset_transforms(data: DataConfig, preset: str, rotate90: bool) -> list[A.BasicTransform]:
    """The `augment.preset` transforms, built; UserError when augment.rotate90 cannot apply."""
    if rotate90 and preset == "none":
        raise UserError(
            "augment.rotate90=true does nothing with augment.preset=none: expected a preset "
            "(light, medium or heavy), or RandomRotate90 in augment.train"
        )
    if rotate90 and data.image_size is not None and data.image_size[0] != data.image_size[1]:
        raise UserError(
            f"augment.rotate90=true with data.image_size={list(data.image_size)}: a quarter "
            "turn swaps height and width, so batches would not stack; expected a square "
            "data.image_size"
        )
    where = f"augment.preset={preset}"
    return [
        build_transform(s, where, data.ignore_index) for s in preset_specs(data, preset, rotate90)
    ]
