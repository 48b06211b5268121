"""Prediction speed: `segarena predict` against the plain loop a user would write.

The plain loop reads each image with OpenCV and resizes it to the model's input size in
DataLoader workers (uint8 tensors cross the process boundary), normalises the batch, runs
the model, upsamples the probabilities to the submission's 256x256, takes the argmax and
writes the csv. With `--tta hflip` it also averages the softmax of the flipped view.
segarena runs `write_submission` on the same run directory and images: its own loader,
resize, batching of same-size images, TTA, and a submission validated before it is moved
into place.

The peer gets what segarena gets (2026-12-05): the same precision (`--precision`, written
into the run's config: bf16 autocast or float32), channels-last memory, normalisation on
the batch, and segarena's vectorised csv encoder (`encode_pixels`) instead of joining one
Python string per pixel, so the ratio measures the pipelines, not those tricks. A third
arm, the plain loop as a user first writes it (default memory format, one Python string
per pixel), shows what segarena's defaults buy; its ratio is printed above the last line.

Both run the same weights on the same images in this process, in alternating order from
round to round, so that machine noise hits both alike. The model is the CamVid recipe's
(Unet, lite0, 192x256) with random weights (speed does not depend on them). The last line
is `ratio: X.XX`, the worse of the two settings (segarena images/s over plain images/s).

    python bench/predict.py [--data ../shared/data/camvid] [--images 200] [--rounds 3]
                            [--precision 32-true|bf16-mixed]
"""

from __future__ import annotations

import argparse
import atexit
import copy
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
from segarena.submission.codecs import encode_pixels, read_submission

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
SIZE = (256, 256)  # the csv submission's mask size


class Frames(Dataset):
    """What a user writes: read, resize to the model's size, CHW uint8."""

    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = cv2.cvtColor(cv2.imread(str(self.paths[index])), cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_LINEAR)
        return self.paths[index].name, torch.from_numpy(image.transpose(2, 0, 1).copy())


def per_pixel_string(mask: np.ndarray) -> str:
    """The csv cell as a user first writes it: one Python string per pixel."""
    return " ".join(str(value) for value in mask.ravel())


@torch.inference_mode()
def plain_predict(
    model, paths, config, out: Path, tta: str, batch: int, workers: int, as_user: bool = False
) -> float:
    """The hand-written loop; returns images/s. `as_user`: default memory format (give it
    a model in that format) and a per-pixel csv string, as a user first writes it."""
    encode = per_pixel_string if as_user else encode_pixels
    memory = torch.contiguous_format if as_user else torch.channels_last
    start = time.perf_counter()
    mean = torch.tensor(config.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.data.std).view(1, 3, 1, 1)
    loader = DataLoader(Frames(paths, config.data.image_size), batch_size=batch,
                        num_workers=workers)  # fmt: skip
    bf16 = config.train.precision == "bf16-mixed"
    with open(out, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image_id", "PredictionString"])
        for names, images in loader:
            images = ((images.float() / 255 - mean) / std).contiguous(memory_format=memory)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                probs = model(images).float().softmax(1)
                if tta == "hflip":
                    probs = (probs + model(images.flip(3)).float().softmax(1).flip(3)) / 2
            probs = F.interpolate(probs, SIZE, mode="bilinear", align_corners=False)
            for name, mask in zip(names, probs.argmax(1).numpy().astype(np.uint8)):
                writer.writerow([name, encode(mask)])
    return len(paths) / (time.perf_counter() - start)


def make_run(root: Path, data: Path, precision: str) -> tuple[Path, torch.nn.Module, object]:
    """A one-fold run directory holding the recipe's model with random weights."""
    overrides = [f"data.root={data}", "model.encoder_weights=null", f"train.precision={precision}"]
    config = load_config(CONFIG, overrides)
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
    parser.add_argument(
        "--precision", choices=["32-true", "bf16-mixed"], default="32-true",
        help="both sides' (bf16 is 20x slower on a CPU without AVX512-BF16)",
    )  # fmt: skip
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="segarena-bench-predict-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    images = root / "images"
    images.mkdir()
    paths = sorted((Path(args.data) / "train").glob("*.png"))[: args.images]
    for path in paths:
        (images / path.name).symlink_to(path.resolve())
    paths = sorted(images.iterdir())
    run_dir, model, config = make_run(root, Path(args.data).resolve(), args.precision)
    user_model = copy.deepcopy(model)  # the default memory format
    model = model.to(memory_format=torch.channels_last)  # as segarena's Ensemble loads it

    ratios, user_ratios = {}, {}
    for tta in ("none", "hflip"):
        spec = EnsembleSpec((run_dir,), overrides={"tta": tta}, device="cpu")
        ours, plain, user = [], [], []
        plain_predict(model, paths[: args.batch], config, root / "warm.csv", tta, args.batch, 0)
        for round_ in range(args.rounds):
            sides = ("ours", "plain", "user")
            for side in sides[round_ % 3 :] + sides[: round_ % 3]:
                if side == "ours":
                    start = time.perf_counter()
                    write_submission(spec, images, root / "ours.csv", workers=args.workers)
                    ours.append(len(paths) / (time.perf_counter() - start))
                elif side == "plain":
                    plain.append(plain_predict(model, paths, config, root / "plain.csv", tta,
                                               args.batch, args.workers))  # fmt: skip
                else:
                    user.append(plain_predict(user_model, paths, config, root / "user.csv", tta,
                                              args.batch, args.workers, as_user=True))  # fmt: skip
            print(f"tta {tta}, round {round_ + 1}: segarena {ours[-1]:.2f} img/s, "
                  f"plain {plain[-1]:.2f} img/s, plain as a user writes it "
                  f"{user[-1]:.2f} img/s")  # fmt: skip
        ratios[tta] = statistics.median(ours) / statistics.median(plain)
        user_ratios[tta] = statistics.median(ours) / statistics.median(user)
        print(f"tta {tta}: ratio against the plain loop as a user writes it (default memory "
              f"format, a Python string per pixel) {user_ratios[tta]:.2f}")  # fmt: skip
        print(f"tta {tta}: the two submissions agree on {100 * agreement(root):.2f}% of pixels")
        spread = max(o / p for o, p in zip(ours, plain)) - min(o / p for o, p in zip(ours, plain))
        print(f"tta {tta}: ratio {ratios[tta]:.2f} (per-round spread {spread:.2f})")
    print(f"{len(paths)} CamVid images, model {config.model.arch}/{config.model.encoder} at "
          f"{config.data.image_size}, csv {SIZE}, {args.workers} workers, "
          f"{args.precision}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"ratio: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
