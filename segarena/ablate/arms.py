"""Ablation arms: parsed from `--arm`, `--infer-arm` and `--arms-file` (checked against
the config in segarena.ablate.plan).

A training arm is the baseline config plus only the overrides it names (the same
`key=value` strings as `--set`); an inference arm is the baseline's checkpoints run with
other inference options (`tta`, `scales`, `merge`, `window`, `overlap`, `sw_batch_size`)
or another checkpoint (`checkpoint=ema|swa|last|top`).

`--arms-file` holds arms outside the experiment config, which stays a plain training config
that `segarena train` reads as it is (its schema is strict):

    ema: {train.ema.decay: 0.99}              # name -> settings (dotted keys, or nested)
    cutmix:
      augment: {mixing: {cutmix_p: 0.5, cutmix_alpha: 1.0}}
    infer:                                    # reserved: the inference arms
      hflip: {tta: hflip}
      multiscale: {scales: [0.75, 1.0, 1.25], merge: gmean}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segarena.config.diff import flatten
from segarena.errors import UserError
from segarena.infer.options import cli_overrides
from segarena.util.text import did_you_mean

BASELINE = "baseline"
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
PAIR_START = re.compile(r"^\s*[A-Za-z_][\w.-]*\s*=")
INFER_KEYS = ("tta", "scales", "merge", "window", "overlap", "sw_batch_size", "checkpoint")


@dataclass(frozen=True)
class Arm:
    """One arm: a name, its kind ("train" or "infer") and its `key=value` pairs."""

    name: str
    kind: str
    pairs: tuple[str, ...]
    unpaired: tuple[str, ...] = ()  # changed keys that break pairing (--allow-unpaired)

    @property
    def change(self) -> str:
        return ", ".join(self.pairs)

    def infer_settings(self) -> tuple[str, dict[str, Any]]:
        """(checkpoint, inference overrides) of an inference arm."""
        given = dict(pair.split("=", 1) for pair in self.pairs)
        checkpoint = given.pop("checkpoint", "best")
        try:
            numbers = {
                "overlap": float(given.pop("overlap")) if "overlap" in given else None,
                "sw_batch_size": int(given.pop("sw_batch_size"))
                if "sw_batch_size" in given
                else None,
            }
            return checkpoint, cli_overrides(**given, **numbers)
        except (ValueError, UserError) as exc:
            raise UserError(f"arm {self.name!r}: {exc}") from None


def split_pairs(text: str) -> list[str]:
    """`a=1,b.c=x,y` -> ["a=1", "b.c=x,y"]: a comma starts a new pair only where a
    `key=` follows it and no bracket is open, so `scales=0.75,1.0` and `[32,16]` stay whole."""
    pairs: list[str] = []
    for piece in text.split(","):
        if pairs and (_open(pairs[-1]) or not PAIR_START.match(piece)):
            pairs[-1] += "," + piece
        else:
            pairs.append(piece)
    return [p.strip() for p in pairs]


def _open(text: str) -> bool:
    return text.count("[") + text.count("{") > text.count("]") + text.count("}")


def parse_arm(text: str, kind: str) -> Arm:
    """`NAME=key=value[,key=value...]` of --arm (kind "train") or --infer-arm ("infer")."""
    flag = "--arm" if kind == "train" else "--infer-arm"
    name, sep, rest = text.partition("=")
    if not sep or not rest.strip() or not name.strip():
        raise UserError(f"{flag} {text!r}: expected NAME=key=value[,key=value...]")
    return new_arm(name.strip(), kind, split_pairs(rest), flag)


def new_arm(name: str, kind: str, pairs: list[str], where: str) -> Arm:
    """An Arm whose name and pairs are well formed (not yet checked against the config)."""
    if not NAME.match(name) or name in (BASELINE, "infer"):
        raise UserError(
            f"{where}: arm name {name!r}: expected letters, digits, '_', '.' or '-', "
            f"and not {BASELINE!r} or 'infer'"
        )
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"arm {name!r}: {pair!r}: expected key=value")
        if kind == "infer" and key.strip() not in INFER_KEYS:
            hint = did_you_mean(key.strip(), list(INFER_KEYS))
            raise UserError(
                f"arm {name!r}: {key.strip()!r} is not an inference option{hint} "
                f"(expected {', '.join(INFER_KEYS)})"
            )
    return Arm(name, kind, tuple(pair.strip() for pair in pairs))


def read_arms_file(path: Path) -> list[Arm]:
    """The arms of an --arms-file (see the module docstring)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--arms-file {path}: not a readable YAML file: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--arms-file {path}: expected a mapping of arm name -> settings")
    infer = raw.pop("infer", None) or {}
    arms = []
    for kind, entries in (("train", raw), ("infer", infer)):
        if not isinstance(entries, dict):
            raise UserError(f"--arms-file {path}: 'infer' must map arm names to options")
        for name, settings in entries.items():
            if not isinstance(settings, dict) or not settings:
                raise UserError(
                    f"arm {name!r} in {path}: expected a mapping of settings, e.g. "
                    "{train.ema.decay: 0.99}"
                )
            pairs = [f"{key}={_as_text(value, kind)}" for key, value in flatten(settings).items()]
            arms.append(new_arm(str(name), kind, pairs, f"--arms-file {path}"))
    return arms


def _as_text(value: Any, kind: str) -> str:
    """A YAML value as override text: JSON (YAML reads it back to the same value), or for
    inference options the command-line form (`0.75,1.0`)."""
    if kind == "infer" and isinstance(value, list):
        return ",".join(str(v) for v in value)
    if kind == "infer":
        return str(value)
    return json.dumps(value)
