"""What each inference choice adds on CamVid val/: TTA, multi-scale, folds, runs, OOF weights.

Two 3-fold runs of configs/camvid.yaml trained on train/ only, folds grouped by video
sequence (the recipe's split): A = Unet/efficientnet-b0 at 160x224, B = FPN/resnet18 at
192x256 (another architecture and input size: a resize ensemble member). Both from
scratch with a short CPU schedule (--epochs). Every val row goes through
`segarena evaluate --images val --masks valannot`, i.e. predict's own code, and is scored
on the 101 val/ frames at 360x480. Single-model rows are the mean over A's three fold
models. The OOF rows score each train/ image with the models that did not train on its
sequence (honest); tune-weights picks the A/B weights on those OOF probabilities.

val/ is sequence 0016E5, which train/ also holds: two of the three
fold models trained on its neighbouring frames, so val figures are optimistic; the rows
compare inference choices with each other.

    python bench/ensemble_camvid.py [--runs RUN_A RUN_B] [--epochs 6] [--data DIR]
        [--out runs_bench/ens]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from segarena.config import expand_env, load_config
from segarena.infer.ensemble import EnsembleSpec
from segarena.infer.evaluate import evaluate_ensemble
from segarena.infer.tune_weights import tune_weights
from segarena.train.run import fit

ROOT = Path(__file__).resolve().parents[1]
FLIP = {"tta": "hflip"}
MULTI = {"tta": "hflip", "scales": [0.75, 1.0, 1.25]}


def train_runs(args) -> list[Path]:
    """A and B: the CamVid recipe on train/ only, every fold."""
    base = [
        f"data.root={args.data}",
        "data.sources=[{images: train, masks: trainannot}]",
        f"train.epochs={args.epochs}",
        "train.val_every=3",
    ]
    arms = [
        ["data.image_size=[160,224]"],
        ["data.image_size=[192,256]", "model.arch=FPN", "model.encoder=resnet18"],
    ]
    runs = []
    for arm in arms:
        config = load_config(ROOT / "configs" / "camvid.yaml", base + arm)
        runs.append(fit(config, args.out, folds="all").path)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--runs", nargs=2, type=Path, help="reuse trained runs A and B")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("runs_bench/ens"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.time()
    run_a, run_b = args.runs or train_runs(args)
    data = Path(expand_env(args.data))
    folder = {"images": data / "val", "masks": data / "valannot", "workers": args.workers}

    def on_val(runs, infer=None, weights=None, fold=None) -> float:
        spec = EnsembleSpec(
            tuple(runs), weights=weights and tuple(weights), overrides=infer or {}, device="cpu",
            folds=None if fold is None else (fold,),
        )  # fmt: skip
        return evaluate_ensemble(spec, **folder)["miou"]

    def single(infer=None) -> float:
        return float(np.mean([on_val([run_a], infer, fold=k) for k in range(3)]))

    tuned = tune_weights([run_a, run_b], steps=10)
    weights = tuned["weights"]
    tuned_val = on_val([run_a, run_b], FLIP, weights=weights)
    rows = [
        ("A, one fold model (mean of 3)", single()),
        ("A, one fold model + hflip TTA", single(FLIP)),
        ("A, one fold model + hflip + scales 0.75/1/1.25", single(MULTI)),
        ("A, 3-fold ensemble", on_val([run_a])),
        ("A, 3-fold ensemble + hflip", on_val([run_a], FLIP)),
        ("A, 3-fold ensemble + hflip + scales", on_val([run_a], MULTI)),
        ("B (FPN/resnet18 @192x256), 3-fold + hflip", on_val([run_b], FLIP)),
        ("A+B, plain mean, + hflip", on_val([run_a, run_b], FLIP)),
        (f"A+B, OOF-tuned weights {weights}, + hflip", tuned_val),
    ]
    oof = {
        "A": tuned["miou_each"][0],
        "B": tuned["miou_each"][1],
        "A+B mean": tuned["miou_mean"],
        "A+B tuned (in-sample)": tuned["miou_tuned"],
        "A+B tuned (cross-fitted)": tuned["miou_crossfit"],
    }
    print("| inference choice | CamVid val mIoU |\n| --- | --- |")
    for name, miou in rows:
        print(f"| {name} | {miou:.4f} |")
    print("\n| out-of-fold (train/, grouped by sequence) | mIoU |\n| --- | --- |")
    for name, miou in oof.items():
        print(f"| {name} | {miou:.4f} |")
    result = {
        "runs": [str(run_a), str(run_b)],
        "val": dict(rows),
        "oof": oof,
        "tuned": tuned,
        "minutes": (time.time() - started) / 60,
    }
    (args.out / "ensemble_camvid.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
