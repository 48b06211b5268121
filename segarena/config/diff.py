"""Configs as dotted paths, what changed between two, and the settings that do not change
what a run learns.

A resolved config (`Config.model_dump(mode="json")`) is a nested dict; its flat form maps
dotted paths (`optimizer.lr`) to values. MLflow stores a run's params flat, `compare` and
`ablate` diff configs flat, and `records.fingerprint` hashes a config without the
settings below.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Settings that never change what a run learns: where its records go and the name of its
# experiment. A diff in them is not "a change" (compare, ablate) and the fingerprint leaves
# them out. data.root is not one of them: another data.root may hold other data, and
# compare and ablate do not look at the data (ablate's arms pair it as "unpaired"). The
# fingerprint alone drops data.root too, because it fingerprints the data itself, by
# paths relative to data.root (records.fingerprint.config_part).
NOT_LEARNED = ("experiment", "records")
MISSING = "(absent)"


@dataclass(frozen=True)
class Change:
    key: str  # dotted path, e.g. "optimizer.lr"
    old: Any
    new: Any


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted paths of a nested dict; lists are one value (loss.terms is one setting), and
    an empty dict has no paths (kwargs {} -> {a: 1} is the one change kwargs.a)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def under(key: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted path `key` is one of `prefixes` or lies inside one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def without(config: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A copy of nested dict `config` without the dotted paths `keys` (and what is under
    them); the rest keeps its nesting."""
    keys = tuple(keys)
    kept: dict[str, Any] = {}
    for key, value in config.items():
        if key in keys:
            continue
        inner = tuple(k[len(key) + 1 :] for k in keys if k.startswith(key + "."))
        kept[key] = without(value, inner) if inner and isinstance(value, dict) else value
    return kept


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    """The keys whose value differs between configs `a` and `b`, sorted by key."""
    # hand-written: flattening two dicts and comparing keys is a few lines, where a
    # diff library (deepdiff) would add a dependency and report list items one by one
    flat_a, flat_b = flatten(a), flatten(b)
    return [
        Change(key, flat_a.get(key, MISSING), flat_b.get(key, MISSING))
        for key in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(key, MISSING) != flat_b.get(key, MISSING)
    ]


def settings_changed(changes: list[Change]) -> list[str]:
    """The changed keys that can change what a run learns (NOT_LEARNED left out)."""
    return [c.key for c in changes if not under(c.key, NOT_LEARNED)]
