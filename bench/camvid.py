"""CamVid quality at a fixed wall-clock budget: train on train/, score on val/.

The CamVid recipe (configs/camvid.yaml) with split.method=predefined; a short probe sets
the epoch count so that the run fits the budget (bench/arms.py). Prints the val mIoU
and the wall time actually used.

Note: val/ is sequence 0016E5, which train/ also holds, so this figure overstates what
the model does on an unseen sequence; grouped CV
(`segarena train configs/camvid.yaml --folds all`) is the honest number.

    python bench/camvid.py [--data ../shared/data/camvid] [--budget-min 10] [--size 192 256]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from arms import print_arms, run_arm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--budget-min", type=float, default=10.0)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--out", default="runs_bench")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    overrides = [
        f"data.root={args.data}",
        "split.method=predefined",
        f"data.image_size=[{args.size[0]}, {args.size[1]}]",
        "records.mlflow=false",
        "experiment=camvid_bench",
        *args.overrides,
    ]
    result = run_arm("recipe", overrides, args.budget_min, Path(args.out))
    print(
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, torch threads "
        f"{torch.get_num_threads()}, input {args.size[0]}x{args.size[1]}"
    )
    print(f"per-class IoU: {json.dumps(result['per_class_iou'])}")
    print_arms([result], args.budget_min)
    print(f"val mIoU: {result['miou']:.4f}")


if __name__ == "__main__":
    main()
