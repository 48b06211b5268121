"""Run directories built by hand, with out-of-fold predictions chosen by the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from synthetic import tiny_config

from segarena.config import config_from_dict, dump_config
from segarena.metrics import confusion_matrix, scores

NUM_CLASSES = 4
IGNORE = 255


def masks(data: Path) -> dict[str, np.ndarray]:
    """id -> ground-truth mask of a synthetic mask folder."""
    return {p.stem: np.array(Image.open(p)) for p in sorted((data / "masks").glob("*.png"))}


def predictions(truth: dict[str, np.ndarray], right: float, seed: int) -> dict[str, np.ndarray]:
    """Ground truth on a random share `right` of the images, all background on the rest."""
    rng = np.random.default_rng(seed)
    ids = sorted(truth)
    chosen = set(rng.choice(ids, size=round(right * len(ids)), replace=False).tolist())
    return {i: truth[i] if i in chosen else np.zeros_like(truth[i]) for i in ids}


def image_cm(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    cm = confusion_matrix(
        torch.from_numpy(pred.astype(np.int64)),
        torch.from_numpy(target.astype(np.int64)),
        NUM_CLASSES,
        IGNORE,
    )
    return cm.numpy()


def fake_run(
    out: Path,
    data_root: Path,
    name: str,
    preds: dict[str, np.ndarray],
    per_image: bool = True,
    oof_scale: float = 1.0,
    **sections,
) -> Path:
    """OUT/tiny/<name>: a finished one-fold run whose OOF predictions are `preds`.

    `per_image` writes fold_0/per_image_cm.npy (what training writes); without it a reader
    must recompute the matrices from the OOF probabilities (one-hot, uint8, downscaled by
    `oof_scale`). `sections` update the config like tiny_config's.
    """
    raw = tiny_config(data_root, out, **sections)
    raw["train"] = {**raw["train"], "oof_scale": oof_scale}
    config = config_from_dict(raw)
    run_dir = out / config.experiment / name
    fold_dir = run_dir / "fold_0"
    (fold_dir / "oof").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    run_info = {"run_id": name, "experiment": config.experiment, "folds": [0], "debug": False}
    (run_dir / "run.json").write_text(json.dumps(run_info))
    truth = masks(data_root)
    cms = np.stack([image_cm(preds[i], truth[i]) for i in preds])
    for sample_id, pred in preds.items():
        probs = torch.from_numpy(np.eye(NUM_CLASSES, dtype=np.float32)[pred]).permute(2, 0, 1)
        if oof_scale != 1.0:
            probs = F.interpolate(probs[None], scale_factor=oof_scale, mode="bilinear")[0]
        np.save(fold_dir / "oof" / f"{sample_id}.npy", (probs * 255).round().byte().numpy())
    if per_image:
        np.save(fold_dir / "per_image_cm.npy", cms)
        (fold_dir / "per_image_ids.json").write_text(json.dumps(list(preds)))
    pooled = scores(cms.sum(0))
    result = {"fold": 0, "miou": pooled["miou"], "best_epoch": 1, "epochs": 1}
    (fold_dir / "result.json").write_text(json.dumps({**result, "confusion": cms.sum(0).tolist()}))
    history = [{"epoch": 1, "train_loss": 1.0, "lr": 0.01, "seconds": 2.5, "val_miou": 0.5}]
    (fold_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    summary = {
        "miou": pooled["miou"],
        "miou_mean": pooled["miou"],
        "miou_std": 0.0,
        "per_class_iou": dict(zip(config.data.classes, pooled["per_class_iou"])),
        "folds": [result],
        "epochs": 1,
        "train_images_per_s": 1.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir
