"""Train one fold: epochs, validation, checkpoints (+ EMA/SWA/top-k), resume, early stop, OOF.

`FoldTrainer.fit` is the table of contents; each step below it does one thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from lightning_fabric import Fabric

from segarena.config import Config
from segarena.metrics import scores
from segarena.model.build import unwrap
from segarena.records.tracking import Tracker
from segarena.run_dir.checkpoints import load_checkpoint, save_atomic
from segarena.run_dir.layout import RunDir
from segarena.run_dir.schema import EpochRecord, FoldResult
from segarena.train.averaging import bn_images
from segarena.train.budget import plan_budget, replan_budget
from segarena.train.distributed import (
    check_same_weights,
    from_rank_zero,
    gather_on_zero,
    mean_over_ranks,
    say,
    sync_buffers,
)
from segarena.train.loop import Learner, StepSettings, train_one_epoch, validate
from segarena.train.oof import OofCollector
from segarena.train.parts import FoldData, build_parts, reseed
from segarena.train.progress import EpochProgress
from segarena.train.state import LoopState

# train.budget_min builds the fold before its epochs are known; the schedule is rebuilt
PROVISIONAL_EPOCHS = 1000


@dataclass
class TrainHooks:
    """Calls into the loop, for tools and tests (e.g. to stop a run at a chosen point).

    on_epoch_start(epoch, learner): before epoch `epoch` (from 1) trains;
    on_update(learner): after every optimizer update;
    on_epoch_end(record, learner): after the epoch trained and validated, before it is saved.
    """

    on_epoch_start: Callable[[int, Learner], None] | None = None
    on_update: Callable[[Learner], None] | None = None
    on_epoch_end: Callable[[EpochRecord, Learner], None] | None = None


class FoldTrainer:
    """Trains fold `fold` of `run_dir` (into fold_<k>/), resuming from its last.ckpt if
    present.

    With several processes (segarena.train.distributed) rank 0 alone reads and writes
    the fold's files (and `tracker`, None elsewhere); the others receive what it reads."""

    def __init__(
        self, config: Config, fabric: Fabric, data: FoldData, run_dir: RunDir, fold: int, *,
        tracker: Tracker | None, budget_s: float | None = None, hooks: TrainHooks | None = None,
    ) -> None:  # fmt: skip
        self.config, self.fabric, self.data = config, fabric, data
        self.run_dir, self.fold, self.tracker = run_dir, fold, tracker
        self.fold_dir = run_dir.fold_dir(fold)
        self.budget_s, self.hooks = budget_s, hooks or TrainHooks()
        self.settings = StepSettings.of(config.train)
        self.progress = EpochProgress(enabled=fabric.is_global_zero)
        self.started = time.perf_counter()

    def fit(self) -> FoldResult:
        """Train the fold; returns its result (also written to fold_<k>/result.json)."""
        done = from_rank_zero(self.fabric, lambda: self.run_dir.fold_result(self.fold))
        if done is not None:  # finished before a resume: nothing left to do
            return done
        if self.fabric.is_global_zero:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
        self.set_up()
        self.restore()
        while self.state.epoch < self.epochs:  # train.budget_min may correct it after epoch 1
            record = self.train_epoch()
            if self.validates(record.epoch):
                self.validate_epoch(record)
            self.end_epoch(record)
            if self.early_stop():
                break
        result = self.finish()
        if self.fabric.is_global_zero:
            self.run_dir.write_fold_result(self.fold, result)
        return result

    def set_up(self) -> None:
        """Build the parts; with train.budget_min, plan the epochs (plan.json, kept on resume)."""
        self.plan = from_rank_zero(self.fabric, lambda: self.run_dir.plan(self.fold))
        epochs = self.plan.epochs if self.plan is not None else self.config.train.epochs
        self.parts = build_parts(
            self.config, self.fabric, self.data, self.fold_dir, epochs or PROVISIONAL_EPOCHS
        )
        if self.hooks.on_update is not None:
            self.parts.learner.on_update = self._on_update
        if epochs is None:
            assert self.budget_s is not None, "train.budget_min needs the fold's share of it"
            budget_s = self.budget_s - (time.perf_counter() - self.started)
            self.plan = plan_budget(self.config, self.fabric, self.parts, budget_s, self.fold)
            epochs = self.plan.epochs
            if self.fabric.is_global_zero:
                self.run_dir.write_plan(self.fold, self.plan)
        self.epochs = epochs

    def _on_update(self) -> None:
        self.parts.averaging.on_update()
        self.hooks.on_update(self.parts.learner)

    def restore(self) -> None:
        """The loop state from last.ckpt when a killed run left one; epochs logged after
        it (killed in between) are dropped from metrics.jsonl and trained again."""
        self.state = LoopState()
        last = self.run_dir.checkpoint_path(self.fold, "last")
        parts = self.parts
        ckpt = from_rank_zero(self.fabric, lambda: last.is_file() and load_checkpoint(last))
        if ckpt:
            unwrap(parts.learner.model).load_state_dict(ckpt["model"])
            parts.learner.optimizer.load_state_dict(ckpt["optimizer"])
            parts.learner.scheduler.load_state_dict(ckpt["scheduler"])
            parts.averaging.load_state_dict(ckpt)
            self.state = LoopState.from_checkpoint(ckpt["state"])
            say(self.fabric, f"fold {self.fold}: resuming after epoch {self.state.epoch}")
        # data.on_bad_image: skip -- one list of skipped images: the loader adds, last.ckpt keeps
        parts.skipped.extend([p for p in self.state.skipped if p not in parts.skipped])
        self.state.skipped = parts.skipped
        if self.fabric.is_global_zero:
            self.run_dir.keep_metrics(self.fold, through_epoch=self.state.epoch)
            parts.averaging.top_k.prune(self.state.top)  # epochs to train again left files
        self.seconds_before = self.state.seconds

    def train_epoch(self) -> EpochRecord:
        """Train one epoch. Reseeding per epoch makes its batches, augmentations and
        dropout the same whether or not the run was resumed before it."""
        epoch = self.state.epoch + 1
        self.epoch_started = time.perf_counter()
        reseed(self.parts, self.config.train.seed + epoch - 1)
        if self.hooks.on_epoch_start is not None:
            self.hooks.on_epoch_start(epoch, self.parts.learner)
        # SWALR holds the lr from train.swa.start_epoch on
        self.schedule = self.parts.averaging.schedule(epoch, self.parts.learner.scheduler)
        learner = replace(self.parts.learner, scheduler=self.schedule)
        steps = len(self.parts.loader)
        with self.progress.epoch(self.fold, epoch, self.epochs, steps) as on_step:
            stats = train_one_epoch(
                self.fabric, learner, self.parts.loader, self.settings, self.state, on_step=on_step
            )
        averaging = self.parts.averaging
        sync_buffers(self.fabric, [unwrap(learner.model), averaging.scored()])
        averaging.end_epoch(epoch)  # SWA averages the epoch's final weights
        return EpochRecord(
            epoch=epoch,
            # every process's images (their shares are equal: RankShard pads them)
            train_loss=mean_over_ranks(self.fabric, stats.loss),
            lr=stats.lr,
            images_per_s=stats.images_per_s * self.fabric.world_size,
            data_wait_share=stats.data_wait / max(stats.seconds, 1e-9),
            seconds=stats.seconds,
        )

    def validates(self, epoch: int) -> bool:
        return epoch % self.config.train.val_every == 0 or epoch == self.epochs

    def validate_epoch(self, record: EpochRecord) -> None:
        """Score the model (its EMA with train.ema); keep best.ckpt and the top-k."""
        scored = self.parts.averaging.scored()
        val = scores(self.val_matrix(scored))
        record.val_miou, record.val_pixel_acc = val["miou"], val["pixel_acc"]
        record.val_per_class_iou = val["per_class_iou"]
        checkpoint = {"model": scored.state_dict(), "epoch": record.epoch, "miou": val["miou"]}
        is_zero = self.fabric.is_global_zero
        if self.state.scored(record.epoch, val["miou"]) and is_zero:
            save_atomic(checkpoint, self.run_dir.checkpoint_path(self.fold, "best"))
        self.parts.averaging.top_k.offer(self.state.top, checkpoint, write=is_zero)

    def val_matrix(self, model: torch.nn.Module, on_probs=None) -> torch.Tensor:
        """Confusion matrix of `model` on the fold's validation images."""
        data = self.config.data
        with self.fabric.autocast():  # also for EMA / SWA copies Fabric never wrapped
            return validate(
                self.fabric, model, self.parts.vloader, num_classes=data.num_classes,
                ignore_index=data.ignore_index, mean_std=self.parts.learner.norm,
                on_probs=on_probs,
            ).matrix  # fmt: skip

    def end_epoch(self, record: EpochRecord) -> None:
        """Step the epoch schedule, report, and save: metrics.jsonl and MLflow first, then
        last.ckpt (a resume re-trains unsaved epochs); correct a budget plan after epoch 1."""
        self.schedule.step_epoch(record.epoch, record.val_miou)
        self.state.epoch = record.epoch
        self.state.seconds = self.seconds_before + time.perf_counter() - self.started
        self.progress.summary(self.fold, record, self.state.best_miou, self.early_stop())
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(record, self.parts.learner)
        # data.on_bad_image: skip -- images any process left out reach rank 0's last.ckpt
        skipped = self.parts.skipped
        gathered = dict.fromkeys(gather_on_zero(self.fabric, list(skipped)))
        skipped += [path for path in gathered if path not in skipped]
        if self.fabric.is_global_zero:
            self.save(record)
        self.fabric.barrier()
        if self.plan is not None and not self.plan.replanned:
            self.replan(record)

    def replan(self, record: EpochRecord) -> None:
        """train.budget_min: correct the epochs from epoch 1's whole cycle, its checkpoint
        writes and logging included (they are most of a tiny epoch), then save last.ckpt
        again with the schedule rebuilt over them."""
        self.state.seconds = self.seconds_before + time.perf_counter() - self.started
        cycle_s = time.perf_counter() - self.epoch_started
        # validation is planned apart (every val_every epochs) from the probe's timing
        epoch_s = max(record.seconds, cycle_s - (self.plan.val_s if record.validated else 0.0))
        self.plan = replan_budget(
            self.config, self.fabric, self.parts, self.plan, self.state,
            epoch_s=epoch_s, validated=record.validated, run_dir=self.run_dir, fold=self.fold,
        )  # fmt: skip
        self.epochs = self.plan.epochs
        if self.fabric.is_global_zero:
            self.save_last()
        self.fabric.barrier()

    def save(self, record: EpochRecord) -> None:
        self.run_dir.append_metrics(self.fold, record)
        metrics = {f"fold{self.fold}/{k}": v for k, v in record.to_json().items() if k != "epoch"}
        self.tracker.log_metrics(metrics, record.epoch)
        self.save_last()

    def save_last(self) -> None:
        learner = self.parts.learner
        checkpoint = {
            "model": unwrap(learner.model).state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": learner.scheduler.state_dict(),
            "state": self.state.to_checkpoint(),
            **self.parts.averaging.state_dict(),
        }
        save_atomic(checkpoint, self.run_dir.checkpoint_path(self.fold, "last"))
        self.parts.averaging.top_k.prune(self.state.top)  # only once last.ckpt no longer lists them

    def early_stop(self) -> bool:
        patience = self.config.train.early_stopping
        return patience is not None and self.state.epochs_without_gain >= patience

    def finish(self) -> FoldResult:
        """Write ema.ckpt / swa.ckpt, then score the best weights once more, writing OOF
        probabilities and the per-image matrices; returns the fold result."""
        config, fabric, parts = self.config, self.fabric, self.parts
        history = from_rank_zero(fabric, lambda: self.run_dir.history(self.fold))
        reseed(parts, config.train.seed + self.epochs)  # SWA's BN update draws batches
        images = bn_images(parts.loader, parts.learner.norm, config.train.channels_last)
        averaged = parts.averaging.finish(
            fabric, images, self.val_matrix, history[-1].epoch, history[-1].val_miou
        )
        weights = {"model": unwrap(parts.learner.model).state_dict()}
        check_same_weights(fabric, {**weights, **parts.averaging.state_dict()}, "the weights")
        best_path = self.run_dir.checkpoint_path(self.fold, "best")
        best = from_rank_zero(fabric, lambda: load_checkpoint(best_path))
        unwrap(parts.learner.model).load_state_dict(best["model"])
        # per-image confusion matrices let `segarena compare` resample images exactly
        oof = OofCollector(fabric, self.run_dir, self.fold, self.data.val, config)
        matrix = self.val_matrix(parts.learner.model, on_probs=oof)
        final = scores(matrix)
        oof.save()  # before result.json: a finished fold always has it
        return FoldResult(
            fold=self.fold,
            best_epoch=best["epoch"],
            epochs=len(history),
            miou=final["miou"],
            scores=final,
            confusion=matrix.tolist(),
            train_images_per_s=float(np.mean([r.images_per_s for r in history])),
            data_wait_share=float(np.mean([r.data_wait_share for r in history])),
            train_loss=[r.train_loss for r in history],
            **averaged,  # swa_miou, swa_confusion with train.swa
            seconds=self.seconds_before + time.perf_counter() - self.started,
            plan=self.plan,
            skipped_images=list(self.state.skipped),  # data.on_bad_image: skip
        )


def fit_fold(
    config: Config, fabric: Fabric, data: FoldData, run_dir: RunDir, fold: int, *,
    tracker: Tracker, budget_s: float | None = None, hooks: TrainHooks | None = None,
) -> FoldResult:  # fmt: skip
    """Train fold `fold` of `run_dir` (see FoldTrainer); returns its result."""
    trainer = FoldTrainer(
        config, fabric, data, run_dir, fold, tracker=tracker, budget_s=budget_s, hooks=hooks
    )
    return trainer.fit()
