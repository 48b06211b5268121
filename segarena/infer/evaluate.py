"""`segarena evaluate`: score any inference choice before it is used on the test set.

Scoring runs through predict's own code (`Ensemble.predict`: each member's resize and
normalisation, TTA, sliding window, probabilities resized to the mask before the argmax),
so the number measured here is the number of the submission predict would write.

Two ways to score:
- on the runs' own folds (default): fold k's images are scored by the fold-k checkpoints
  of every run given. With several runs (which must share folds.csv) that is the honest
  out-of-fold score of their ensemble: no model sees an image it trained on.
- on a labelled folder (`images` + `masks`): every fold of every run, as predict would
  use them on the test set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segarena.config import Config, InferConfig, Source, SplitConfig
from segarena.data.folds import fold_indices
from segarena.data.readers import Sample, load_image, load_mask, read_samples
from segarena.errors import BadOption, UserError
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.infer.images import as_is, same_size_batches
from segarena.infer.tune_weights import ONE_SPLIT
from segarena.metrics import ConfusionMatrix, scores
from segarena.run_dir.folds import check_same_folds
from segarena.run_dir.layout import CONFIG, FOLDS, RUN, RunDir
from segarena.util.files import write_json_atomic

log = logging.getLogger(__name__)
SPLITS = ("val", "train", "all")


class LabelledImages(Dataset):
    """(raw HxWx3 uint8 image, mask) of each sample, decoded in loader workers."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        return load_image(sample.image_path), load_mask(sample)


def score_samples(
    ensemble: Ensemble,
    samples: list[Sample],
    ignore_index: int,
    workers: int = 0,
    batch_size: int = 8,
) -> np.ndarray:
    """The confusion matrix [C,C] (int64) of `ensemble` on `samples`, at mask resolution,
    `batch_size` same-size images per forward pass."""
    matrix = ConfusionMatrix(ensemble.num_classes, ignore_index)
    loader = DataLoader(
        LabelledImages(samples), batch_size=None, num_workers=workers, collate_fn=as_is
    )
    for batch in same_size_batches(loader, batch_size, lambda item: item[0]):
        images, masks = zip(*batch)
        probs = ensemble.batch_probs(images, masks[0].shape[:2])
        matrix.update(probs.argmax(1), torch.from_numpy(np.stack(masks).astype(np.int64)))
    return np.asarray(matrix.matrix, dtype=np.int64)


def labelled_folder(
    config, images: Path, masks: Path | None = None, coco: Path | None = None
) -> list[Sample]:
    """Samples of an image folder with its mask folder (matched by stem) or its COCO json
    (categories matched to data.classes by name), checked like training's."""
    if coco is not None:
        source = Source(images=str(Path(images).resolve()), coco=str(Path(coco).resolve()))
    else:
        source = Source(images=str(Path(images).resolve()), masks=str(Path(masks).resolve()))
    data = config.data.model_copy(update={"root": "/", "sources": [source], "cleanse": None})
    return read_samples(data, SplitConfig())


def evaluate_ensemble(
    spec: EnsembleSpec,
    split: str = "val",
    *,
    images: Path | None = None,
    masks: Path | None = None,
    coco: Path | None = None,
    workers: int = 0,
) -> dict[str, Any]:
    """Score the ensemble `spec` names (one run: its folds) and write a json of the result.

    Without `images`, each fold's `split` images are scored (see the module docstring);
    with `images` and `masks` (or a COCO json `coco`, whose images are in `images`, by
    default the json's folder, as Roboflow exports them), that labelled set is.
    `spec.folds` (one fold) keeps that fold's checkpoints only. The result (pooled and
    per-fold scores, members, options) goes to the first run directory as
    eval_<split, folder-NAME or coco-NAME><options>.json and is returned,
    with that file's `path`.
    """
    run_dirs, checkpoint, weights = spec.run_dirs, spec.checkpoint, spec.weights
    fold = None if spec.folds is None else spec.folds[0]
    if split not in SPLITS:
        raise BadOption("split", f"{split!r}: expected one of {', '.join(SPLITS)}")
    if masks is not None and coco is not None:
        raise UserError("masks and coco: give one of them as the labels of the images")
    if coco is not None and images is None:
        images = Path(coco).parent
    if (images is None) != (masks is None and coco is None):
        raise UserError("images need their labels: give masks (a folder) or coco (a json)")
    run = RunDir(run_dirs[0]).check((RUN, CONFIG, FOLDS))
    config = run.config()
    if images is not None:
        targets = labelled_folder(config, images, masks, coco)
        ensemble = Ensemble.from_spec(spec)
        matrix = score_samples(
            ensemble, targets, config.data.ignore_index, workers, spec.batch_size
        )
        fold_name = "all" if fold is None else fold
        per_fold = [{"fold": fold_name, "images": len(targets), **scores(matrix)}]
        matrices, options = [matrix], ensemble.members[0].options
        # never mistaken for a split's file
        label = f"{'coco' if coco is not None else 'folder'}-{Path(images).name}"
        members = [m.name for m in ensemble.members]
    else:
        label = split
        per_fold, matrices, members, options = score_folds(spec, run, config, split, workers)
    pooled = scores(np.sum(matrices, axis=0))
    result = {
        "split": label,
        "checkpoint": checkpoint,
        "runs": [str(r) for r in run_dirs],
        "weights": None if weights is None else list(weights),
        "members": members,
        "miou": pooled["miou"],
        "per_class_iou": dict(zip(config.data.classes, pooled["per_class_iou"])),
        "pixel_acc": pooled["pixel_acc"],
        "folds": per_fold,
        "infer": options.model_dump(mode="json"),
    }
    tag = options_tag(options) + _members_tag(checkpoint, fold, len(run_dirs), weights)
    path = run_dirs[0] / f"eval_{label}{tag}.json"
    write_json_atomic(path, result)
    return {**result, "path": str(path)}


def score_folds(spec: EnsembleSpec, run: RunDir, config: Config, split: str, workers: int):
    """Each fold's ensemble on its own `split` images: (per-fold scores, matrices, member
    names, the inference options)."""
    samples, folds = run.samples_and_folds(config)
    check_same_folds(spec.run_dirs, ONE_SPLIT)
    fold_ids = sorted(run.info().folds) if spec.folds is None else list(spec.folds)
    per_fold, matrices, members = [], [], []
    for k in fold_ids:
        train_idx, val_idx = fold_indices(folds, k)
        picked = {"val": val_idx, "train": train_idx, "all": range(len(samples))}[split]
        ensemble = Ensemble.from_spec(spec.with_folds([k]))
        chosen = [samples[i] for i in picked]
        matrix = score_samples(ensemble, chosen, config.data.ignore_index, workers, spec.batch_size)
        matrices.append(matrix)
        per_fold.append({"fold": k, "images": len(picked), **scores(matrix)})
        members += [m.name for m in ensemble.members]
        log.info(f"fold {k}: {split} mIoU {per_fold[-1]['miou']:.4f} ({len(picked)} images)")
    return per_fold, matrices, members, ensemble.members[0].options


def options_tag(options: InferConfig) -> str:
    """A file-name tag of non-plain inference options, e.g. `_hflip_s0.75-1_mean_w512x512`."""
    if options.is_plain:
        return ""
    scales = "-".join(f"{s:g}" for s in options.scales)
    window = f"_w{options.window[0]}x{options.window[1]}" if options.window else ""
    return f"_{options.tta}_s{scales}_{options.merge}{window}"


def _members_tag(checkpoint: str, fold: int | None, runs: int, weights) -> str:
    tag = "" if checkpoint == "best" else f"_{checkpoint}"
    tag += "" if fold is None else f"_fold{fold}"
    tag += "" if runs == 1 else f"_ens{runs}"
    return tag + ("" if weights is None else "_w" + "-".join(f"{w:g}" for w in weights))
