"""data.pseudo: folders written by `segarena pseudo` (segarena.labels.pseudo) as training data.

Their images join every fold's training set after data.cleanse, never folds.csv or a
validation set, and never --debug's validation subset. Each folder is checked before the run
directory is made: pseudo.json present, the same classes and ignore_index as the config,
every mask there, and no image that is also a labelled image (it could be a validation
image, and its model-made mask would leak into training). run.json and summary.json record
each folder; summary.json also says whether the round beat its source run (`pseudo_gain`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from segarena.config import DataConfig, expand_env
from segarena.data.readers import Sample
from segarena.errors import UserError
from segarena.util.text import examples

MANIFEST = "pseudo.json"
PAIRS = "pairs.txt"
MASKS = "masks"


def pseudo_folders(data: DataConfig) -> list[Path]:
    return [Path(expand_env(folder)) for folder in data.pseudo]


def read_manifest(folder: Path, data: DataConfig) -> dict[str, Any]:
    """A pseudo folder's pseudo.json, checked against the config's classes and ignore_index."""
    key = f"data.pseudo {folder}"
    if not folder.is_dir():
        raise UserError(
            f"{key}: folder not found{'' if folder.is_absolute() else f' in {Path.cwd()}'}; "
            "expected a folder written by `segarena pseudo`"
        )
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{key}: no {MANIFEST}; expected a folder written by `segarena pseudo`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{key}: unreadable {MANIFEST} ({exc}); write it again") from None
    wanted = ("images", "classes", "ignore_index")
    lacking = [k for k in wanted if k not in manifest] if isinstance(manifest, dict) else wanted
    if lacking:
        raise UserError(f"{key}: {MANIFEST} lacks {list(lacking)}; write it again")
    if manifest["classes"] != list(data.classes) or manifest["ignore_index"] != data.ignore_index:
        raise UserError(
            f"{key}: pseudo-labels of classes {manifest['classes']} with ignore_index "
            f"{manifest['ignore_index']}, but data.classes is {list(data.classes)} with "
            f"ignore_index {data.ignore_index}; pseudo-label with runs of this dataset"
        )
    return manifest


def pseudo_samples(
    data: DataConfig, labelled: list[Sample], limit: int | None = None, seed: int = 0
) -> list[Sample]:
    """The training samples of data.pseudo (images with no kept pixel left out: they would
    add time, not signal); `limit` keeps a seeded subset of that many (--debug).

    UserError naming the folder for a missing folder or pseudo.json, other labels, a missing
    mask, an image listed twice, or an image that is also a labelled one (it could be a
    validation image: its model-made mask would leak into training)."""
    labelled_paths = {s.image_path.resolve(): s.id for s in labelled}
    samples: list[Sample] = []
    seen: dict[Path, Path] = {}
    for folder in pseudo_folders(data):
        manifest = read_manifest(folder, data)
        key = f"data.pseudo {folder}"
        clash, missing, twice = [], [], []
        for record in _checked_records(manifest["images"], key):
            image = Path(record["image"]).resolve()
            if image in labelled_paths:
                clash.append(f"{image} (labelled sample {labelled_paths[image]!r})")
            if image in seen:
                twice.append(f"{image} (also in {seen[image]})")
            seen[image] = folder
            mask = folder / record["mask"]
            missing += [str(p) for p in (image, mask) if not p.is_file()]
            if record["kept"] > 0:
                samples.append(
                    Sample(
                        id=f"pseudo:{folder.name}/{record['id']}",
                        image_path=image,
                        mask_path=mask,
                        height=record["height"],
                        width=record["width"],
                        group=f"pseudo:{folder.name}",
                        classes=tuple(record["classes"]),
                    )
                )
        if clash:
            raise UserError(
                f"{key}: {len(clash)} pseudo-labelled image(s) are labelled images of this "
                f"dataset: {examples(clash)}; pseudo-label only images outside data.sources"
            )
        for problem, items in (("missing", missing), ("listed twice", twice)):
            if items:
                raise UserError(f"{key}: {len(items)} file(s) {problem}: {examples(items)}")
        _check_sizes(key, manifest["images"], labelled, data)
    if limit is not None and len(samples) > limit:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), limit, replace=False))]
    return samples


RECORD_FIELDS = {"id": str, "image": str, "mask": str, "height": int, "width": int,
                 "kept": int, "classes": list}  # fmt: skip


def _checked_records(records: Any, key: str) -> list[dict[str, Any]]:
    """pseudo.json's image records, each with every field `pseudo_samples` reads."""

    def malformed(record: Any) -> bool:
        fields = RECORD_FIELDS.items()
        return not isinstance(record, dict) or any(
            not isinstance(record.get(k), t) for k, t in fields
        )

    bad = [r for r in records if malformed(r)] if isinstance(records, list) else [records]
    if bad:
        raise UserError(
            f"{key}: {len(bad)} malformed image record(s) in {MANIFEST}, e.g. {bad[0]!r}; "
            f"expected {', '.join(RECORD_FIELDS)} in each; write it again"
        )
    return records


def _check_sizes(key: str, records: list[dict], labelled: list[Sample], data: DataConfig) -> None:
    """Native-size training stacks whole images into batches: one size for all of them."""
    sizes = {(s.height, s.width) for s in labelled}
    if data.image_size is not None or data.tiles is not None or len(sizes) != 1:
        return
    (size,) = sizes
    other = [
        f"{r['id']} ({r['width']}x{r['height']})"
        for r in records
        if (r["height"], r["width"]) != size
    ]
    if other:
        raise UserError(
            f"{key}: {len(other)} image(s) differ in size from the labelled images "
            f"({size[1]}x{size[0]}): {examples(other)}; training at native size batches "
            "whole images, so set data.image_size (or data.tiles)"
        )


def pseudo_records(data: DataConfig, labelled: list[Sample]) -> list[dict[str, Any]]:
    """What run.json and summary.json record of each data.pseudo folder (checks them all)."""
    pseudo_samples(data, labelled)
    records = []
    for folder in pseudo_folders(data):
        manifest = read_manifest(folder, data)
        records.append(
            {
                "folder": str(folder.resolve()),
                "source_runs": manifest.get("source_runs", []),
                "threshold": manifest.get("threshold"),
                "image_count": len(manifest["images"]),
                "kept_share": manifest.get("kept_share"),
            }
        )
    return records
