"""`segarena init`: look at a dataset folder and write a commented config that runs as
written (nnU-Net's dataset fingerprint, made for competitions).

    found = find_data(DATA)            sources, classes, void value, the test split left out
    read_samples(...)                  the training scan: bad data stops here, nothing written
    choose_split / choose_size         groups, strata, input size for the machine and budget
    config_text(...)                   the YAML, validated, then moved into place
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from segarena.config import DataConfig, config_from_dict, load_config
from segarena.data.readers import read_samples
from segarena.errors import UserError
from segarena.init.detect import find_data
from segarena.init.draft import (
    CACHE_BYTES,
    choose_size,
    choose_split,
    config_text,
    fold_lines,
    scaled,
)
from segarena.util.files import write_text_atomic

PROBE_LONG_SIDE = 512


def init_config(
    data: Path,
    out: Path,
    *,
    coco: Path | None = None,
    budget_min: float | None = None,
    name: str | None = None,
    device: str = "auto",
    force: bool = False,
    command: str = "segarena init",
) -> list[str]:
    """Write the config for `data` to `out`; returns what to show (notes and the folds).
    UserError, with nothing written, for bad data or an existing `out` without `force`."""
    import torch

    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"--out {out}: already exists; give --force to replace it")
    found = find_data(Path(data), None if coco is None else Path(coco))
    data_cfg = DataConfig(root=str(found.root.resolve()), sources=found.sources,
                          classes=found.classes, ignore_index=found.ignore_index)  # fmt: skip
    samples = read_samples(data_cfg)  # the scan `segarena train` runs: bad data stops here
    split, split_notes = choose_split(samples, len(found.classes))
    gpu = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    lite = _packaged_weights()
    name = name or _experiment_name(Path(data))
    schedule = {"budget_min": budget_min} if budget_min else {"epochs": 30}
    cache = sum(s.height * s.width * 4 for s in samples) <= CACHE_BYTES

    def text(size, why) -> str:
        return config_text(found, name, split, size, why, schedule, gpu, cache, lite,
                           [*found.notes, *split_notes], command)  # fmt: skip

    epoch_s = None
    if budget_min:
        epoch_s = _epoch_seconds(text, samples, split, device)
    size, why_size = choose_size(samples, gpu, budget_min, epoch_s)
    final = text(size, why_size)
    _check_loads(final)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, final)
    return [*found.notes, *split_notes, f"image_size {size}: {why_size}",
            *fold_lines(samples, split, found.classes)]  # fmt: skip


def _epoch_seconds(text, samples, split: dict, device: str):
    """epoch_s(size): one fold's training epoch and its share of validation, in seconds,
    from one speed probe of the draft's model and compete's cost model per image."""
    from segarena.compete.plan import Costs, DataFacts
    from segarena.compete.probe import measure_speed

    native = (samples[0].height, samples[0].width)
    reference = scaled(native, min(PROBE_LONG_SIDE, max(native)))
    config = config_from_dict(yaml.safe_load(text(reference, "")), source="segarena init")
    speed = measure_speed(config, tuple(reference), device, samples)
    facts = DataFacts(images=len(samples), size=tuple(reference), folds=split["n_folds"],
                      test_images=0)  # fmt: skip
    costs = Costs(facts, speed)

    def epoch_s(size: list[int]) -> float:  # validating every 2nd epoch
        return costs.n_train * costs.t_train(size) + costs.n_val * costs.t_infer(size) / 2

    return epoch_s


def _check_loads(text: str) -> None:
    """The draft must load as segarena train will load it (a failure here is a bug)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "draft.yaml"
        path.write_text(text, encoding="utf-8")
        load_config(path)


def _packaged_weights() -> bool:
    from segarena.model.pretrained import packaged_file

    try:
        packaged_file("tu-efficientnet_lite0")
    except UserError:
        return False
    return True


def _experiment_name(data: Path) -> str:
    name = data.resolve().name.lower()
    if name in ("train", "data", "dataset", "images"):
        name = data.resolve().parent.name.lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "experiment"
