"""Validated experiment configuration: YAML loading, `--set` overrides and the did-you-mean.

Every hyperparameter lives in the sections of config_data (data, folds) and config_train
(model, training, augmentation, records, inference), re-exported here. Unknown keys are
errors with a did-you-mean (timm's YAML defaults silently swallow typos; we do not).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from segarena.config.data import (  # noqa: F401  (re-exported: segarena.config is the API)
    CleanseConfig,
    DataConfig,
    Source,
    SplitConfig,
    Strict,
    TilesConfig,
    expand_env,
)
from segarena.config.train import (  # noqa: F401
    AugmentConfig,
    EmaConfig,
    InferConfig,
    LossConfig,
    LossTerm,
    MixingConfig,
    ModelConfig,
    OptimizerConfig,
    RecordsConfig,
    SamplerConfig,
    SchedulerConfig,
    SwaConfig,
    TrainConfig,
    TransformSpec,
)
from segarena.errors import UserError
from segarena.util.text import did_you_mean


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
        node[parts[-1]] = _override_value(pair, raw)
    return out


def _override_value(pair: str, raw: str) -> Any:
    """The YAML value of one `--set key=value` (None when empty)."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(
            f"--set {pair!r}: the value is not valid YAML ({_yaml_problem(exc)})"
        ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what the YAML parser expected, and where."""
    why = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {why}" if mark else why


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path, overrides: list[str] | Mapping[str, Any] | None = None
) -> Config:
    """Read a YAML config, apply overrides and validate; UserError on any problem.

    `overrides` are `--set` pairs (["train.epochs=5"]) or a mapping ({"train.epochs": 5});
    either way each value is checked by the schema."""
    path = Path(path)
    if isinstance(overrides, Mapping):
        overrides = setting_pairs(overrides)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; expected a YAML config file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        msg = f"{path}: not UTF-8 text (byte {exc.start}); expected a YAML config file"
        raise UserError(msg) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top, found {raw!r}")
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))


def setting_pairs(settings: Mapping[str, Any]) -> list[str]:
    """{"train.epochs": 5} -> ["train.epochs=5"]: JSON is YAML, so each value keeps its type."""
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


def with_settings(config: Config, settings: Mapping[str, Any]) -> Config:
    """`config` with dotted keys set (as `--set` sets them), validated again."""
    pairs = setting_pairs(settings)
    raw = apply_overrides(config.model_dump(mode="json"), pairs)
    return config_from_dict(raw, source=", ".join(pairs))


# train.epochs and train.budget_min are exclusive: overriding one replaces the other
SCHEDULE_KEYS = ("epochs", "budget_min")


def apply_overrides(raw: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """A config dict with `--set key.sub=value` pairs applied (values parsed as YAML).

    `--set train.epochs=N` on a file with train.budget_min (or the other way round)
    switches the schedule: the file's other key is dropped, as a user asking for N epochs
    means.
    """
    extra = parse_overrides(pairs)
    given = [k for k in SCHEDULE_KEYS if extra.get("train", {}).get(k) is not None]
    if len(given) == 1 and isinstance(raw.get("train"), dict):
        other = SCHEDULE_KEYS[1 - SCHEDULE_KEYS.index(given[0])]
        if other not in extra["train"]:
            raw = {**raw, "train": {k: v for k, v in raw["train"].items() if k != other}}
    return _merge(raw, extra)


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
        hint = did_you_mean(str(err["loc"][-1]), known)
        return f"{loc}: unknown key{hint} (known: {', '.join(sorted(known))})"
    message = err["ctx"]["error"] if err["type"] == "value_error" else err["msg"]
    if isinstance(err.get("input"), dict):  # a whole section: the message names the values
        return f"{loc}: {message}"
    return f"{loc}: {message} (found {err.get('input')!r})"


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
