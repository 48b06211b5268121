"""Pseudo-labels: an ensemble's confident predictions on unlabelled images, as training data.

`segarena pseudo RUN_DIR... --images DIR --out DIR` (or `--coco test.json`: the images the
json lists, in its order) writes one folder:

    masks/<image id>.png  uint8, at the image's own size: the ensemble's argmax where its top
                          probability reaches --threshold (compared in float32), the runs'
                          ignore_index elsewhere
    pairs.txt             "image mask" per line, absolute paths: usable as a `pairs:` data
                          source from any data.root and working directory (not with spaces
                          in the paths: the pairs reader splits lines on whitespace)
    pseudo.json           source runs, checkpoint, inference options, threshold, classes,
                          ignore_index, versions, and per image its size, classes and kept share

It is built in a hidden sibling folder and renamed into place, so a killed command never
leaves half a folder. `data.pseudo: [DIR, ...]` then appends its images to every fold's
training set, never to folds.csv or a validation set (segarena.data.pseudo_source); masks are
found relative to the folder, so a moved folder still trains.

Note: the pseudo-labels of a k-fold ensemble come from models that trained on every fold's
labelled images, the next run's validation images among them. A run on them thus learns a
little of those images through the pool's labels, and `pseudo_gain` is slightly optimistic
against a k-fold source run; against a predefined (single) split it is exact.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from segarena.data.pseudo_source import MANIFEST, MASKS, PAIRS
from segarena.errors import UserError
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.infer.images import (
    ImageFiles,
    as_is,
    coco_file_names,
    list_images,
    same_size_batches,
)
from segarena.infer.options import infer_options
from segarena.records.tracking import environment
from segarena.run_dir.layout import RunDir
from segarena.util.files import atomic_output
from segarena.util.text import examples


def pseudo_mask(probs: Tensor, threshold: float, ignore_index: int) -> np.ndarray:
    """HxW uint8: the argmax of [C,H,W] probabilities where the top one >= threshold, else
    ignore_index."""
    top, label = probs.max(0)
    label[top < threshold] = ignore_index
    return label.numpy().astype(np.uint8)


def write_pseudo_labels(
    spec: EnsembleSpec,
    images: Path,
    out: Path,
    *,
    threshold: float = 0.9,
    workers: int = 0,
    force: bool = False,
    coco: Path | None = None,
) -> dict[str, Any]:
    """Pseudo-label every image under `images` with the ensemble `spec` names into the
    folder `out` (see the module docstring); returns what pseudo.json holds. With `coco`
    (a contest's test.json) only the images it lists, in its order; its file_names are
    relative to `images` (the CLI's default: the json's folder).

    An existing non-empty `out` is an error unless `force`, which replaces only an earlier
    pseudo-label folder (one with pseudo.json).
    """
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability in [0, 1]")
    out = Path(out).resolve()
    spec = replace(spec, run_dirs=tuple(Path(r).resolve() for r in spec.run_dirs))
    run_dirs = list(spec.run_dirs)
    _check_out(out, Path(images), run_dirs, force)
    classes, ignore_index = _labels_of(run_dirs)
    items = list_images(Path(images), coco_file_names(coco) if coco is not None else None)
    names = _mask_names([image_id for image_id, _ in items])
    ensemble = Ensemble.from_spec(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    # an earlier folder at `out` (allowed by --force) is replaced whole, only on success
    with atomic_output(out) as tmp:
        tmp.mkdir()
        loader = DataLoader(
            ImageFiles(items), batch_size=None, num_workers=workers, collate_fn=as_is
        )
        records = []
        path_and_name = {image_id: (path, name) for (image_id, path), name in zip(items, names)}
        for batch in same_size_batches(loader, spec.batch_size, lambda item: item[1]):
            ids, batch_images = zip(*batch)
            probs = ensemble.batch_probs(batch_images, batch_images[0].shape[:2])
            for image_id, image_probs in zip(ids, probs):
                path, name = path_and_name[image_id]
                mask = pseudo_mask(image_probs, threshold, ignore_index)
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(tmp / name)
                records.append(_record(image_id, path, name, mask, ignore_index))
        manifest = {
            **_sources(spec, ensemble, threshold),
            "classes": classes,
            "ignore_index": ignore_index,
            "image_count": len(records),
            "kept_share": _kept_share(records),
            "images_dir": str(Path(images).resolve()),
            "images": records,
        }
        lines = [f"{r['image']} {out / r['mask']}\n" for r in records]
        (tmp / PAIRS).write_text("# image mask (written by segarena pseudo)\n" + "".join(lines))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _sources(spec: EnsembleSpec, ensemble: Ensemble, threshold: float) -> dict[str, Any]:
    """What pseudo.json says of the models that made the labels, and how they ran."""
    env = environment(str(ensemble.device), 0)
    return {
        "source_runs": [str(r) for r in spec.run_dirs],
        "checkpoint": spec.checkpoint,
        "weights": list(spec.weights) if spec.weights is not None else None,
        "infer_overrides": {k: v for k, v in spec.overrides.items() if v is not None},
        "infer": {str(r): _options(r, spec.overrides) for r in spec.run_dirs},
        "threshold": threshold,
        "environment": {k: v for k, v in env.items() if k != "seed"},
    }


def _record(image_id: str, path: Path, name: str, mask: np.ndarray, ignore: int) -> dict:
    """What pseudo.json says of one image (data.pseudo builds its Sample from this)."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    return {
        "id": Path(image_id).with_suffix("").as_posix(),
        "image": str(path.resolve()),
        "mask": name,
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "kept": int((mask != ignore).sum()),
        "kept_share": float((mask != ignore).mean()),
        "classes": [int(c) for c in present if c != ignore],
    }


def _kept_share(records: list[dict]) -> float:
    pixels = sum(r["height"] * r["width"] for r in records)
    return sum(r["kept"] for r in records) / max(pixels, 1)


def _check_out(out: Path, images: Path, run_dirs: list[Path], force: bool) -> None:
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        if not force:
            raise UserError(
                f"--out {out}: exists and is not empty; choose another folder, or pass --force "
                "to replace an earlier pseudo-label folder"
            )
        if not (out / MANIFEST).is_file():
            raise UserError(
                f"--out {out}: not a pseudo-label folder (no {MANIFEST}); --force replaces "
                "only those, so choose another folder"
            )
    inside = [images.resolve(), *run_dirs]
    clash = [p for p in inside if out.is_relative_to(p) or p.is_relative_to(out)]
    if clash:
        raise UserError(
            f"--out {out}: overlaps {clash[0]}; write pseudo-labels to a folder of their own, "
            "outside --images and the run directories"
        )


def _labels_of(run_dirs: list[Path]) -> tuple[list[str], int]:
    """The runs' classes and their shared ignore_index, which a uint8 PNG must hold."""
    configs = [RunDir(r).config().data for r in run_dirs]
    ignore_index = configs[0].ignore_index
    for run_dir, data in zip(run_dirs, configs):
        if data.ignore_index != ignore_index:
            raise UserError(
                f"{run_dir}: ignore_index {data.ignore_index} differs from {run_dirs[0]}'s "
                f"{ignore_index}; pseudo-label with runs of one dataset"
            )
    num_classes = configs[0].num_classes
    if not num_classes <= ignore_index <= 255:
        raise UserError(
            f"{run_dirs[0]}: ignore_index {ignore_index} with {num_classes} classes; pseudo "
            f"masks are uint8 PNGs, so expected ignore_index in {num_classes}..255"
        )
    return list(configs[0].classes), ignore_index


def _mask_names(image_ids: list[str]) -> list[str]:
    names = [f"{MASKS}/{Path(i).with_suffix('.png').as_posix()}" for i in image_ids]
    seen: dict[str, str] = {}
    twice = []
    for image_id, name in zip(image_ids, names):
        if name in seen:
            twice.append(f"{seen[name]} and {image_id}")
        seen[name] = image_id
    if twice:
        raise UserError(
            f"--images: {len(twice)} pair(s) of images share a name up to the extension "
            f"({examples(twice)}); their masks would overwrite each other; rename them"
        )
    return names


def _options(run_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The inference options the run's members ran with (its config.infer, overridden)."""
    return infer_options(RunDir(run_dir).config().infer, overrides).model_dump(mode="json")
