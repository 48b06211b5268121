"""A training run: samples -> folds -> one fit per fold -> summary.json, records, MLflow."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from lightning_fabric import Fabric

from segarena.cleanse import cleanse_training
from segarena.config import Config, config_from_dict, dump_config
from segarena.data.folds import fold_indices, load_or_create_folds, read_folds
from segarena.data.readers import Sample, read_samples
from segarena.errors import TrainingError, UserError
from segarena.metrics import scores
from segarena.models import build_model, weights_record
from segarena.pseudo_data import pseudo_records, pseudo_samples, pseudo_summary
from segarena.records import (
    Tracker,
    environment,
    new_run_dir,
    write_json_atomic,
    write_text_atomic,
)
from segarena.train.budget import BudgetTooSmall, budget_line, budget_summary
from segarena.train.fit import FoldData, fit_fold


def select_folds(config: Config, fold: int | None, all_folds: bool) -> list[int]:
    """The folds to train: `--folds all`, `--fold N`, or fold 0."""
    count = config.split.fold_count
    if all_folds:
        return list(range(count))
    fold = 0 if fold is None else fold
    if not 0 <= fold < count:
        raise UserError(
            f"--fold {fold}: expected 0..{count - 1} for split.method="
            f"{config.split.method} with {count} fold(s)"
        )
    return [fold]


def debug_config(config: Config) -> Config:
    """--debug: 2 epochs, validation every epoch, no early stopping."""
    raw = config.model_dump(mode="json")
    raw["train"].update(epochs=2, budget_min=None, val_every=1, early_stopping=None)
    if raw["train"].get("swa"):  # SWA still runs, from epoch 2 at the latest
        raw["train"]["swa"]["start_epoch"] = min(raw["train"]["swa"]["start_epoch"], 2)
    return config_from_dict(raw, source="--debug")


def run_pseudo_samples(config: Config, samples: list[Sample], debug: bool) -> list[Sample]:
    """data.pseudo's training samples (a seeded subset under --debug), checked once a run."""
    limit = config.train.debug_samples if debug else None
    return pseudo_samples(config.data, samples, limit, config.train.seed)


def fold_data(
    samples: list[Sample],
    folds: list[int],
    fold: int,
    config: Config,
    debug: bool,
    pseudo: list[Sample] | None = None,
) -> FoldData:
    """Fold `fold`'s training and validation samples; `pseudo` (data.pseudo's samples, read
    here when not given) join the training set only."""
    train_idx, val_idx = fold_indices(folds, fold)
    if debug:  # a small, seeded subset keeps a debug run to seconds
        rng = random.Random(config.train.seed)
        n = config.train.debug_samples
        train_idx = sorted(rng.sample(train_idx, min(n, len(train_idx))))
        val_idx = sorted(rng.sample(val_idx, min(max(n // 2, 1), len(val_idx))))
    # data.cleanse edits (or drops) training samples only: validation masks stay as given
    train = cleanse_training([samples[i] for i in train_idx], config.data)
    # data.pseudo: model-labelled images train every fold; they never validate
    train += run_pseudo_samples(config, samples, debug) if pseudo is None else pseudo
    if not train or not val_idx:
        raise UserError(
            f"fold {fold} has {len(train)} training and {len(val_idx)} "
            "validation samples; both must be non-empty"
        )
    return FoldData(train, [samples[i] for i in val_idx])


def start_run(
    config: Config, out: Path, folds_to_train: list[int], debug: bool, samples: list[Sample]
) -> tuple[Path, dict[str, Any], list[int]]:
    """Create the run directory with its resolved config, folds.csv and run.json."""
    pseudo = pseudo_records(config.data, samples)  # checked before the run directory exists
    experiment_dir = out / config.experiment
    folds = load_or_create_folds(
        experiment_dir / "folds.csv", samples, config.split, config.data.num_classes
    )
    run_dir = new_run_dir(out, config.experiment, debug)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    shutil.copyfile(experiment_dir / "folds.csv", run_dir / "folds.csv")
    run_info = {
        "run_id": run_dir.name,
        "experiment": config.experiment,
        "folds": folds_to_train,
        "debug": debug,
        "mlflow_run_id": None,
        "pseudo": pseudo,
    }
    write_json_atomic(run_dir / "run.json", run_info)
    return run_dir, run_info, folds


def resume_run(run_dir: Path) -> tuple[Config, dict[str, Any], list[Sample], list[int]]:
    """Reload a run's own config, run.json, samples and folds.csv to continue it."""
    if not (run_dir / "run.json").is_file():
        raise UserError(f"--resume {run_dir}: not a segarena run directory (no run.json)")
    config = config_from_dict(
        yaml.safe_load((run_dir / "config.yaml").read_text()), source=str(run_dir / "config.yaml")
    )
    run_info = json.loads((run_dir / "run.json").read_text())
    samples = read_samples(config.data, config.split)
    folds = read_folds(run_dir / "folds.csv", samples, config.split)
    return config, run_info, samples, folds


def train(
    config: Config | None,
    out: Path,
    fold: int | None = None,
    all_folds: bool = False,
    debug: bool = False,
    resume: Path | None = None,
) -> Path:
    """Run (or resume) training; returns the run directory holding summary.json."""
    started = time.perf_counter()
    if resume is not None:
        config, run_info, samples, folds = resume_run(resume)
        run_dir, out = resume, resume.parent.parent
        debug = run_info["debug"]
    else:
        assert config is not None
        config = debug_config(config) if debug else config
        samples = read_samples(config.data, config.split)
        folds_to_train = select_folds(config, fold, all_folds)
        # a model (and weights) that cannot be built fails here, before any file is written
        build_model(config.model, config.data.num_classes)
        run_dir, run_info, folds = start_run(config, out, folds_to_train, debug, samples)
    fabric = make_fabric(config)
    weights = weights_record(config.model)
    env = environment(str(fabric.device), config.train.seed)
    write_json_atomic(run_dir / "env.json", {**env, "weights": weights})
    run_info["weights"] = weights
    tracker = Tracker(config, out, run_dir, run_info.get("mlflow_run_id"))
    run_info["mlflow_run_id"] = tracker.run_id
    write_json_atomic(run_dir / "run.json", run_info)
    fabric.print(f"run directory: {run_dir}")
    try:
        results, in_folds = [], 0.0  # in_folds: this session's seconds inside fit_fold
        pseudo = run_pseudo_samples(config, samples, debug)
        for k in run_info["folds"]:
            data = fold_data(samples, folds, k, config, debug, pseudo)
            extra = f" ({len(pseudo)} pseudo-labelled)" if config.data.pseudo else ""
            fabric.print(f"fold {k}: {len(data.train)} train{extra} / {len(data.val)} val images")
            outside_folds = time.perf_counter() - started - in_folds
            share = fold_budget_s(config, results, len(run_info["folds"]), outside_folds)
            fold_start = time.perf_counter()
            results.append(fit_fold(config, fabric, data, run_dir / f"fold_{k}", k, tracker, share))
            in_folds += time.perf_counter() - fold_start
        summary = summarize(config, results)
        if config.train.budget_min is not None:
            outside_folds = time.perf_counter() - started - in_folds
            summary["budget"] = budget_summary(config.train.budget_min, results, outside_folds)
            fabric.print(budget_line(summary["budget"]))
        summary.update(pseudo_summary(run_info.get("pseudo", []), run_dir, run_info, summary))
        write_json_atomic(run_dir / "summary.json", summary)
        tracker.log_metrics({"miou": summary["miou"], "miou_std": summary["miou_std"]}, 0)
        tracker.finish(run_dir / "summary.json")
    except BudgetTooSmall:
        if resume is None and not results:  # nothing trained: leave no run behind
            tracker.discard()
            shutil.rmtree(run_dir)
        else:
            tracker.finish(None, status="FAILED")
        raise
    except BaseException:
        tracker.finish(None, status="KILLED")
        raise
    if debug:
        check_loss_fell(results)
    return run_dir


def fold_budget_s(
    config: Config, results: list[dict], folds: int, outside_folds: float
) -> float | None:
    """train.budget_min: the next fold's seconds, an equal share of what is left. Spent are
    the finished folds' own seconds (over every session, for a resumed run) and this
    session's time outside the folds (start-up)."""
    if config.train.budget_min is None:
        return None
    spent = outside_folds + sum(r["seconds"] for r in results)
    return (config.train.budget_min * 60 - spent) / (folds - len(results))


def make_fabric(config: Config) -> Fabric:
    try:
        fabric = Fabric(
            accelerator=config.train.accelerator,
            devices=config.train.devices,
            precision=config.train.precision,
        )
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"train.accelerator/devices/precision: {exc}") from None
    fabric.launch()
    return fabric


FOLD_KEYS = ("fold", "miou", "best_epoch", "epochs", "swa_miou")  # summary.json per fold


def summarize(config: Config, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled (OOF) and per-fold scores; `miou` is the pooled mIoU of all folds' val images."""
    pooled = scores(np.sum([np.array(r["confusion"]) for r in results], axis=0))
    fold_mious = [r["miou"] for r in results]
    return {
        "miou": pooled["miou"],
        "miou_mean": float(np.mean(fold_mious)),
        "miou_std": float(np.std(fold_mious)),
        "per_class_iou": dict(zip(config.data.classes, pooled["per_class_iou"])),
        "pixel_acc": pooled["pixel_acc"],
        "folds": [{k: r[k] for k in FOLD_KEYS if k in r} for r in results],
        "epochs": config.train.epochs or [r["epochs"] for r in results],
        "train_images_per_s": float(np.mean([r["train_images_per_s"] for r in results])),
        "data_wait_share": float(np.mean([r["data_wait_share"] for r in results])),
        **swa_summary(results),
    }


def swa_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """train.swa: the pooled mIoU of the folds' swa.ckpt, when every fold has one."""
    if not results or any("swa_confusion" not in r for r in results):
        return {}
    pooled = scores(np.sum([np.array(r["swa_confusion"]) for r in results], axis=0))
    return {"swa_miou": pooled["miou"]}


# A fall smaller than this is float noise from batch order, not learning.
DEBUG_MIN_RELATIVE_FALL = 0.01


def check_loss_fell(results: list[dict[str, Any]]) -> None:
    """--debug contract: the training loss must fall (by >= 1%) from the first to the last epoch."""
    for r in results:
        losses = r["train_loss"]
        if len(losses) >= 2 and not losses[-1] <= losses[0] * (1 - DEBUG_MIN_RELATIVE_FALL):
            raise TrainingError(
                f"debug check failed: fold {r['fold']} training loss did not fall "
                f"({losses[0]:.4f} -> {losses[-1]:.4f}); check labels, lr and augmentations"
            )
