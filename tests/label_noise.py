"""Label noise for the audit and cleansing tests: swapped-class blobs and fake runs whose
out-of-fold probabilities come from a model that knows the true masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from synthetic import make_mask_folder, tiny_config

from segarena.config import config_from_dict, dump_config
from segarena.data.folds import make_folds, write_folds
from segarena.data.readers import read_samples

NUM_CLASSES = 4


def swap_blob(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relabel the largest blob of a random foreground class as another foreground class,
    in place; returns the swapped pixels."""
    present = [c for c in np.unique(mask) if c != 0]
    cls = int(rng.choice(present))
    count, blobs = cv2.connectedComponents((mask == cls).astype(np.uint8), connectivity=4)
    largest = 1 + int(np.argmax(np.bincount(blobs.ravel())[1:]))
    swapped = blobs == largest
    mask[swapped] = cls % (NUM_CLASSES - 1) + 1  # another of the classes 1..3
    return swapped


def corrupt(root: Path, stems: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Swap one blob in each named mask file of root/masks; stem -> swapped pixels."""
    rng = np.random.default_rng(seed)
    swapped = {}
    for stem in stems:
        path = root / "masks" / f"{stem}.png"
        mask = np.array(Image.open(path))
        swapped[stem] = swap_blob(mask, rng)
        Image.fromarray(mask).save(path)
    return swapped


def knowing_probs(truth: np.ndarray, rng: np.random.Generator, noise: float = 1.0) -> torch.Tensor:
    """Softmax probabilities [K, H, W] of a model that knows `truth`, with noisy logits."""
    logits = 5.0 * np.eye(NUM_CLASSES)[truth].transpose(2, 0, 1)
    logits += rng.normal(0.0, noise, size=logits.shape)
    return torch.from_numpy(logits).float().softmax(0)


def fake_run(tmp: Path, n: int = 24, size: int = 48, corrupted: int = 4, seed: int = 0):
    """A run directory with folds and uint8 OOF probabilities at half size (as training
    writes them) from a model that knows the true masks; `corrupted` masks on disk then
    get a blob swapped. Returns (run_dir, config dict, {stem: swapped pixels},
    {stem: true mask} of the corrupted stems)."""
    root = make_mask_folder(tmp / "data", n=n, size=size, seed=seed)
    config = config_from_dict(tiny_config(root, tmp / "runs"))
    samples = read_samples(config.data, config.split)
    folds = make_folds(samples, config.split, NUM_CLASSES)
    run_dir = tmp / "runs" / "tiny" / "fake"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    write_folds(run_dir / "folds.csv", samples, folds)
    rng = np.random.default_rng(seed)
    for sample, fold in zip(samples, folds):
        truth = np.array(Image.open(sample.mask_path))
        probs = F.interpolate(knowing_probs(truth, rng)[None], scale_factor=0.5, mode="bilinear")
        oof = run_dir / f"fold_{fold}" / "oof"
        oof.mkdir(parents=True, exist_ok=True)
        np.save(oof / f"{sample.id}.npy", (probs[0] * 255).round().to(torch.uint8).numpy())
    chosen = [s.id for s in samples[1::3][:corrupted]]
    truth = {stem: np.array(Image.open(root / "masks" / f"{stem}.png")) for stem in chosen}
    return run_dir, tiny_config(root, tmp / "runs"), corrupt(root, chosen, seed), truth
