"""The CamVid recipe's whole training pipeline against the plain loop: images per second.

  segarena   `fit` of configs/camvid.yaml as shipped: its loader (data.cache, the config's
             workers, resize, flip and colour jitter in the workers), channels-last,
             train.precision (auto: the probe's choice for this machine), Dice + Focal,
             AdamW + cosine, batch 4; one epoch, images/s as the run records it
             (metrics.jsonl: the epoch's training steps, data waits included).
  plain      SMP's example loop on the same frames, decoded and resized to the recipe's
             input size before the clock starts and held as uint8 tensors: flips on the
             batch, float32, default memory format (NCHW, as torchvision's ToTensor
             gives), cross-entropy, Adam, batch 8: the loop issue 24 measured.
  plain CL   the same loop with model and input channels-last, segarena's format. (Until
             2026-12-05 the "plain" arm was this one without saying so: its NHWC frames,
             permuted to NCHW, are channels-last in memory, and convolutions follow.)
  plain CL+aug  plain CL with the recipe's own augmentation (its albumentations
             ColorJitter and flip, per image in the loop) and its batch of 4: the cost
             of the augmentation, visible on its own.

The four run one epoch each per round, in rotating order, `--rounds` times, on the first
`--images` frames of train/ (8 more from val/ are the recipe's validation, scored once at
its end and not timed). Medians over the rounds; the last line is `ratio: X.XX`,
segarena's images/s over the plain loop's, and the line above it the ratio over plain CL.

    python bench/recipe_speed.py [--data ../shared/data/camvid] [--images 160] [--rounds 3]
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import albumentations as A
import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image

from segarena.config import load_config
from segarena.model.pretrained import packaged_file
from segarena.model.weights import load_encoder_weights
from segarena.train.run import fit

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
CLASSES, IGNORE = 11, 11


def lay_out(data: Path, root: Path, count: int) -> None:
    """root/{train,trainannot}: the first `count` frames; root/{val,valannot}: 8 frames."""
    for split, n in (("train", count), ("val", 8)):
        for kind in (split, f"{split}annot"):
            (root / kind).mkdir(parents=True)
        for image in sorted((data / split).glob("*.png"))[:n]:
            (root / split / image.name).symlink_to(image.resolve())
            mask = data / f"{split}annot" / image.name
            (root / f"{split}annot" / image.name).symlink_to(mask.resolve())


def segarena_epoch(root: Path, out: Path, tag: object, extra: list[str] = ()) -> float:
    """Images/s of one epoch of the recipe (with `extra` overrides) on `root`'s frames."""
    overrides = [
        f"data.root={root}", "split.method=predefined", "train.epochs=1",
        "train.val_every=1000", f"experiment=speed{tag}", "records.mlflow=false", *extra,
    ]  # fmt: skip
    run = fit(load_config(RECIPE, overrides), out, folds=[0])
    lines = (run.path / "fold_0" / "metrics.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["images_per_s"])


def load_frames(root: Path, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    paths = sorted((root / "train").glob("*.png"))
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((w, h))) for p in paths])
    y = np.stack([np.asarray(Image.open(root / "trainannot" / p.name).resize((w, h),
                                                                              Image.NEAREST))
                  for p in paths])  # fmt: skip
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def plain_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = smp.Unet("tu-efficientnet_lite0", encoder_weights=None, classes=CLASSES)
    load_encoder_weights(model, packaged_file("tu-efficientnet_lite0"))
    return model


def plain_epoch(x, y, batch: int, augment: A.Compose | None, channels_last: bool) -> float:
    """SMP's example loop over the uint8 NHWC frames `x`; returns images/s."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = plain_model().train().to(memory_format=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    start = time.perf_counter()
    for idx in torch.randperm(len(x)).split(batch):
        images, masks = x[idx], y[idx]
        if augment is None:
            images = images.permute(0, 3, 1, 2).float()
            flip = torch.rand(len(idx)) < 0.5
            images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
        else:  # the recipe's transforms, image by image, as a user would call them
            pairs = [augment(image=i.numpy(), mask=m.numpy()) for i, m in zip(images, masks)]
            images = torch.from_numpy(np.stack([p["image"] for p in pairs])).permute(0, 3, 1, 2)
            masks = torch.from_numpy(np.stack([p["mask"] for p in pairs])).long()
            images = images.float()
        # NHWC frames permuted to NCHW are channels-last in memory: say which format is meant
        images = ((images / 255 - 0.5) / 0.5).contiguous(memory_format=memory)
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return len(x) / (time.perf_counter() - start)


def recipe_augment() -> A.Compose:
    config = load_config(RECIPE)
    return A.Compose([getattr(A, t.name)(**t.params) for t in config.augment.train])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/camvid")
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="segarena-bench-speed-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    lay_out(Path(args.data), root / "data", args.images)
    size = tuple(load_config(RECIPE).data.image_size)
    x, y = load_frames(root / "data", size)
    augment = recipe_augment()
    arms = {
        "segarena": lambda r: segarena_epoch(root / "data", root / "runs", r),
        "plain": lambda r: plain_epoch(x, y, 8, None, channels_last=False),
        "plain CL": lambda r: plain_epoch(x, y, 8, None, channels_last=True),
        "plain CL+aug": lambda r: plain_epoch(x, y, 4, augment, channels_last=True),
    }
    speeds: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            speeds[name].append(arms[name](round_))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {speeds[n][-1]:.2f}" for n in names)
              + " img/s", flush=True)  # fmt: skip
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"{args.images} CamVid frames at {size[1]}x{size[0]}, torch threads "
          f"{torch.get_num_threads()}; medians of {args.rounds} rounds:")  # fmt: skip
    for name, value in medians.items():
        print(f"  {name:<13} {value:6.2f} img/s")
    print(f"ratio against the channels-last plain loop: "
          f"{medians['segarena'] / medians['plain CL']:.2f}")  # fmt: skip
    print(f"ratio: {medians['segarena'] / medians['plain']:.2f}")


if __name__ == "__main__":
    main()
