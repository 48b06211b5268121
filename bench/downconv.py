"""CamVid: downconv (full size, model.downconv=2) against downscaling, at one wall-clock budget.

Both arms train the CamVid recipe (configs/camvid.yaml, split.method=predefined: train on
train/, score on val/ at the masks' native 360x480):

    downscale  data.image_size = SIZE / 2, model.downconv = 1
    downconv   data.image_size = SIZE,     model.downconv = 2

The two networks run on inputs of the same size (SIZE / 2 after padding), so they cost
about the same per image; the downconv arm reads every pixel and predicts at full
resolution through its sub-pixel head, the downscale arm averages pixels away and
upsamples its logits. As in bench/camvid.py, a short probe measures each arm's training
images/s and sets its epoch count so that the run fits the budget (a cosine schedule
must know its length in advance). Prints one line per arm and writes OUT/downconv.json.

Note: val/ is sequence 0016E5, which train/ also holds, so both figures overstate what
the models do on an unseen sequence; compare the arms, not the
absolute numbers.

    python bench/downconv.py [--data ../shared/data/camvid] [--budget-min 10] [--size 352 480]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from arms import print_arms, run_arm

from segarena.util.files import write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--budget-min", type=float, default=10.0, help="per arm")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[352, 480],
        metavar=("H", "W"),
        help="full size (the downconv arm); the downscale arm trains at half of it",
    )
    parser.add_argument("--out", default="runs_bench")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()

    height, width = args.size
    if height % 2 or width % 2:
        parser.error(f"--size {height} {width}: expected even sizes (halved for the baseline)")
    common = [
        f"data.root={args.data}",
        "split.method=predefined",
        "records.mlflow=false",
        "experiment=camvid_downconv_bench",
        *args.overrides,
    ]
    arms = {
        "downscale": [f"data.image_size=[{height // 2}, {width // 2}]", "model.downconv=1"],
        "downconv": [f"data.image_size=[{height}, {width}]", "model.downconv=2"],
    }
    results = [
        run_arm(name, [*common, *extra], args.budget_min, Path(args.out))
        for name, extra in arms.items()
    ]
    print(
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
        f"budget {args.budget_min} min per arm, full size {height}x{width}"
    )
    print_arms(results, args.budget_min)
    write_json_atomic(Path(args.out) / "downconv.json", {"results": results})


if __name__ == "__main__":
    main()
