"""segarena's CamVid recipe against the plain loop a user would write, at one wall clock.

The plain loop is SMP's CamVid example: Unet, Adam (lr 1e-3), cross-entropy, horizontal
flips, every image held in memory as a tensor, fp32, constant lr, epochs until the budget
is spent (an epoch that would end past it is not started; scoring is not counted). It runs
twice: resnet18 from scratch (ImageNet statistics), and tu-efficientnet_lite0 with the
packaged ImageNet weights segarena loads and their own normalisation (mean = std = 0.5, as
segarena gets them; figures before 2026-12-05 gave this loop ImageNet statistics).
segarena runs configs/camvid.yaml with train.budget_min = the budget, which counts its
validation and final scoring too; it validates only its last epoch, so
no checkpoint is picked on the frames being scored.

Two settings, every arm scored the same way at mask resolution (softmax, resize to the
mask, argmax, classes present in target or prediction):
  val      trained on train/, scored on val/ (0016E5, which train/ also holds: optimistic)
  grouped  trained without sequence 0001TP (dusk; the others are daylight), scored on it:
           the honest hold-out

For each setting: each arm's mIoU, epochs and minutes, then segarena's gain over the
better plain loop with a paired bootstrap 95% interval over images (frames of a sequence
are correlated, so the interval is narrower than one over sequences would be). Last line:
`gain: X.X`, segarena minus the better plain loop in mIoU points, on the grouped setting
(on val when only val was run).

    python bench/camvid_budget.py [--budget-min 25] [--settings val grouped]
        [--plain scratch lite0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from budget_vs_plain import plain_loop as train_plain  # bench/, the script's folder
from PIL import Image

from segarena.config import load_config
from segarena.metrics import bootstrap_miou_diff_ci, confusion_matrix, scores
from segarena.model.pretrained import packaged_file
from segarena.model.weights import load_encoder_weights
from segarena.run_dir.per_image import stored_matrices
from segarena.train.run import fit

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
CLASSES, IGNORE, HELD_OUT = 11, 11, "0001TP"
IMAGENET = (  # SMP's preprocessing for the from-scratch resnet18
    torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
    torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
)
# the packaged lite weights were trained with TensorFlow's preprocessing, mean = std = 0.5
# (what configs/camvid.yaml gives segarena); ImageNet statistics would handicap the peer
LITE = (torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5))


PLAIN_ARMS = {"scratch": ("resnet18", False), "lite0": ("tu-efficientnet_lite0", True)}


def norm_of(encoder: str) -> tuple[torch.Tensor, torch.Tensor]:
    return LITE if "efficientnet_lite" in encoder else IMAGENET


def read_split(root: Path, setting: str) -> tuple[list[Path], list[Path]]:
    """(training image paths, scored image paths) of a setting."""
    train_imgs, val_imgs = (
        sorted((root / "train").glob("*.png")),
        sorted((root / "val").glob("*.png")),
    )
    if setting == "val":
        return train_imgs, val_imgs
    pooled = train_imgs + val_imgs
    return [p for p in pooled if not p.name.startswith(HELD_OUT)], [
        p for p in pooled if p.name.startswith(HELD_OUT)
    ]


def mask_path(image: Path) -> Path:
    return image.parent.parent / f"{image.parent.name}annot" / image.name


def load_tensors(paths: list[Path], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N,3,H,W] and int64 masks [N,H,W] resized to `size` (masks nearest)."""
    h, w = size
    images = [
        np.asarray(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR)) for p in paths
    ]
    masks = [np.asarray(Image.open(mask_path(p)).resize((w, h), Image.NEAREST)) for p in paths]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), torch.from_numpy(
        np.stack(masks).astype(np.int64)
    )


def plain_loop(encoder: str, pretrained: bool, x, y, budget_s: float, seed: int = 0):
    """SMP's CamVid example loop; returns (model, epochs, seconds, images/s)."""
    torch.manual_seed(seed)
    model = smp.Unet(encoder, encoder_weights=None, classes=CLASSES)
    if pretrained:
        load_encoder_weights(model, packaged_file(encoder))
    epochs, seconds, speed = train_plain(model, x, y, budget_s, norm_of(encoder), IGNORE, seed=seed)
    return model, epochs, seconds, speed


@torch.no_grad()
def per_image_matrices(model, paths: list[Path], size: tuple[int, int], encoder: str) -> np.ndarray:
    """Confusion matrix of each scored image, at its mask's resolution."""
    model.eval()
    mean, std = norm_of(encoder)
    x, _ = load_tensors(paths, size)
    cms = []
    for image, path in zip(x, paths):
        target = torch.from_numpy(np.asarray(Image.open(mask_path(path))).astype(np.int64))
        probs = model(((image[None].float() / 255) - mean) / std).softmax(1)
        probs = F.interpolate(probs, size=target.shape, mode="bilinear", align_corners=False)
        cms.append(confusion_matrix(probs.argmax(1)[0], target, CLASSES, IGNORE).numpy())
    return np.stack(cms).astype(np.int64)


def segarena_arm(root: Path, setting: str, budget_min: float, out: Path, extra: list[str]):
    """The recipe under train.budget_min; returns (per-image matrices by id, row)."""
    split = ["split.method=predefined"] if setting == "val" else []
    # validating only the last epoch: best.ckpt is then the last epoch, as in the plain
    # loops, not an epoch picked on the very frames being scored
    overrides = [
        f"data.root={root}", f"experiment=camvid_budget_{setting}", "records.mlflow=false",
        f"train.budget_min={budget_min}", "train.val_every=1000", *split, *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    run_dir = fit(load_config(RECIPE, overrides), out).path
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((run_dir / "summary.json").read_text())
    matrices = stored_matrices(run_dir)
    held_out = {i for i in matrices.ids if i.startswith(HELD_OUT)}
    if setting == "grouped" and held_out != set(matrices.ids):
        raise SystemExit(f"{run_dir}: fold 0 does not hold out exactly {HELD_OUT}")
    row = {
        "arm": "segarena recipe", "miou": summary["miou"], "epochs": summary["budget"]["epochs"][0],
        "images_per_s": summary["train_images_per_s"], "minutes": minutes, "run_dir": str(run_dir),
    }  # fmt: skip
    return dict(zip(matrices.ids, matrices.cms)), row


def run_setting(args, setting: str) -> float:
    root, size = Path(args.data), tuple(args.size)
    train_paths, scored = read_split(root, setting)
    ids = [p.stem for p in scored]
    by_id, ours = segarena_arm(root, setting, args.budget_min, Path(args.out), args.overrides)
    ours_cms = np.stack([by_id[i] for i in ids])
    x, y = load_tensors(train_paths, size)
    rows, plain_cms = [ours], []
    for encoder, pretrained in [PLAIN_ARMS[name] for name in args.plain]:
        model, epochs, seconds, speed = plain_loop(encoder, pretrained, x, y, args.budget_min * 60)
        cms = per_image_matrices(model, scored, size, encoder)
        plain_cms.append(cms)
        name = f"plain {encoder.removeprefix('tu-')} ({'imagenet' if pretrained else 'scratch'})"
        rows.append({"arm": name, "miou": scores(cms.sum(0))["miou"], "epochs": epochs,
                     "images_per_s": speed, "minutes": seconds / 60})  # fmt: skip
    print(f"\n{setting}: trained on {len(train_paths)} images, scored on {len(scored)}")
    for r in rows:
        print(f"  {r['arm']:<28} mIoU {r['miou']:.4f}  {r['epochs']:>3} epochs  "
              f"{r['images_per_s']:5.1f} img/s  {r['minutes']:5.1f} min")  # fmt: skip
    best = int(np.argmax([r["miou"] for r in rows[1:]]))
    gain = 100 * (ours["miou"] - rows[1 + best]["miou"])
    low, high = bootstrap_miou_diff_ci(plain_cms[best], ours_cms)
    print(f"  {setting} gain over {rows[1 + best]['arm']}: {gain:+.1f} points "
          f"(95% CI {100 * low:+.1f} to {100 * high:+.1f})")  # fmt: skip
    return gain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--budget-min", type=float, default=25.0)
    parser.add_argument(
        "--settings", nargs="+", choices=["val", "grouped"], default=["val", "grouped"]
    )
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"),
                        help="the plain loops' input size")  # fmt: skip
    parser.add_argument("--plain", nargs="+", choices=list(PLAIN_ARMS), default=list(PLAIN_ARMS),
                        help="plain loops to run (lite0 alone saves a third)")  # fmt: skip
    parser.add_argument("--out", default="runs_bench")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="override the recipe, e.g. --set train.precision=32-true")  # fmt: skip
    args = parser.parse_args()
    print(f"budget {args.budget_min:g} min per arm, torch threads {torch.get_num_threads()}")
    gains = {setting: run_setting(args, setting) for setting in args.settings}
    print(f"gain: {gains.get('grouped', gains.get('val')):.1f}")


if __name__ == "__main__":
    main()
