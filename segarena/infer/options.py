"""Inference options: the run's config.infer with command-line values on top."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from segarena.config import InferConfig
from segarena.errors import UserError


def infer_options(base: InferConfig, overrides: dict[str, Any] | None) -> InferConfig:
    """`base` with the given (non-None) values of `overrides`, validated."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return InferConfig.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        lines = [f"--{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise UserError("invalid inference options\n  " + "\n  ".join(lines)) from None


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    """`0.75,1.0,1.25` -> [0.75, 1.0, 1.25]; None stays None."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        expected = "expected comma-separated numbers, e.g. 0.75,1,1.25"
        raise UserError(f"{flag} {text!r}: {expected}") from None


def parse_size(text: str | None, flag: str) -> tuple[int, int] | None:
    """`256` -> (256, 256), `512,768` -> (512, 768) as (height, width); None stays None."""
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers) < 1:
        raise UserError(f"{flag} {text!r}: expected N or H,W in pixels, e.g. 256 or 512,768")
    return (numbers[0], numbers[-1])


def cli_overrides(
    *,
    tta: str | None = None,
    scales: str | None = None,
    merge: str | None = None,
    window: str | None = None,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
) -> dict[str, Any]:
    """The config.infer overrides that command-line strings give (None = keep the run's)."""
    return {
        "tta": tta,
        "scales": parse_floats(scales, "--scales"),
        "merge": merge,
        "window": parse_size(window, "--window"),
        "overlap": overlap,
        "sw_batch_size": sw_batch_size,
    }
