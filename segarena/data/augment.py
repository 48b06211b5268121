"""Albumentations pipelines built from config.

Train: Resize(data.image_size) -> augment.train transforms -> pad to the model's divisor.
Val: Resize(data.image_size) -> augment.val transforms, applied to the image only: the
mask stays at its original resolution and predictions are resized back to it.
"""

from __future__ import annotations

import difflib
from typing import Any

import albumentations as A
import cv2

from segarena.config import DataConfig, TransformSpec
from segarena.errors import UserError

# Every SMP encoder in common use has output stride 32; odd sizes are padded up to it.
PAD_DIVISOR = 32


def transform_names() -> list[str]:
    """Names of all Albumentations transforms a config may use."""
    return sorted(
        name
        for name in dir(A)
        if isinstance(getattr(A, name), type) and issubclass(getattr(A, name), A.BasicTransform)
    )


def create_transform(spec: TransformSpec, where: str) -> A.BasicTransform:
    """One Albumentations transform from its config entry; UserError names `where` on failure."""
    cls: Any = getattr(A, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        hint = difflib.get_close_matches(spec.name, transform_names(), n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise UserError(
            f"{where}.name: unknown Albumentations transform {spec.name!r}{did_you_mean}"
        )
    try:
        return cls(**spec.params)
    except Exception as exc:  # Albumentations validates params with pydantic or TypeError
        raise UserError(f"{where}.params: {spec.name}({spec.params}) failed: {exc}") from None


def build_transforms(
    data: DataConfig, specs: list[TransformSpec], train: bool, section: str
) -> A.Compose:
    """The train or val pipeline; `section` names the config list for error messages."""
    steps: list[A.BasicTransform] = []
    if data.image_size is not None:
        height, width = data.image_size
        steps.append(A.Resize(height, width, interpolation=cv2.INTER_LINEAR))
    steps += [create_transform(spec, f"{section}[{i}]") for i, spec in enumerate(specs)]
    if train:
        # Padded pixels are not data: they get ignore_index so the loss skips them.
        steps.append(
            A.PadIfNeeded(
                min_height=None,
                min_width=None,
                pad_height_divisor=PAD_DIVISOR,
                pad_width_divisor=PAD_DIVISOR,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=data.ignore_index,
            )
        )
    return A.Compose(steps)
