"""`segarena audit RUN_DIR`: rank label issues from a run's out-of-fold probabilities.

Confident learning (segarena.labels.confident) judges every given mask against the
probabilities of the fold model that never trained on it. The out-of-fold (OOF)
probabilities are stored downscaled (train.oof_scale); they are resized up to the mask
(bilinear), not the mask down: a mask cannot be shrunk without inventing or losing thin
structures, and cleansing needs the issues at the resolution of the labels it edits.

Output folder (default RUN_DIR/audit):
  issues.csv    images ranked worst first: rank, id, fold, score (softmin label quality,
                lower is worse), issue_pixels, issue_share, issues_<class> (flagged
                pixels by given class)
  report.html   the worst --top images: image, given mask, predicted mask, flagged pixels
  issues/<id>.npz   per image with flagged pixels: issues (bool HxW), pred (uint8 model
                class), conf (uint8, probability of pred x 255); pred and conf are kept on
                flagged pixels only (zero elsewhere), what data.cleanse relabel needs
  audit.json    written last: classes, thresholds, totals, and per image its fold, mask
                size, mask checksum and npz file (data.cleanse checks them)
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segarena.config import Config, DataConfig
from segarena.data.audit_files import ISSUES_DIR, MANIFEST, RANKING, REPORT, mask_checksum
from segarena.data.folds import read_folds
from segarena.data.readers import Sample, load_image, load_mask, read_samples
from segarena.errors import UserError
from segarena.labels.confident import LabelIssueFinder
from segarena.run_dir.layout import CONFIG, FOLDS, RunDir
from segarena.run_dir.per_image import oof_name
from segarena.util.files import atomic_output, write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class AuditItem:
    sample: Sample
    fold: int
    oof_path: Path


def load_probs(path: Path, num_classes: int, size: tuple[int, int]) -> torch.Tensor:
    """OOF probabilities as float32 [K, H, W], resized (bilinear) to the mask size."""
    try:
        array = np.load(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read out-of-fold probabilities ({exc})") from None
    if array.ndim != 3 or array.shape[0] != num_classes:
        raise UserError(
            f"{path}: probabilities of shape {array.shape}; expected ({num_classes}, h, w) "
            f"for the run's {num_classes} classes"
        )
    probs = torch.from_numpy(array).float()
    if array.dtype == np.uint8:  # train.oof_dtype uint8 stores p * 255
        probs /= 255.0
    if tuple(probs.shape[1:]) != tuple(size):
        probs = F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
    return probs


def audit_items(run_dir: Path, config: Config) -> tuple[list[AuditItem], list[str]]:
    """The run's samples that have OOF probabilities, and the ids of those that have none."""
    samples = read_samples(config.data, config.split)
    folds = read_folds(RunDir(run_dir).folds_path, samples, config.split)
    items, missing = [], []
    for sample, fold in zip(samples, folds):
        path = RunDir(run_dir).oof_dir(fold) / f"{oof_name(sample.id)}.npy"
        if fold >= 0 and path.is_file():
            items.append(AuditItem(sample, fold, path))
        else:
            missing.append(sample.id)
    if not items:
        raise UserError(
            f"{run_dir}: no out-of-fold probabilities (fold_<k>/oof/*.npy) for any sample; "
            "audit a run trained with --folds all (a k-fold split: holdout and predefined "
            "splits validate only some images)"
        )
    return items, missing


def audit_run(
    run_dir: Path, out: Path | None = None, top: int = 20, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Audit RUN_DIR's labels into `out` (default RUN_DIR/audit); returns the manifest."""
    run = RunDir(run_dir).check((CONFIG, FOLDS))
    run_dir = run.path
    if top < 0:
        raise UserError(f"--top {top}: expected a number of images >= 0")
    config = run.config(overrides)
    out = Path(out) if out is not None else run_dir / "audit"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file is in the way; expected a folder (or no path)")
    (out / ISSUES_DIR).mkdir(parents=True, exist_ok=True)
    data = config.data
    items, missing = audit_items(run_dir, config)

    def pairs():
        for item in items:
            mask = load_mask(item.sample)
            probs = load_probs(item.oof_path, data.num_classes, mask.shape)
            yield probs, torch.from_numpy(mask)

    finder = LabelIssueFinder(data.num_classes, data.ignore_index).fit(pairs)
    order = sorted(range(len(items)), key=lambda i: (finder.scores[i], items[i].sample.id))
    shown = {index: rank for rank, index in enumerate(order[:top], 1)}
    images, per_class, labelled, panels = save_issues(items, finder, pairs, out, data, shown=shown)
    ranked = [items[i] for i in order]
    write_ranking(
        out / RANKING, ranked, finder.scores[order], per_class[order], labelled[order], data=data
    )
    from segarena.labels.audit_page import write_report

    write_report(out / REPORT, [panels[i] for i in order[:top]], data.classes, run_dir)
    manifest = {
        "run_dir": str(run_dir.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "classes": list(data.classes),
        "ignore_index": data.ignore_index,
        "method": "confident learning, cleanlab segmentation defaults (segarena.labels.confident)",
        "temperature": finder.temperature,
        "thresholds": dict(zip(data.classes, finder.thresholds.tolist())),
        "estimated_issues": finder.num_issues,
        "flagged_pixels": int(per_class.sum()),
        "images_with_issues": int((per_class.sum(1) > 0).sum()),
        "not_audited": missing,
        "images": images,
    }
    write_json_atomic(out / MANIFEST, manifest)  # last: a complete manifest means a complete audit
    return manifest


def save_issues(items, finder, pairs, out: Path, data: DataConfig, *, shown: dict[int, int]):
    """The final pass: each image's npz and manifest record, its flagged pixels per given
    class and its labelled (not ignored) pixels, and the panels of the `shown` images
    (index -> rank)."""
    from segarena.labels.audit_page import render_panels  # matplotlib: a second to import

    images, panels = {}, {}
    per_class = np.zeros((len(items), data.num_classes), np.int64)
    labelled = np.zeros(len(items), np.int64)
    for index, (item, found) in enumerate(zip(items, finder.issues(pairs))):
        per_class[index] = np.bincount(
            found.labels[found.issues].astype(np.int64), minlength=data.num_classes
        )
        labelled[index] = (found.labels != data.ignore_index).sum()
        images[item.sample.id] = image_record(item, found, out)
        if index in shown:
            title = (
                f"#{shown[index]} {item.sample.id} · fold {item.fold} · "
                f"label quality {finder.scores[index]:.4f}"
            )
            image = load_image(item.sample.image_path)
            panels[index] = render_panels(image, found, data.classes, title)
    return images, per_class, labelled, panels


def image_record(item: AuditItem, found, out: Path) -> dict[str, Any]:
    """The manifest entry of one image, writing its npz when it has flagged pixels."""
    height, width = found.labels.shape
    record = {
        "fold": item.fold,
        "height": height,
        "width": width,
        "mask_crc32": mask_checksum(found.labels),
        "issue_pixels": int(found.issues.sum()),
        "file": None,
    }
    if record["issue_pixels"]:
        name = f"{ISSUES_DIR}/{oof_name(item.sample.id)}.npz"
        keep = found.issues
        pred = np.where(keep, found.pred, 0).astype(np.uint8)
        conf = np.where(keep, np.round(found.conf * 255), 0).astype(np.uint8)
        save_npz_atomic(out / name, issues=keep, pred=pred, conf=conf)
        record["file"] = name
    return record


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed through a temporary file and a rename."""
    with atomic_output(path) as tmp, tmp.open("wb") as f:
        np.savez_compressed(f, **arrays)


def write_ranking(path: Path, items, scores, per_class, labelled, *, data: DataConfig) -> None:
    """issues.csv from the items in rank order (issue_share: the flagged share of an
    image's labelled pixels)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["rank", "id", "fold", "score", "issue_pixels", "issue_share"]
        + [f"issues_{name}" for name in data.classes]
    )
    for rank, (item, score, counts, area) in enumerate(zip(items, scores, per_class, labelled), 1):
        flagged = int(counts.sum())
        share = flagged / max(int(area), 1)
        writer.writerow(
            [rank, item.sample.id, item.fold, f"{score:.6f}", flagged, f"{share:.6f}"]
            + counts.tolist()
        )
    write_text_atomic(path, buffer.getvalue())
