"""Tiny synthetic datasets whose classes are learnable: each class is a colour of box."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "red", "green", "blue"]
COLOURS = {1: (220, 40, 40), 2: (40, 200, 40), 3: (40, 60, 220)}


def draw_sample(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, list]:
    """An RGB image with 1-3 coloured boxes on grey noise, its mask and the boxes."""
    image = rng.integers(90, 140, size=(size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes = []
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, 4))
        h, w = rng.integers(size // 6, size // 2, size=2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        image[y : y + h, x : x + w] = COLOURS[cls]
        mask[y : y + h, x : x + w] = cls
        boxes.append((cls, int(x), int(y), int(w), int(h)))
    return image, mask, boxes


def make_mask_folder(root: Path, n: int = 16, size: int = 64, seed: int = 0) -> Path:
    """root/images/*.png + root/masks/*.png; stems 'seq<k>_<i>' give 4 groups."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask, _ = draw_sample(rng, size)
        stem = f"seq{i % 4}_{i:04d}"
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


def make_coco(root: Path, n: int = 16, size: int = 64, seed: int = 0) -> Path:
    """root/images/*.jpg + root/train.json with polygon boxes; category ids non-contiguous."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cat_ids = {1: 3, 2: 7, 3: 12}
    images, annotations = [], []
    for i in range(n):
        image, _, boxes = draw_sample(rng, size)
        name = f"img_{i:04d}.png"
        Image.fromarray(image).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        for cls, x, y, w, h in boxes:
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat_ids[cls],
                    "segmentation": [poly],
                    "area": float(w * h),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": cat_ids[c], "name": CLASSES[c]} for c in (1, 2, 3)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / "train.json").write_text(json.dumps(data))
    return root


def tiny_config(root: Path, out: Path, kind: str = "mask_folder", **sections) -> dict:
    """A config dict for a tiny model on CPU; `sections` update the defaults per section."""
    source = (
        {"images": "images", "masks": "masks"}
        if kind == "mask_folder"
        else {"images": "images", "coco": "train.json"}
    )
    config = {
        "experiment": "tiny",
        "data": {
            "root": str(root),
            "sources": [source],
            "classes": CLASSES,
            "num_workers": 0,
            "ignore_index": 255,
        },
        "split": {"method": "kfold", "n_folds": 2, "seed": 0},
        "model": {
            "arch": "Unet",
            "encoder": "resnet18",
            "kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
        },
        "loss": {"terms": [{"name": "ce"}, {"name": "dice", "weight": 0.5}]},
        "optimizer": {"name": "adamw", "lr": 0.003},
        "scheduler": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 4, "seed": 0},
        "records": {"out": str(out), "mlflow": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def frozen_config(root: Path, out: Path, **train) -> dict:
    """A holdout tiny_config whose model cannot change: weights (negligible lr) and BN
    running statistics (negligible momentum) frozen, so val mIoU never improves after the
    first validation (for early-stopping tests)."""
    raw = tiny_config(
        root,
        out,
        split={"method": "holdout"},
        optimizer={"name": "sgd", "lr": 1e-20},
        scheduler={"name": "none"},
        train=train,
    )
    raw["model"]["bn_momentum"] = 1e-9
    return raw


def corrupt_pixels(path: Path) -> None:
    """Zero a PNG's compressed pixel data, keeping valid chunk checksums: reading the data
    (header, checksums) passes, decoding the image fails."""
    data, pos, out = path.read_bytes(), 8, bytearray(path.read_bytes()[:8])
    while pos < len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], bytearray(data[pos + 8 : pos + 8 + size])
        if kind == b"IDAT":
            body[2:] = bytes(len(body) - 2)  # the zlib header stays
        out += struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        pos += 12 + size
    path.write_bytes(bytes(out))


def make_roboflow_export(root: Path, size: int = 160, seed: int = 0) -> Path:
    """A Roboflow-shaped COCO export: root/{train,valid,test}/_annotations.coco.json with
    its images; train holds 4 sources x 3 augmented copies (`src<k>_jpg.rf.<hash>.jpg`),
    valid and test 3 images each; category 0 is the unused parent category."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 0, "name": "boxes", "supercategory": "none"}] + [
        {"id": c, "name": CLASSES[c], "supercategory": "boxes"} for c in (1, 2, 3)
    ]
    names = {
        "train": [f"src{k}_jpg.rf.{k}{copy:031x}.jpg" for k in range(4) for copy in range(3)],
        "valid": [f"val{k}_jpg.rf.{k:032x}.jpg" for k in range(3)],
        "test": [f"test{k}_jpg.rf.{k:032x}.jpg" for k in range(3)],
    }
    for split, files in names.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i, name in enumerate(files):
            image, _, boxes = draw_sample(rng, size)
            Image.fromarray(image).save(folder / name, quality=95)
            images.append({"id": i, "file_name": name, "height": size, "width": size})
            for cls, x, y, w, h in boxes:
                annotations.append({
                    "id": len(annotations), "image_id": i, "category_id": cls, "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    "area": float(w * h), "bbox": [x, y, w, h],
                })  # fmt: skip
        data = {"images": images, "annotations": annotations, "categories": categories}
        (folder / "_annotations.coco.json").write_text(json.dumps(data))
    return root
