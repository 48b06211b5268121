"""Weight averaging while a fold trains: EMA, SWA and the k best epochs.

- EMA (train.ema): timm's ModelEmaV3 of the weights, updated after every optimizer update.
  Validation scores the EMA, so best.ckpt and the top-k hold EMA weights; ema.ckpt holds
  the final EMA.
- SWA (train.swa): from epoch `start_epoch` SWALR owns the lr (stepped once per epoch) and
  each epoch's final weights join a torch AveragedModel. After the last epoch the BN
  statistics of the average are recomputed over the training images (averaged weights
  do not fit any model's running statistics), then swa.ckpt is written and scored.
- Top-k (train.save_top_k): the k best validated checkpoints as top/epoch_<e>.ckpt.

Their state travels in last.ckpt, so a killed and resumed run ends with the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from timm.utils import ModelEmaV3
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from segarena.config import SwaConfig, TrainConfig
from segarena.data.dataset import normalize
from segarena.metrics import scores
from segarena.model.build import unwrap
from segarena.run_dir.checkpoints import save_atomic
from segarena.train.distributed import say


class HeldLr:
    """Stands in for the base lr schedule during SWA epochs: SWALR owns the lr then."""

    def step_update(self, num_updates: int) -> None:
        pass

    def step_epoch(self, epoch: int, metric: float | None = None) -> None:
        pass


class Swa:
    """SWALR and an AveragedModel of the weights at the end of each epoch >= start_epoch.

    Epoch `start_epoch` trains at the lr the base schedule left; SWALR then moves it to
    `swa.lr` over `anneal_epochs` epochs (torch's convention: stepped after each epoch).
    """

    def __init__(self, cfg: SwaConfig, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.cfg = cfg
        self.model = unwrap(model)
        # Fabric's optimizer wrapper calls the plain one, whose step SWALR instruments to
        # check that the lr is stepped after the optimizer.
        self.optimizer = getattr(optimizer, "optimizer", optimizer)
        self.averaged: AveragedModel | None = None
        self.scheduler: SWALR | None = None

    def schedule(self, epoch: int, base: Any) -> Any:
        """The lr schedule epoch `epoch` (from 1) trains with: `base`, or HeldLr under SWALR."""
        if epoch < self.cfg.start_epoch:
            return base
        if self.scheduler is None:
            self.scheduler = self._swalr()
        return HeldLr()

    def _swalr(self) -> SWALR:
        return SWALR(
            self.optimizer,
            swa_lr=self.cfg.lr,
            anneal_epochs=self.cfg.anneal_epochs,
            anneal_strategy=self.cfg.anneal_strategy,
        )

    def end_epoch(self, epoch: int) -> None:
        """Average epoch `epoch`'s final weights in and step SWALR, from start_epoch on."""
        if epoch < self.cfg.start_epoch:
            return
        if self.averaged is None:
            self.averaged = AveragedModel(self.model)
        self.averaged.update_parameters(self.model)
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": None if self.averaged is None else self.averaged.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["model"] is not None:
            self.averaged = AveragedModel(self.model)
            self.averaged.load_state_dict(state["model"])
        if state["scheduler"] is not None:
            # A new SWALR's first step leaves the restored lr as it is (or sets swa.lr, which
            # it already is with anneal_epochs 0); its state then continues the annealing.
            self.scheduler = self._swalr()
            self.scheduler.load_state_dict(state["scheduler"])

    def finish(self, fabric: Fabric, images: Iterator[Tensor]) -> nn.Module | None:
        """The averaged model with BN statistics recomputed over `images` (None: no epoch
        was averaged, e.g. early stopping came first)."""
        if self.averaged is None:
            return None
        module = self.averaged.module
        with fabric.autocast():
            update_bn(images, module)
        if fabric.world_size > 1:
            # each rank saw its own shard of the images; all must hold the same model
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    for name in ("running_mean", "running_var"):
                        mean = fabric.all_reduce(getattr(layer, name), reduce_op="mean")
                        getattr(layer, name).copy_(mean)
        return module


def bn_images(
    loader: Any, norm: tuple[Tensor, Tensor], channels_last: bool = False
) -> Iterator[Tensor]:
    """The training loader's images, normalised on the device as training feeds them."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in loader:
        yield normalize(batch["image"], *norm).contiguous(memory_format=memory_format)


class TopK:
    """The k best validated checkpoints of a fold as top/epoch_<e>.ckpt (k=1: best.ckpt only).

    The ranking ([epoch, miou] pairs, best first) lives in the loop state saved in last.ckpt.
    A file that drops out is deleted only by `prune`, after a last.ckpt without it was
    written: a killed run never lists a deleted file, and files of epochs it will train
    again are pruned on resume.
    """

    def __init__(self, k: int, fold_dir: Path):
        self.k = k
        self.folder = fold_dir / "top"

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch_{epoch}.ckpt"

    def offer(self, ranking: list[list], checkpoint: dict[str, Any], write: bool) -> None:
        """Rank `checkpoint` ({"model", "epoch", "miou"}) and write it if it is in the top k."""
        if self.k < 2:
            return
        entry = [checkpoint["epoch"], checkpoint["miou"]]
        ranking.append(entry)
        ranking.sort(key=lambda e: (-e[1], e[0]))  # ties keep the earlier epoch, as best.ckpt
        del ranking[self.k :]
        if write and entry in ranking:
            save_atomic(checkpoint, self.path(entry[0]))

    def prune(self, ranking: list[list]) -> None:
        """Delete the top/ files the ranking no longer holds."""
        keep = {self.path(epoch) for epoch, _ in ranking}
        for path in self.folder.glob("epoch_*.ckpt"):
            if path not in keep:
                path.unlink(missing_ok=True)


class Averaging:
    """The fold's EMA, SWA and top-k checkpoints, as fit_fold drives them."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, optimizer: Any, fold_dir: Path):
        self.model = unwrap(model)
        self.fold_dir = fold_dir
        self.ema = None
        if cfg.ema is not None:
            self.ema = ModelEmaV3(self.model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
        self.ema_updates = 0  # the warmup's step count; saved for --resume
        self.swa = None if cfg.swa is None else Swa(cfg.swa, model, optimizer)
        self.top_k = TopK(cfg.save_top_k, fold_dir)

    def on_update(self) -> None:
        """After every optimizer update (the training loop's `on_update`)."""
        if self.ema is not None:
            self.ema_updates += 1
            # timm: with a step, update n decays by min(decay, 1 - n ** -2/3) under warmup,
            # and by 0 for n = 1 even without it, so the step is passed with warmup only
            step = self.ema_updates if self.ema.use_warmup else None
            self.ema.update(self.model, step=step)

    def scored(self) -> nn.Module:
        """The weights validation scores and best.ckpt / top-k keep: the EMA's when on."""
        return self.model if self.ema is None else self.ema.module

    def schedule(self, epoch: int, base: Any) -> Any:
        """The lr schedule of epoch `epoch` (from 1): `base` until SWA starts."""
        return base if self.swa is None else self.swa.schedule(epoch, base)

    def end_epoch(self, epoch: int) -> None:
        if self.swa is not None:
            self.swa.end_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The entries last.ckpt gains: EMA weights and SWA state, when on."""
        state: dict[str, Any] = {}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
            state["ema_updates"] = self.ema_updates
        if self.swa is not None:
            state["swa"] = self.swa.state_dict()
        return state

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Resume from a last.ckpt (one saved before an option was on leaves it fresh)."""
        if self.ema is not None and "ema" in checkpoint:
            self.ema.module.load_state_dict(checkpoint["ema"])
            self.ema_updates = checkpoint.get("ema_updates", 0)
        if self.swa is not None and "swa" in checkpoint:
            self.swa.load_state_dict(checkpoint["swa"])

    def finish(
        self,
        fabric: Fabric,
        images: Iterator[Tensor],
        val_matrix: Callable[[nn.Module], Tensor],
        epoch: int,
        last_miou: float | None,
    ) -> dict[str, Any]:
        """Write ema.ckpt and swa.ckpt after the last epoch `epoch`; returns the result.json
        entries (swa_miou, swa_confusion). `images` feed SWA's BN update; `val_matrix` gives
        a model's confusion matrix on the fold's validation images."""
        result: dict[str, Any] = {}
        if self.ema is not None and fabric.is_global_zero:
            weights = self.ema.module.state_dict()
            save_atomic({"model": weights, "epoch": epoch, "miou": last_miou}, self.path("ema"))
        if self.swa is None:
            return result
        module = self.swa.finish(fabric, images)
        if module is None:
            say(
                fabric,
                f"train.swa: training stopped at epoch {epoch}, before swa.start_epoch="
                f"{self.swa.cfg.start_epoch}; no swa.ckpt",
            )
            return result
        matrix = val_matrix(module)
        swa_miou = scores(matrix)["miou"]
        if fabric.is_global_zero:
            checkpoint = {"model": module.state_dict(), "epoch": epoch, "miou": swa_miou}
            save_atomic(checkpoint, self.path("swa"))
        return {"swa_miou": swa_miou, "swa_confusion": matrix.tolist()}

    def path(self, kind: str) -> Path:
        return self.fold_dir / f"{kind}.ckpt"
