"""Validated experiment configuration: pydantic models, YAML loading and `--set` overrides.

Every hyperparameter lives here. Unknown keys are errors with a did-you-mean (timm's
YAML defaults silently swallow typos; we do not).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segarena.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(Strict):
    """One labelled data source. Exactly one kind: mask folder, pairs file or COCO json."""

    images: str | None = None  # image folder, relative to data.root
    masks: str | None = None  # mask folder matched to images by stem
    mask_suffix: str = ""  # mask stem = image stem + suffix (e.g. "_L", "_mask")
    pairs: str | None = None  # text file, one "image_path mask_path" per line
    coco: str | None = None  # COCO json; file_name is relative to `images`
    role: Literal["train", "val"] = "train"  # used by split.method = predefined

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        kinds = [self.masks is not None, self.pairs is not None, self.coco is not None]
        if sum(kinds) != 1:
            raise ValueError("a source needs exactly one of `masks`, `pairs` or `coco`")
        if (self.masks is not None or self.coco is not None) and self.images is None:
            raise ValueError("`images` (the image folder) is required with `masks` or `coco`")
        return self


class DataConfig(Strict):
    root: str = "."  # ${VAR:-default} is expanded; relative paths are from the working dir
    sources: list[Source] = Field(min_length=1)
    classes: list[str] = Field(min_length=2)
    ignore_index: int = 255
    image_size: tuple[int, int] | None = None  # (height, width) the model sees; None = native
    cache: bool = False  # decode every image once into shared memory (uint8)
    num_workers: int = Field(2, ge=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def root_path(self) -> Path:
        return Path(expand_env(self.root))


class SplitConfig(Strict):
    method: Literal["holdout", "kfold", "stratified", "group", "stratified_group", "predefined"] = (
        "kfold"
    )
    n_folds: int = Field(5, ge=2)
    val_ratio: float = Field(0.2, gt=0.0, lt=1.0)  # holdout only
    seed: int = 42
    group_regex: str | None = None  # on the image stem; group = first capture group or match
    group_csv: str | None = None  # csv with columns `id` and `group_column`
    group_column: str = "group"

    @model_validator(mode="after")
    def _groups_given(self) -> SplitConfig:
        if self.method in ("group", "stratified_group") and not (
            self.group_regex or self.group_csv
        ):
            raise ValueError(
                f"split.method={self.method} needs split.group_regex or split.group_csv"
            )
        if self.group_regex is not None:
            try:
                re.compile(self.group_regex)
            except re.error as exc:
                msg = f"split.group_regex {self.group_regex!r} is not a regex: {exc}"
                raise ValueError(msg) from None
        return self

    @property
    def fold_count(self) -> int:
        return 1 if self.method in ("holdout", "predefined") else self.n_folds


class ModelConfig(Strict):
    arch: str = "Unet"
    encoder: str = "efficientnet-b0"
    encoder_weights: str | None = None  # null, "imagenet" (downloads) or a local file path
    kwargs: dict[str, Any] = Field(default_factory=dict)  # passed on to smp.create_model
    # BatchNorm momentum for every BN layer; null keeps the encoder's own. SMP's
    # efficientnet-* use 0.01 (TF's 0.99), too slow for running stats trained from scratch.
    bn_momentum: float | None = Field(None, gt=0, le=1)


class LossTerm(Strict):
    name: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)


class LossConfig(Strict):
    terms: list[LossTerm] = Field(default_factory=lambda: [LossTerm(name="ce")], min_length=1)


class OptimizerConfig(Strict):
    name: str = "adamw"  # any timm optimizer name
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)  # e.g. momentum, betas


class SchedulerConfig(Strict):
    name: Literal["cosine", "poly", "step", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    poly_power: float = 0.9
    step_epochs: int = Field(30, ge=1)  # step: decay every N epochs
    decay_rate: float = 0.1  # step and plateau
    patience: int = Field(3, ge=0)  # plateau: validations without improvement


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    accumulate: int = Field(1, ge=1)  # gradient accumulation steps
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1
    channels_last: bool = False
    val_every: int = Field(1, ge=1)
    early_stopping: int | None = Field(None, ge=1)  # patience, in validations
    seed: int = 42
    debug_samples: int = Field(16, ge=2)  # --debug: this many train images (and half for val)
    oof_dtype: Literal["float16", "uint8"] = "uint8"
    oof_scale: float = Field(0.5, gt=0, le=1)  # out-of-fold probabilities stored downscaled


class TransformSpec(Strict):
    name: str  # an Albumentations transform class name
    params: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(Strict):
    train: list[TransformSpec] = Field(default_factory=list)
    val: list[TransformSpec] = Field(default_factory=list)


class RecordsConfig(Strict):
    out: str = "runs"
    mlflow: bool = True
    tracking_uri: str | None = None  # default: sqlite:///<out>/mlflow.db


class Config(Strict):
    experiment: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    data: DataConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    records: RecordsConfig = Field(default_factory=RecordsConfig)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand `${NAME}` and `${NAME:-default}` (shell style, which os.path.expandvars lacks)."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn `a.b=c` strings into a nested dict; values are parsed as YAML so types follow."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key.sub=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {pair!r}: {part!r} is set twice with different shapes")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `--set` overrides and validate; UserError on any problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top, found {raw!r}")
    return config_from_dict(_merge(raw, parse_overrides(overrides or [])), source=str(path))


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain dict into a Config, turning pydantic errors into one readable UserError."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise UserError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = _fields_at(err["loc"][:-1])
        hint = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{loc}: unknown key{did_you_mean} (known: {', '.join(sorted(known))})"
    return f"{loc}: {err['msg']} (found {err.get('input')!r})"


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found by walking `loc` from Config (list indexes skipped)."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_config(config: Config) -> str:
    """The resolved config as YAML (what a run directory stores and `predict` reloads)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
