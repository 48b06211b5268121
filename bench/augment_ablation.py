"""CamVid augmentation ablation at one wall-clock budget per arm: train/ -> val/.

    none      no augmentation at all
    medium    augment.preset=medium
    mixing    medium + CutMix (p 0.25) + copy-paste (p 0.25)

Each arm is probed (mixing included) and given the epochs that fit the budget
(bench/arms.py), so slower pipelines train fewer epochs, as they would in a contest.
val/ shares its sequence with train/: compare the arms, not the absolute figures.

    python bench/augment_ablation.py [--data DIR] [--budget-min 6] [--size 192 256]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from arms import print_arms, run_arm

from segarena.util.files import write_json_atomic

ARMS = {
    "none": ["augment.preset=none", "augment.train=[]"],
    "medium": ["augment.preset=medium", "augment.train=[]"],
    "mixing": [
        "augment.preset=medium",
        "augment.train=[]",
        "augment.mixing.cutmix_p=0.25",
        "augment.mixing.copy_paste_p=0.25",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--budget-min", type=float, default=6.0, help="per arm")
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--out", default="runs_bench")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    args = parser.parse_args()

    common = [
        f"data.root={args.data}",
        "split.method=predefined",
        f"data.image_size=[{args.size[0]}, {args.size[1]}]",
        "records.mlflow=false",
        "experiment=camvid_augment_ablation",
    ]
    results = [
        run_arm(name, [*common, *ARMS[name]], args.budget_min, Path(args.out))
        for name in args.arms.split(",")
    ]
    print_arms(results, args.budget_min)
    write_json_atomic(Path(args.out) / "augment_ablation.json", {"results": results})


if __name__ == "__main__":
    main()
