"""Config sections of the model and its training, augmentation, records and inference."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from segarena.config.data import Strict


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
    name: str = "cosine"  # a schedule of segarena.train.optim.SCHEDULERS
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-6, ge=0)
    poly_power: float = 0.9
    step_epochs: int = Field(30, ge=1)  # step: decay every N epochs
    decay_rate: float = 0.1  # step and plateau
    patience: int = Field(3, ge=0)  # plateau: validations without improvement


class SamplerConfig(Strict):
    """Which training images each epoch draws (segarena.data.sampling)."""

    name: str = "uniform"  # a sampler of segarena.data.sampling.SAMPLERS
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


DEFAULT_EPOCHS = 30


class TrainConfig(Strict):
    # epochs, or budget_min: minutes of wall clock (validation included) that segarena fits
    # the epoch count and the lr schedule to, from its measured speed; one of the two
    epochs: int | None = Field(None, ge=1)  # null -> 30 without budget_min
    budget_min: float | None = Field(None, gt=0)
    # the global batch: with several processes (devices) each loads batch_size / processes
    batch_size: int = Field(8, ge=1)
    accumulate: int = Field(1, ge=1)  # gradient accumulation steps
    grad_clip: float | None = Field(None, gt=0)  # max gradient norm
    # auto: the fastest for this model on this machine (segarena.train.precision), written
    # into the run's config.yaml as the precision it chose
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "32-true"
    accelerator: str = "auto"
    devices: int | str = 1  # processes per node (GPUs, or CPU processes over gloo)
    # auto: one process, or DDP for several devices; ddp: DistributedDataParallel always;
    # ddp_find_unused_parameters_true: DDP for a model with parameters no forward pass uses
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
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

    @model_validator(mode="before")
    @classmethod
    def _epochs_or_budget(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        epochs, budget = raw.get("epochs"), raw.get("budget_min")
        if epochs is not None and budget is not None:
            raise ValueError(
                f"train.epochs={epochs} and train.budget_min={budget} are exclusive: "
                "budget_min chooses the epochs to fit the minutes; set the other one to null "
                "(e.g. --set train.epochs=null)"
            )
        return {**raw, "epochs": DEFAULT_EPOCHS} if epochs is None and budget is None else raw

    @model_validator(mode="after")
    def _swa_within_training(self) -> TrainConfig:
        if self.swa is not None and self.epochs is not None and self.swa.start_epoch > self.epochs:
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
    """Where runs are recorded: the runs folder and the MLflow store (segarena.records.team)."""

    out: str = "runs"
    mlflow: bool = True
    # default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db; http(s)://host:port is
    # a team's tracking server (segarena server)
    tracking_uri: str | None = None
    user: str | None = None  # who runs it, recorded with every run; default $USER
    require_server: bool = False  # an unreachable server is an error, not a local fallback
    # the data's fingerprint: file sizes and mtimes ("stat"), or file contents ("hash",
    # slower; equal across teammates' copies of the data)
    fingerprint_data: Literal["stat", "hash"] = "stat"


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
