"""Inference commands of the `segarena` CLI: evaluate, predict, validate-submission,
tune-weights and pseudo."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from segarena.cli.common import (
    MergeOption,
    OverlapOption,
    ScalesOption,
    SwBatchOption,
    TtaOption,
    WindowOption,
    friendly_errors,
)
from segarena.errors import UserError

CheckpointOption = typer.Option(
    "best", "--checkpoint", help="best, last, ema, swa, or top (every kept top-k epoch)."
)
WeightsOption = typer.Option(None, "--weights", help="One weight per run dir, e.g. 0.7,0.3.")
DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
WorkersOption = typer.Option(2, "--workers", help="Image-decoding worker processes.")
BatchOption = typer.Option(8, "--batch-size", help="Same-size images per forward pass.")


def ensemble_spec(run_dirs: list[Path], options: Mapping[str, Any]):
    """The EnsembleSpec of an inference command: its run directories and its shared
    options, read by parameter name from `options` (the command's locals())."""
    from segarena.infer.ensemble import EnsembleSpec
    from segarena.infer.options import cli_overrides, parse_floats

    weights = parse_floats(options["weights"], "--weights")
    infer = {
        k: options[k] for k in ("tta", "scales", "merge", "window", "overlap", "sw_batch_size")
    }
    return EnsembleSpec(
        run_dirs=tuple(run_dirs),
        checkpoint=options["checkpoint"],
        weights=None if weights is None else tuple(weights),
        overrides=cli_overrides(**infer),
        device=options["device"],
        batch_size=options.get("batch_size", 8),
    )


@friendly_errors
def evaluate(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories (several: an ensemble)."),
    split: str = typer.Option("val", "--split", help="val (each fold's own), train or all."),
    checkpoint: str = CheckpointOption,
    weights: str = WeightsOption,
    fold: int = typer.Option(None, "--fold", help="Only this fold's checkpoints."),
    images: Path = typer.Option(None, "--images", help="Score a labelled folder instead..."),
    masks: Path = typer.Option(None, "--masks", help="...with its masks (matched by stem)."),
    coco: Path = typer.Option(
        None, "--coco", help="...or its COCO json (--images defaults to the json's folder)."
    ),
    tta: str = TtaOption,
    scales: str = ScalesOption,
    merge: str = MergeOption,
    window: str = WindowOption,
    overlap: float = OverlapOption,
    sw_batch_size: int = SwBatchOption,
    device: str = DeviceOption,
    workers: int = WorkersOption,
    batch_size: int = BatchOption,
) -> None:
    """Score runs (or their ensemble) with any inference options, as predict would run them."""
    from segarena.infer.evaluate import evaluate_ensemble

    spec = ensemble_spec(run_dirs, locals()).with_folds(None if fold is None else [fold])
    if masks is not None and coco is not None:
        raise UserError("--masks and --coco: give one of them as the labels of --images")
    if images is not None and masks is None and coco is None:
        raise UserError("--images needs its labels: --masks FOLDER or --coco FILE")
    if masks is not None and images is None:
        raise UserError("--masks needs --images: a labelled folder needs both")
    result = evaluate_ensemble(spec, split, images=images, masks=masks, coco=coco,
                               workers=workers)  # fmt: skip
    per_fold = ", ".join(f"{f['fold']}: {f['miou']:.4f}" for f in result["folds"])
    typer.echo(f"{result['split']} mIoU {result['miou']:.4f} (folds {per_fold})")


@friendly_errors
def predict(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories; all their folds ensemble."),
    images: Path = typer.Option(None, "--images", help="Folder of the images to predict."),
    out: Path = typer.Option(..., "--out", help="Submission file (csv, rle) or folder (png)."),
    coco: Path = typer.Option(
        None, "--coco", help="test.json: its images, in its order (--images: its folder)."
    ),
    tta: str = TtaOption,
    scales: str = ScalesOption,
    merge: str = MergeOption,
    window: str = WindowOption,
    overlap: float = OverlapOption,
    sw_batch_size: int = SwBatchOption,
    fmt: str = typer.Option("csv", "--format", help="csv (image_id,PredictionString), rle, png."),
    sample: Path = typer.Option(None, "--sample", help="Sample submission: ids and their order."),
    size: str = typer.Option(None, "--size", help="Mask N or H,W (csv: 256; else image size)."),
    checkpoint: str = CheckpointOption,
    weights: str = WeightsOption,
    device: str = DeviceOption,
    workers: int = WorkersOption,
    batch_size: int = BatchOption,
) -> None:
    """Predict a folder of images with an ensemble of runs and write a validated submission."""
    from segarena.infer.options import parse_size
    from segarena.infer.submit import write_submission

    spec = ensemble_spec(run_dirs, locals())
    shape = parse_size(size, "--size")
    if images is None and coco is None:
        raise UserError("predict: give --images FOLDER, or --coco test.json")
    images = Path(coco).parent if images is None else images
    count = write_submission(spec, images, out, fmt=fmt, sample=sample, size=shape,
                             workers=workers, coco=coco)  # fmt: skip
    typer.echo(f"wrote {out} ({count} images, {fmt}, validated)")


@friendly_errors
def validate_submission(
    file: Path = typer.Argument(..., help="Submission file (csv, rle) or folder (png)."),
    sample: Path = typer.Option(..., "--sample", help="The contest's sample submission."),
    classes: int = typer.Option(None, "--classes", help="Class count (default: ids 0..255)."),
    size: str = typer.Option("256", "--size", help="Mask N or H,W; 'any' skips the check."),
    fmt: str = typer.Option("csv", "--format", help="csv, rle or png."),
) -> None:
    """Check a submission against the sample: ids, order, row count, mask size, classes."""
    from segarena.infer.options import parse_size
    from segarena.submission.check import validate_submission as check

    shape = None if size == "any" else parse_size(size, "--size")
    count = check(file, sample, classes, shape, fmt)
    typer.echo(f"{file}: valid ({count} rows)")


@friendly_errors
def tune_weights(
    run_dirs: list[Path] = typer.Argument(..., help="Runs of one experiment, --folds all each."),
    steps: int = typer.Option(10, "--steps", help="Weights move in steps of 1/steps."),
    out: Path = typer.Option(None, "--out", help="Write the result as json here."),
) -> None:
    """Ensemble weights that maximise out-of-fold mIoU, against the plain mean."""
    from segarena.infer.tune_weights import tune_weights as run_tune
    from segarena.util.files import write_json_atomic

    result = run_tune(run_dirs, steps)
    each = ", ".join(f"{m:.4f}" for m in result["miou_each"])
    typer.echo(f"OOF mIoU over {result['images']} images: each run {each}")
    typer.echo(f"plain mean {result['miou_mean']:.4f}")
    typer.echo(f"tuned      {result['miou_tuned']:.4f} (in-sample: tuned on these images)")
    typer.echo(f"cross-fit  {result['miou_crossfit']:.4f} (tuned on the other folds)")
    typer.echo("--weights " + ",".join(f"{w:g}" for w in result["weights"]))
    if out is not None:
        write_json_atomic(out, result)
        typer.echo(f"wrote {out}")


@friendly_errors
def pseudo(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories; all their folds ensemble."),
    images: Path = typer.Option(None, "--images", help="Folder of unlabelled images..."),
    coco: Path = typer.Option(
        None, "--coco", help="...or a test.json: its images, in its order (--images: its folder)."
    ),
    out: Path = typer.Option(..., "--out", help="New folder: masks/, pairs.txt, pseudo.json."),
    threshold: float = typer.Option(
        0.9, "--threshold", help="Keep a pixel's argmax where its probability reaches this."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an earlier pseudo folder."),
    tta: str = TtaOption,
    scales: str = ScalesOption,
    merge: str = MergeOption,
    window: str = WindowOption,
    overlap: float = OverlapOption,
    sw_batch_size: int = SwBatchOption,
    checkpoint: str = CheckpointOption,
    weights: str = WeightsOption,
    device: str = DeviceOption,
    workers: int = WorkersOption,
    batch_size: int = BatchOption,
) -> None:
    """Pseudo-label a folder of images (confident pixels only) for data.pseudo."""
    from segarena.labels.pseudo import write_pseudo_labels

    if images is None and coco is None:
        raise UserError("pseudo: give --images FOLDER, or --coco test.json")
    images = Path(coco).parent if images is None else images
    spec = ensemble_spec(run_dirs, locals())
    manifest = write_pseudo_labels(
        spec, images, out, threshold=threshold, workers=workers, force=force, coco=coco
    )
    typer.echo(
        f"wrote {out}: {manifest['image_count']} images, {manifest['kept_share']:.1%} of "
        f"pixels kept at threshold {threshold}; train on them with --set data.pseudo={out}"
    )
