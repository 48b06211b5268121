"""Prediction speed: `segarena predict` against the plain loop a user would write.

The plain loop reads each image with OpenCV, resizes it to the model's input size,
normalises it, runs the model on batches (DataLoader workers decode meanwhile), upsamples
the logits to the submission's 256x256, takes the argmax and writes the csv. With
`--tta hflip` it also averages the softmax of the flipped view. It runs under bf16
autocast, as the recipe trained (train.precision: bf16-mixed), and so does segarena. segarena runs
`write_submission` on the same run directory and images: its own loader, resize, batching
of same-size images, TTA, and a submission validated before it is moved into place.

Both run the same weights on the same images in this process, alternating rounds so that
machine noise hits both alike. The model is the CamVid recipe's (Unet, lite0, 192x256)
with random weights (speed does not depend on them). The last line is `ratio: X.XX`, the
worse of the two settings (segarena images/s over plain images/s).

    python bench/predict.py [--data ../shared/data/camvid] [--images 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from segarena.config import dump_config, load_config
from segarena.infer.ensemble import EnsembleSpec
from segarena.infer.submit import write_submission
from segarena.model.build import build_model
from segarena.submission.codecs import read_submission

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
SIZE = (256, 256)  # the csv submission's mask size


class Frames(Dataset):
    """What a user writes: read, resize to the model's size, normalise, CHW float."""

    def __init__(self, paths, size, mean, std):
        self.paths, self.size = paths, size
        self.mean, self.std = np.float32(mean) * 255, np.float32(std) * 255

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = cv2.cvtColor(cv2.imread(str(self.paths[index])), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_LINEAR)
        image = (image.astype(np.float32) - self.mean) / self.std
        return self.paths[index].name, torch.from_numpy(image.transpose(2, 0, 1))


@torch.inference_mode()
def plain_predict(model, paths, config, out: Path, tta: str, batch: int, workers: int) -> float:
    """The hand-written loop; returns images/s."""
    start = time.perf_counter()
    frames = Frames(paths, config.data.image_size, config.data.mean, config.data.std)
    loader = DataLoader(frames, batch_size=batch, num_workers=workers)
    with open(out, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image_id", "PredictionString"])
        for names, images in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                probs = model(images).float().softmax(1)
                if tta == "hflip":
                    probs = (probs + model(images.flip(3)).float().softmax(1).flip(3)) / 2
            probs = F.interpolate(probs, SIZE, mode="bilinear", align_corners=False)
            for name, mask in zip(names, probs.argmax(1).numpy()):
                writer.writerow([name, " ".join(map(str, mask.ravel().tolist()))])
    return len(paths) / (time.perf_counter() - start)


def make_run(root: Path, data: Path) -> tuple[Path, torch.nn.Module, object]:
    """A one-fold run directory holding the recipe's model with random weights."""
    config = load_config(CONFIG, [f"data.root={data}", "model.encoder_weights=null"])
    torch.manual_seed(0)
    model = build_model(config.model, config.data.num_classes).eval()
    run_dir = root / "run"
    (run_dir / "fold_0").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    info = {"run_id": "bench", "experiment": config.experiment, "folds": [0], "debug": False}
    (run_dir / "run.json").write_text(json.dumps(info))
    torch.save({"model": model.state_dict()}, run_dir / "fold_0" / "best.ckpt")
    return run_dir, model, config


def agreement(root: Path) -> float:
    """The share of pixels on which segarena's and the plain loop's submissions agree (bf16
    rounding and channels-last order flip a few near-ties)."""
    ours = read_submission(root / "ours.csv", "csv", 256, SIZE)
    plain = read_submission(root / "plain.csv", "csv", 256, SIZE)
    same = [np.mean(ours[name] == plain[name]) for name in plain]
    return float(np.mean(same))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/camvid")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="the plain loop's batch")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="segarena-bench-predict-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    images = root / "images"
    images.mkdir()
    paths = sorted((Path(args.data) / "train").glob("*.png"))[: args.images]
    for path in paths:
        (images / path.name).symlink_to(path.resolve())
    paths = sorted(images.iterdir())
    run_dir, model, config = make_run(root, Path(args.data).resolve())

    ratios = {}
    for tta in ("none", "hflip"):
        spec = EnsembleSpec((run_dir,), overrides={"tta": tta}, device="cpu")
        ours, plain = [], []
        plain_predict(model, paths[: args.batch], config, root / "warm.csv", tta, args.batch, 0)
        for round_ in range(args.rounds):
            start = time.perf_counter()
            write_submission(spec, images, root / "ours.csv", workers=args.workers)
            ours.append(len(paths) / (time.perf_counter() - start))
            plain.append(
                plain_predict(model, paths, config, root / "plain.csv", tta, args.batch,
                              args.workers)
            )  # fmt: skip
            print(f"tta {tta}, round {round_ + 1}: segarena {ours[-1]:.2f} img/s, "
                  f"plain {plain[-1]:.2f} img/s")  # fmt: skip
        ratios[tta] = statistics.median(ours) / statistics.median(plain)
        print(f"tta {tta}: the two submissions agree on {100 * agreement(root):.2f}% of pixels")
        spread = max(o / p for o, p in zip(ours, plain)) - min(o / p for o, p in zip(ours, plain))
        print(f"tta {tta}: ratio {ratios[tta]:.2f} (per-round spread {spread:.2f})")
    print(f"{len(paths)} CamVid images, model {config.model.arch}/{config.model.encoder} at "
          f"{config.data.image_size}, csv {SIZE}, {args.workers} workers, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"ratio: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
