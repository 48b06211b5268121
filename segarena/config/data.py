"""Config sections of the data: sources, tiles, cleansing, pseudo-labels, folds.

The base `Strict` model (unknown keys are errors, values frozen) and `${VAR}` expansion
live here too; `segarena.config` assembles the sections and loads YAML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand `${NAME}` and `${NAME:-default}` (shell style, which os.path.expandvars lacks)."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


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
    """Train on labels cleansed by a label audit (`segarena audit`; segarena.data.cleanse).
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
    # loader processes; auto: 0 for cached images trained on a CPU (they would take cores
    # from the model's threads; segarena.data.dataset.loader_workers), else 2
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    # a training image (or mask) that cannot be read mid-run, after the start-up scan:
    # stop (exit 2, naming it) or skip it with a warning, counted in summary.json; a
    # validation image always stops (segarena.data.bad_images)
    on_bad_image: Literal["stop", "skip"] = "stop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    tiles: TilesConfig | None = None  # train on tiles of large images; validation stays whole
    cleanse: CleanseConfig | None = None  # training labels cleansed by an audit
    # folders written by `segarena pseudo` (${VAR} expanded; relative to the working dir):
    # their images join every fold's training set, never validation (segarena.labels.pseudo)
    pseudo: list[str] = Field(default_factory=list)

    @field_validator("image_size", mode="before")
    @classmethod
    def _height_and_width(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != 2:
            raise ValueError("expected two numbers [height, width], e.g. [512, 512], or null")
        return value

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

    @model_validator(mode="after")
    def _class_names_are_distinct(self) -> DataConfig:
        repeated = sorted({name for name in self.classes if self.classes.count(name) > 1})
        if repeated:  # COCO categories and every per-class score are matched by name
            raise ValueError(
                f"data.classes names {repeated} more than once; expected one distinct name "
                "per class id"
            )
        return self

    @model_validator(mode="after")
    def _ignore_index_hides_no_class(self) -> DataConfig:
        if 0 <= self.ignore_index < len(self.classes):
            hidden = self.classes[self.ignore_index]
            raise ValueError(
                f"data.ignore_index={self.ignore_index} is the id of class {hidden!r}, which "
                f"would be left out of the loss and the scores; expected a label outside "
                f"0..{len(self.classes) - 1} (e.g. 255, or {len(self.classes)} for a void label)"
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
