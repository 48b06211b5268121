"""The recipe's quality at a fixed epoch count, before and after a speed change (issue 24).

Trains configs/camvid.yaml for `--epochs` epochs (no time budget) on the 367 labelled
CamVid frames of compete_camvid.py's layout and scores the last epoch on the held-out
sequence 0006R0 (101 frames, which no recipe choice has seen), once per arm and seed:

  smp kernels   the recipe with SMP's own Dice and Focal modules (an option only they
                take, set to its default value, keeps them: from_logits / eps) and 2 workers:
                the pipeline before issue 24
  as shipped    the recipe: segarena's one-pass Dice and Focal, data.num_workers auto

Prints each run's mIoU and, per arm, the mean; then the paired (segarena.metrics)
bootstrap of the two arms' pooled per-image matrices.

    python bench/recipe_quality.py [--data ../shared/data/camvid] [--epochs 6] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from compete_camvid import lay_out

from segarena.config import load_config
from segarena.metrics import bootstrap_miou_diff_ci, scores
from segarena.train.run import fit

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
ARMS = {
    "smp kernels": [
        "loss.terms=[{name: dice, weight: 1.0, params: {from_logits: true}}, "
        "{name: focal, weight: 1.0, params: {eps: 1.0e-7}}]",
        "data.num_workers=2",
    ],
    "as shipped": [],
}


def train_arm(data: Path, out: Path, name: str, seed: int, epochs: int) -> np.ndarray:
    """Per-image confusion matrices of one run's last epoch on the held-out frames."""
    overrides = [
        f"data.root={data}", f"experiment={name.replace(' ', '_')}_{seed}",
        "data.sources=[{images: labelled/images, masks: labelled/masks},"
        " {images: test/images, masks: test/masks, role: val}]",
        "split.method=predefined", f"train.epochs={epochs}", "train.budget_min=null",
        f"train.val_every={epochs}", f"train.seed={seed}", "records.mlflow=false",
        *ARMS[name],
    ]  # fmt: skip
    run = fit(load_config(RECIPE, overrides), out, folds=[0])
    return np.load(run.path / "fold_0" / "per_image_cm.npy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/camvid")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="segarena-bench-quality-"))
    data = lay_out(Path(args.data), work)
    seeds = [int(s) for s in args.seeds.split(",")]
    matrices: dict[str, list[np.ndarray]] = {name: [] for name in ARMS}
    for seed in seeds:
        for name in ARMS if seed % 2 == 0 else reversed(ARMS):
            matrices[name].append(train_arm(data, work / "runs", name, seed, args.epochs))
            miou = scores(matrices[name][-1].sum(axis=0))["miou"]
            print(f"{name:<12} seed {seed}: held-out mIoU {miou:.4f}", flush=True)
    for name, runs in matrices.items():
        each = [scores(m.sum(axis=0))["miou"] for m in runs]
        print(f"{name:<12} mean {statistics.mean(each):.4f} over seeds {seeds}")
    # per image, the seeds' matrices added: the two arms compared on the same frames
    before, after = (np.sum(matrices[name], axis=0) for name in ARMS)
    low, high = bootstrap_miou_diff_ci(before, after)  # mIoU(after) - mIoU(before)
    diff = scores(after.sum(axis=0))["miou"] - scores(before.sum(axis=0))["miou"]
    print(f"as shipped - smp kernels (seeds pooled): {100 * diff:+.2f} points, "
          f"95% CI [{100 * low:+.2f}, {100 * high:+.2f}]")  # fmt: skip


if __name__ == "__main__":
    main()
