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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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


class TilesConfig(Strict):
    """Train on tiles cut from large images at native resolution (segarena.data.tiles)."""

    size: int = Field(ge=16)  # tile height and width, in pixels
    stride: int | None = Field(None, ge=1)  # between sliding windows; None = size - 2 * margin
    mode: Literal["random", "sliding"] = "random"
    background_keep_p: float = Field(1.0, ge=0.0, le=1.0)  # keep rate of background-only tiles
    margin: int = Field(0, ge=0)  # border pixels set to ignore_index: their context is cut

    @model_validator(mode="after")
    def _centres_cover(self) -> TilesConfig:
        centre = self.size - 2 * self.margin
        if centre < 1:
            raise ValueError(
                f"data.tiles.margin={self.margin} leaves no trainable centre in tiles of "
                f"size {self.size}; expected margin < size / 2"
            )
        if self.stride is not None and self.stride > centre:
            raise ValueError(
                f"data.tiles.stride={self.stride} skips pixels: tile centres are "
                f"{centre} px (size - 2 * margin), so expected stride <= {centre}"
            )
        return self

    @property
    def step(self) -> int:
        """The sliding-window stride in pixels (stride, or centres that just touch)."""
        return self.stride if self.stride is not None else self.size - 2 * self.margin


class CleanseConfig(Strict):
    """Train on labels cleansed by a label audit (`segarena audit`; segarena.cleanse).
    Training images only: validation masks are never cleansed."""

    audit: str  # the audit's output folder (${VAR} expanded; relative to the working dir)
    # ignore: flagged pixels -> ignore_index; relabel: flagged pixels -> the model's class
    # where its probability >= relabel_confidence, else ignore_index; drop: leave out the
    # drop_top worst images of the audit's issues.csv
    action: Literal["ignore", "relabel", "drop"] = "ignore"
    drop_top: int | None = Field(None, ge=1)
    relabel_confidence: float = Field(0.9, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _drop_count(self) -> CleanseConfig:
        if (self.action == "drop") != (self.drop_top is not None):
            raise ValueError(
                f"data.cleanse: action={self.action} with drop_top={self.drop_top}; expected "
                "drop_top (a number of images >= 1) with action drop, and only with it"
            )
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
    tiles: TilesConfig | None = None  # train on tiles of large images; validation stays whole
    cleanse: CleanseConfig | None = None  # training labels cleansed by an audit
    # folders written by `segarena pseudo` (${VAR} expanded; relative to the working dir):
    # their images join every fold's training set, never validation (segarena.pseudo)
    pseudo: list[str] = Field(default_factory=list)

    @field_validator("pseudo", mode="before")
    @classmethod
    def _one_folder_or_many(cls, value: Any) -> Any:
        if value is None:  # --set data.pseudo= (or null): no pseudo-labels
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tiles_at_native_size(self) -> DataConfig:
        if self.tiles is not None and self.image_size is not None:
            raise ValueError(
                f"data.image_size={list(self.image_size)} and data.tiles are both set: tiles "
                "are cut at native resolution and validation runs on whole native images, so "
                "expected data.image_size: null (downscale the image files beforehand, or use "
                "model.downconv, to train at a lower resolution)"
            )
        return self

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
    downconv: int = Field(1, ge=1, le=8)  # k: fold k x k pixels into channels; 1 = off


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


class SamplerConfig(Strict):
    """Which training images each epoch draws (segarena.data.sampling)."""

    name: Literal["uniform", "class_balanced"] = "uniform"
    # class_balanced: image weight = max over its classes of (1 / share of images with it)^power
    power: float = Field(0.5, ge=0.0, le=2.0)


class EmaConfig(Strict):
    """An exponential moving average of the weights (timm ModelEmaV3), updated after every
    optimizer update; validation, best.ckpt and ema.ckpt then hold the averaged weights."""

    decay: float = Field(0.999, ge=0.0, lt=1.0)  # ema = decay * ema + (1 - decay) * weights
    # timm's warmup: decay = min(decay, 1 - (1 + updates) ** -2/3), so that a short run's
    # EMA follows the weights early instead of staying near the random start
    warmup: bool = False


class SwaConfig(Strict):
    """Stochastic weight averaging (torch.optim.swa_utils): from epoch `start_epoch` (counted
    from 1) SWALR sets the lr and each epoch's final weights join the average -> swa.ckpt."""

    start_epoch: int = Field(ge=1)  # the first averaged epoch; <= train.epochs
    lr: float = Field(1e-4, gt=0)  # the lr SWALR anneals to
    anneal_epochs: int = Field(1, ge=0)  # epochs after start_epoch to reach `lr`; 0 = at once
    anneal_strategy: Literal["cos", "linear"] = "cos"


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
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    ema: EmaConfig | None = None  # null = off
    swa: SwaConfig | None = None  # null = off
    save_top_k: int = Field(1, ge=1)  # k >= 2 also keeps fold_<k>/top/epoch_<e>.ckpt (k best)

    @model_validator(mode="after")
    def _swa_within_training(self) -> TrainConfig:
        if self.swa is not None and self.swa.start_epoch > self.epochs:
            raise ValueError(
                f"train.swa.start_epoch={self.swa.start_epoch} is after the last epoch: "
                f"expected 1..train.epochs={self.epochs} (the first epoch averaged into swa.ckpt)"
            )
        return self


class TransformSpec(Strict):
    name: str  # an Albumentations transform class name
    params: dict[str, Any] = Field(default_factory=dict)


class MixingConfig(Strict):
    """Batch-level mixing on the device (segarena.data.mixing). A batch gets at most one
    method: each `*_p` is the share of batches that get it, so together they are <= 1."""

    mixup_p: float = Field(0.0, ge=0.0, le=1.0)
    mixup_alpha: float = Field(0.4, gt=0.0)  # image weight lam ~ Beta(alpha, alpha)
    cutmix_p: float = Field(0.0, ge=0.0, le=1.0)
    cutmix_alpha: float = Field(1.0, gt=0.0)  # box covers 1 - lam, lam ~ Beta(alpha, alpha)
    snapmix_p: float = Field(0.0, ge=0.0, le=1.0)  # loss-guided cutmix: one more forward pass
    snapmix_alpha: float = Field(1.0, gt=0.0)  # box size as cutmix_alpha
    copy_paste_p: float = Field(0.0, ge=0.0, le=1.0)
    copy_paste_max_objects: int = Field(3, ge=1)  # pasted into each image: 1 to this many
    # class draw weight (1 / pixel share of the class in the batch) ** power; 0 = uniform
    copy_paste_power: float = Field(1.0, ge=0.0, le=2.0)
    copy_paste_class_weights: list[float] | None = None  # one per class, replaces power
    # larger objects (often background or stuff) would cover the target, not add to it
    copy_paste_max_area: float = Field(0.25, gt=0.0, le=1.0)  # share of the image

    @model_validator(mode="after")
    def _at_most_one_per_batch(self) -> MixingConfig:
        total = self.mixup_p + self.cutmix_p + self.snapmix_p + self.copy_paste_p
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"augment.mixing: mixup_p + cutmix_p + snapmix_p + copy_paste_p = {total:g}; "
                "a batch gets at most one method, so expected a sum <= 1"
            )
        weights = self.copy_paste_class_weights
        if weights is not None and (min(weights, default=0.0) < 0 or sum(weights) <= 0):
            raise ValueError(
                f"augment.mixing.copy_paste_class_weights={weights}: expected weights >= 0, "
                "one per class, at least one of them > 0"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether any method can fire (otherwise no mixer is built at all)."""
        return self.mixup_p + self.cutmix_p + self.snapmix_p + self.copy_paste_p > 0


class AugmentConfig(Strict):
    # segarena.data.augment.PRESETS: transforms run before `train`; "none" = only `train`
    preset: Literal["none", "light", "medium", "heavy"] = "none"
    # no canonical "up" (aerial, microscopy): presets add VerticalFlip and RandomRotate90;
    # needs square training images
    rotate90: bool = False
    train: list[TransformSpec] = Field(default_factory=list)
    val: list[TransformSpec] = Field(default_factory=list)
    mixing: MixingConfig = Field(default_factory=MixingConfig)


class RecordsConfig(Strict):
    out: str = "runs"
    mlflow: bool = True
    tracking_uri: str | None = None  # default: sqlite:///<out>/mlflow.db


class InferConfig(Strict):
    """How `evaluate` and `predict` run the model (segarena.infer); CLI options override it."""

    tta: Literal["none", "hflip", "vflip", "d4"] = "none"
    scales: list[float] = Field(default_factory=lambda: [1.0], min_length=1)  # input resize
    merge: Literal["mean", "gmean", "logits"] = "mean"  # mean of probs, geometric, of logits
    window: tuple[int, int] | None = None  # sliding window (height, width); null = whole image
    overlap: float = Field(0.5, ge=0.0, lt=1.0)  # share of a window its neighbour also covers
    sw_batch_size: int = Field(4, ge=1)  # windows per forward pass (times the TTA views)

    @model_validator(mode="after")
    def _positive_sizes(self) -> InferConfig:
        if any(not 0 < s <= 8 for s in self.scales):
            raise ValueError(f"infer.scales={self.scales}: expected scales in (0, 8]")
        if self.window is not None and min(self.window) < 1:
            raise ValueError(f"infer.window={list(self.window)}: expected sizes >= 1")
        return self

    @property
    def is_plain(self) -> bool:
        """One forward pass of the whole image: what training-time validation does."""
        return self.tta == "none" and self.scales == [1.0] and self.window is None


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
    infer: InferConfig = Field(default_factory=InferConfig)


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
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))


def apply_overrides(raw: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """A config dict with `--set key.sub=value` pairs applied (values parsed as YAML)."""
    return _merge(raw, parse_overrides(pairs))


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
