"""A segarena config against the plain loop a user would write, at one wall clock, on any
dataset: scored on a labelled test split that neither arm has seen.

segarena trains CONFIG's fold 0 with train.budget_min = the budget (its probe, validation
and checkpoints count against it) and validates only its last epoch, so no checkpoint is
picked by a score. It is scored with the config's inference options (e.g. flip TTA) and,
as a second row, without TTA.

The plain loop is SMP's example loop: Unet with the config's encoder (and, when the config
asks for ImageNet weights, the same packaged weights), Adam (lr 1e-3), cross-entropy,
horizontal flips on the batch, float32, constant lr, every image held in memory as a tensor
at the config's image size, normalised as the config normalises (the packaged lite weights
expect mean = std = 0.5: anything else would handicap it). It trains on exactly the images
of segarena's fold 0 training part, for whole epochs until the budget is spent (an epoch
that would end past it is not started; its scoring is not counted).

Both arms are scored the same way: each test image at its mask's resolution (softmax,
resize to the mask, argmax), mIoU over classes present in target or prediction. segarena's
gain over the plain loop comes with a paired bootstrap 95% interval over the test images.
Last line: `gain: X.X`, segarena (config's inference) minus the plain loop, in mIoU points.

    python bench/budget_vs_plain.py CONFIG --budget-min 10 --test-coco test.json
    python bench/budget_vs_plain.py CONFIG --budget-min 10 --test-images DIR --test-masks DIR
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image

from segarena.config import load_config
from segarena.data.readers import Sample, load_image, load_mask
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.infer.evaluate import labelled_folder
from segarena.metrics import bootstrap_miou_diff_ci, confusion_matrix, scores
from segarena.model.pretrained import packaged_file
from segarena.model.weights import load_encoder_weights
from segarena.run_dir.layout import RunDir
from segarena.train.run import fit


def load_tensors(samples: list[Sample], size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """uint8 images [N,3,H,W] and int64 masks [N,H,W] resized to `size` (masks nearest)."""
    h, w = size
    images = [np.asarray(Image.fromarray(load_image(s.image_path)).resize((w, h),
                                                                         Image.BILINEAR))
              for s in samples]  # fmt: skip
    masks = [np.asarray(Image.fromarray(load_mask(s)).resize((w, h), Image.NEAREST))
             for s in samples]  # fmt: skip
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2), torch.from_numpy(
        np.stack(masks).astype(np.int64)
    )


def plain_loop(model, x, y, budget_s, norm, ignore_index, batch_size=8, seed=0):
    """SMP's example loop on in-memory tensors; returns (epochs, seconds, images/s)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)
    mean, std = norm
    start, epochs, epoch_s = time.perf_counter(), 0, 0.0
    while time.perf_counter() - start + epoch_s <= budget_s:
        epoch_start = time.perf_counter()
        model.train()
        for idx in torch.randperm(len(x)).split(batch_size):
            images, masks = (x[idx].float() / 255 - mean) / std, y[idx]
            flip = torch.rand(len(idx)) < 0.5
            images[flip], masks[flip] = images[flip].flip(-1), masks[flip].flip(-1)
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_s, epochs = time.perf_counter() - epoch_start, epochs + 1
    seconds = time.perf_counter() - start
    return epochs, seconds, epochs * len(x) / seconds


def norm_of(config) -> tuple[torch.Tensor, torch.Tensor]:
    """The config's normalisation as broadcastable [1,3,1,1] tensors (on 0..1 pixels)."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)
                 for v in (config.data.mean, config.data.std))  # fmt: skip
    return mean, std


def plain_model(config, num_classes: int) -> torch.nn.Module:
    """SMP Unet on the config's encoder, with the packaged ImageNet weights if it asks."""
    model = smp.Unet(config.model.encoder, encoder_weights=None, classes=num_classes)
    if config.model.encoder_weights == "imagenet":
        load_encoder_weights(model, packaged_file(config.model.encoder))
    return model


@torch.no_grad()
def plain_matrices(model, samples, size, norm, num_classes, ignore_index) -> np.ndarray:
    """Confusion matrix of each scored image, at its mask's resolution."""
    model.eval()
    mean, std = norm
    cms = []
    for sample in samples:
        image = Image.fromarray(load_image(sample.image_path)).resize(size[::-1], Image.BILINEAR)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
        target = torch.from_numpy(load_mask(sample).astype(np.int64))
        probs = model((x - mean) / std).softmax(1)
        probs = F.interpolate(probs, size=target.shape, mode="bilinear", align_corners=False)
        cms.append(confusion_matrix(probs.argmax(1)[0], target, num_classes, ignore_index))
    return np.stack([cm.numpy() for cm in cms]).astype(np.int64)


def ensemble_matrices(run_dir: Path, samples, num_classes, ignore_index, **options):
    """Confusion matrix of each scored image under segarena's own inference (predict's)."""
    spec = EnsembleSpec(run_dirs=(run_dir,), checkpoint="best", weights=None,
                        overrides=options, device="cpu", folds=None, batch_size=1)  # fmt: skip
    ensemble = Ensemble.from_spec(spec)
    cms = []
    for sample in samples:
        target = load_mask(sample).astype(np.int64)
        pred = ensemble.probs(load_image(sample.image_path), target.shape).argmax(0)
        cms.append(confusion_matrix(pred, torch.from_numpy(target), num_classes, ignore_index))
    return np.stack([cm.numpy() for cm in cms]).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--budget-min", type=float, required=True)
    parser.add_argument("--test-coco", type=Path, help="a labelled COCO json of the test split")
    parser.add_argument("--test-images", type=Path, help="default: the json's folder")
    parser.add_argument("--test-masks", type=Path, help="mask folder (instead of a json)")
    parser.add_argument("--out", default="runs_bench")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="override the config, e.g. --set train.batch_size=8")  # fmt: skip
    args = parser.parse_args()
    if (args.test_coco is None) == (args.test_masks is None):
        parser.error("give the test labels: --test-coco FILE or --test-images + --test-masks")
    images = args.test_images or args.test_coco.parent
    print(f"budget {args.budget_min:g} min per arm, torch threads {torch.get_num_threads()}")

    overrides = [f"train.budget_min={args.budget_min}", "train.epochs=null",
                 "train.val_every=1000", "records.mlflow=false", *args.overrides]  # fmt: skip
    config = load_config(args.config, overrides)
    classes, ignore = len(config.data.classes), config.data.ignore_index
    test = labelled_folder(config, images, args.test_masks, args.test_coco)
    start = time.perf_counter()
    run_dir = Path(fit(config, args.out).path)
    ours_minutes = (time.perf_counter() - start) / 60
    summary = json.loads((run_dir / "summary.json").read_text())
    ours = ensemble_matrices(run_dir, test, classes, ignore)
    ours_plain = ensemble_matrices(run_dir, test, classes, ignore, tta="none")

    samples, folds = RunDir(run_dir).samples_and_folds(config)
    trained = [s for s, fold in zip(samples, folds) if fold != 0]
    size = tuple(config.data.image_size)
    x, y = load_tensors(trained, size)
    torch.manual_seed(0)
    model, norm = plain_model(config, classes), norm_of(config)
    epochs, seconds, speed = plain_loop(model, x, y, args.budget_min * 60, norm, ignore)
    plain = plain_matrices(model, test, size, norm, classes, ignore)

    print(f"\ntrained on {len(trained)} images (fold 0's training part) at {size[0]}x{size[1]}, "
          f"scored on {len(test)} test images")  # fmt: skip
    rows = [
        (f"segarena ({config.infer.tta} TTA)", ours, summary["budget"]["epochs"][0],
         summary["train_images_per_s"], ours_minutes),
        ("segarena, no TTA", ours_plain, "", "", None),
        (f"plain {config.model.encoder}", plain, epochs, speed, seconds / 60),
    ]  # fmt: skip
    for name, cms, n_epochs, per_s, minutes in rows:
        rate = f"{per_s:5.1f} img/s" if per_s != "" else " " * 11
        mins = f"{minutes:5.1f} min" if minutes is not None else ""
        print(f"  {name:<34} mIoU {scores(cms.sum(0))['miou']:.4f}  {n_epochs!s:>3} epochs  "
              f"{rate}  {mins}")  # fmt: skip
    for name, cms in (("segarena", ours), ("segarena, no TTA", ours_plain)):
        gain = 100 * (scores(cms.sum(0))["miou"] - scores(plain.sum(0))["miou"])
        low, high = bootstrap_miou_diff_ci(plain, cms)
        print(f"  {name} minus plain: {gain:+.1f} points "
              f"(95% CI {100 * low:+.1f} to {100 * high:+.1f})")  # fmt: skip
    gain = 100 * (scores(ours.sum(0))["miou"] - scores(plain.sum(0))["miou"])
    print(f"gain: {gain:.1f}")


if __name__ == "__main__":
    main()
