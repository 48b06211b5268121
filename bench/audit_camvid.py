"""Label-noise benchmark on CamVid: corrupt 10% of the train masks, audit, cleanse, retrain.

1. Copy CamVid to a temporary folder and corrupt a share (--share, 10%) of the train/
   masks: in each, one class loses up to 3 of its blobs (connected regions of at least
   0.2% of the image) to another class, drawn at random.
2. Train on train/ only with --folds all and a short schedule (--epochs): the recipe's
   grouped 3-fold split by sequence (--split kfold: 3 random folds instead), so that
   every train image gets out-of-fold probabilities.
3. `segarena audit` that run: precision and recall at finding the corrupted images (at
   k = the number corrupted, at 2k, and over the images with any flagged pixel), and the
   recall of the swapped pixels.
4. Train on all of train/ and score on the untouched val/ (split.method=predefined), once
   without cleansing and once per --actions (data.cleanse ignore / relabel / drop; drop
   removes as many images as were corrupted): val mIoU of each.

Note: val/ is sequence 0016E5, which train/ also holds: the mIoU
figures compare the cleansing actions with each other, they are not honest absolute scores.

    python bench/audit_camvid.py [--data ../shared/data/camvid] [--share 0.1] [--epochs 30]
        [--final-epochs 40] [--size 192 256] [--actions ignore relabel drop] [--out runs_audit]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

from segarena.config import apply_overrides, config_from_dict, expand_env
from segarena.labels.audit import audit_run
from segarena.train.run import fit

ROOT = Path(__file__).resolve().parents[1]
VOID = 11
MIN_BLOB = 0.002  # share of the image a swapped blob covers at least
MAX_BLOBS = 3


def swap_blobs(mask: np.ndarray, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Relabel up to MAX_BLOBS blobs of one random class as another class, in place;
    returns the swapped pixels (none if no class has a blob large enough)."""
    for cls in rng.permutation([c for c in np.unique(mask) if c != VOID]):
        count, blobs, stats, _ = cv2.connectedComponentsWithStats((mask == cls).astype(np.uint8))
        areas = stats[1:, cv2.CC_STAT_AREA]
        big = [1 + i for i in np.argsort(-areas)[:MAX_BLOBS] if areas[i] >= MIN_BLOB * mask.size]
        if big:
            swapped = np.isin(blobs, big)
            mask[swapped] = rng.choice([c for c in range(num_classes) if c != cls])
            return swapped
    return np.zeros(mask.shape, dtype=bool)


def corrupt_copy(source: Path, work: Path, share: float, seed: int, num_classes: int):
    """Copy CamVid into `work` and corrupt `share` of trainannot/; {stem: swapped pixels}."""
    shutil.copytree(source, work, dirs_exist_ok=True)
    rng = np.random.default_rng(seed)
    stems = sorted(p.stem for p in (work / "trainannot").glob("*.png"))
    swapped = {}
    for stem in rng.choice(stems, size=round(share * len(stems)), replace=False):
        path = work / "trainannot" / f"{stem}.png"
        mask = np.array(Image.open(path))
        pixels = swap_blobs(mask, rng, num_classes)
        if pixels.any():
            Image.fromarray(mask).save(path)
            swapped[str(stem)] = pixels
    return swapped


def recipe(data: Path, args, experiment: str, sources: list[dict], split: dict) -> dict:
    """configs/camvid.yaml as a dict, adjusted for this benchmark."""
    raw = yaml.safe_load((ROOT / "configs" / "camvid.yaml").read_text())
    raw["experiment"] = experiment
    raw["data"].update(root=str(data), sources=sources, image_size=list(args.size))
    raw["split"] = {**raw["split"], **split}
    raw["records"] = {"out": str(args.out), "mlflow": False}
    return apply_overrides(raw, args.overrides)  # --set key.sub=value


def detection(audit_dir: Path, swapped: dict[str, np.ndarray]) -> dict:
    """How well the audit's ranking and flagged pixels find the corrupted images."""
    with (audit_dir / "issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    k = len(swapped)
    result = {"corrupted": k, "audited": len(rows)}
    for name, top in (("at_k", k), ("at_2k", 2 * k)):
        hits = sum(row["id"] in swapped for row in rows[:top])
        result[f"precision_{name}"] = hits / max(top, 1)
        result[f"recall_{name}"] = hits / max(k, 1)
    flagged = [row["id"] for row in rows if int(row["issue_pixels"]) > 0]
    hits = sum(i in swapped for i in flagged)
    result.update(
        flagged_images=len(flagged),
        precision_flagged=hits / max(len(flagged), 1),
        recall_flagged=hits / max(k, 1),
    )
    manifest = json.loads((audit_dir / "audit.json").read_text())
    found = total = 0
    for stem, pixels in swapped.items():
        record = manifest["images"][stem]
        if record["file"]:
            found += int((np.load(audit_dir / record["file"])["issues"] & pixels).sum())
        total += int(pixels.sum())
    result.update(
        swapped_pixels=total,
        swapped_pixel_recall=found / max(total, 1),
        flagged_pixels=manifest["flagged_pixels"],
        flagged_pixels_in_swaps=found / max(manifest["flagged_pixels"], 1),
    )
    return result


def final_miou(data: Path, args, cleanse: dict | None) -> float:
    """Train on train/ (cleansed or not), score on val/: the val mIoU."""
    sources = [
        {"images": "train", "masks": "trainannot"},
        {"images": "val", "masks": "valannot", "role": "val"},
    ]
    raw = recipe(data, args, "camvid_noise_final", sources, {"method": "predefined"})
    raw["train"]["epochs"] = args.final_epochs
    if cleanse is not None:
        raw["data"]["cleanse"] = cleanse
    run_dir = fit(config_from_dict(raw, "audit_camvid"), args.out).path
    return json.loads((run_dir / "summary.json").read_text())["miou"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--share", type=float, default=0.1, help="share of train masks corrupted")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the audited CV run")
    parser.add_argument("--final-epochs", type=int, default=40, help="epochs of train/ -> val/")
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--split", choices=["group", "kfold"], default="group")
    parser.add_argument("--actions", nargs="*", default=["ignore", "relabel", "drop"])
    parser.add_argument("--relabel-confidence", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs_audit"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="camvid_noisy_"))
    try:
        swapped = corrupt_copy(Path(expand_env(args.data)), work, args.share, args.seed, VOID)
        print(f"corrupted {len(swapped)} train masks in {work}")
        split = {"method": "kfold", "n_folds": 3} if args.split == "kfold" else {}
        sources = [{"images": "train", "masks": "trainannot"}]
        raw = recipe(work, args, "camvid_noise_cv", sources, split)
        raw["train"]["epochs"] = args.epochs
        cv_run = fit(config_from_dict(raw, "audit_camvid"), args.out, folds="all").path
        audit_dir = cv_run / "audit"
        audit_run(cv_run, audit_dir, top=20)
        found = detection(audit_dir, swapped)
        print(json.dumps(found, indent=2))

        mious = {"none": final_miou(work, args, None)}
        for action in args.actions:
            cleanse = {"audit": str(audit_dir), "action": action}
            if action == "drop":
                cleanse["drop_top"] = len(swapped)
            if action == "relabel":
                cleanse["relabel_confidence"] = args.relabel_confidence
            mious[action] = final_miou(work, args, cleanse)
            print(f"val mIoU: {mious}")
        result = {
            "detection": found,
            "val_miou": mious,
            "cv_run": str(cv_run),
            "minutes": (time.time() - started) / 60,
            "args": vars(args),
        }
        (args.out / "audit_camvid.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, indent=2, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
