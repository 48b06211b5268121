"""Training in several processes (DDP on Lightning Fabric): launching, rank 0's share of the
work, and failures that stop every process.

- Launch: `train.devices` processes per node. Fabric starts them (it runs the same command
  line again with LOCAL_RANK set), or torchrun does (Fabric reads torchrun's environment;
  the node count comes from it). CPU processes talk over gloo, GPUs over NCCL.
- Batches: `train.batch_size` is the global batch; each process loads batch_size / world.
- Rank 0 alone reads and writes the run directory and MLflow. What the other processes need
  from it (the session, checkpoints, plans) reaches them by broadcast (`from_rank_zero`), so
  that a node without the run directory can train.
- Failures: a process that fails prints its own message (prefixed with its rank, but for
  rank 0, whose errors are the job's). Rank 0 watches the processes it started (instead of
  Fabric, which would SIGKILL it without a word): it stops the others, marks the run
  failed and exits with the failed rank's code. The other processes stop quietly when
  rank 0 or a peer fails first. Collectives time out after torch's default (30 minutes).
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from lightning_fabric import Fabric
from lightning_fabric.accelerators import CPUAccelerator
from torch import nn

from segarena.config import Config
from segarena.errors import TrainingError, UserError

T = TypeVar("T")

log = logging.getLogger(__name__)
_children: list[subprocess.Popen] = []  # the processes Fabric's launcher started from here
_rank = 0  # this process's global rank, once launched
GRACE_S = 60  # a failed child: how long rank 0 may take to stop by itself (NCCL may block)
# How gloo and NCCL word a collective whose peer process is gone
UNUSED = "find_unused_parameters=True"  # torch's DDP error for parameters without gradients
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker crash")


def is_rank_zero() -> bool:
    """Whether this process reports (prints summaries): rank 0, or the only process."""
    return _rank == 0


def say(fabric: Fabric, message: str, level: int = logging.INFO) -> None:
    """Log `message` on the job's first process only (Fabric.print prints once per node).

    Library code logs and never prints: the command line shows segarena's INFO lines on
    stdout and its warnings on stderr (segarena.cli.common.show_logs)."""
    if fabric.is_global_zero:
        log.log(level, message, stacklevel=2)


def _torchrun_layout() -> tuple[int, int] | None:
    """(processes per node, nodes) when torchrun started this process, else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_torchelastic_launched()):
        return None
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    return per_node, int(os.environ["WORLD_SIZE"]) // per_node


def start_fabric(config: Config, debug: bool = False) -> Fabric:
    """Fabric for train.accelerator / devices / strategy / precision, launched: from here on
    this process is one rank of the job. Bad settings fail first, before any process starts."""
    train = config.train
    devices, nodes = train.devices, 1
    layout = _torchrun_layout()
    if layout is not None:
        if devices not in ("auto", layout[0]):
            raise UserError(
                f"train.devices={devices}, but torchrun started {layout[0]} process(es) per "
                f"node (--nproc-per-node); expected train.devices={layout[0]} or auto"
            )
        devices, nodes = layout
    _check_gpus(train.accelerator, devices)
    try:
        fabric = Fabric(
            accelerator=train.accelerator, devices=devices, num_nodes=nodes,
            strategy=train.strategy, precision=train.precision,
        )  # fmt: skip
    except (ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"train.accelerator/devices/strategy/precision: {exc}") from None
    _check_world(config, fabric, debug)
    fabric.launch()
    global _rank
    _rank = fabric.global_rank
    _adopt_children(fabric)
    return fabric


def _check_gpus(accelerator: str, devices: int | str) -> None:
    if accelerator in ("gpu", "cuda") and isinstance(devices, int):
        found = torch.cuda.device_count()
        if devices > found:
            raise UserError(
                f"train.devices={devices} with train.accelerator={accelerator}: this machine "
                f"has {found} GPU(s); expected at most {found} (or train.accelerator=cpu)"
            )


def _check_world(config: Config, fabric: Fabric, debug: bool) -> None:
    """UserError for settings that cannot split over the job's processes."""
    train, world = config.train, fabric.world_size
    per_node = getattr(fabric.strategy, "num_processes", 1)
    cores = len(os.sched_getaffinity(0))
    if isinstance(fabric.accelerator, CPUAccelerator) and per_node > cores:
        # gloo would run them, but each process would get a fraction of a core
        raise UserError(
            f"train.devices={train.devices}: {per_node} processes on CPU, but this machine "
            f"has {cores} CPU core(s) and no GPU in use; expected at most {cores}"
        )
    if train.batch_size % world:
        raise UserError(
            f"train.batch_size={train.batch_size} does not divide across the {world} "
            f"processes: it is the global batch and each process loads batch_size / {world}; "
            f"expected a multiple of {world}"
        )
    if debug and train.debug_samples // 2 < world:
        raise UserError(
            f"--debug with {world} processes: train.debug_samples={train.debug_samples} "
            f"validates {max(train.debug_samples // 2, 1)} image(s), fewer than one per process;"
            f" expected train.debug_samples >= {2 * world}"
        )


def _adopt_children(fabric: Fabric) -> None:
    """Watch the processes Fabric's launcher started here, instead of Fabric: its observer
    SIGKILLs every process, this one included, when one fails, so the run could neither say
    which rank failed nor be marked failed. (It ends once its list is empty.)"""
    procs = getattr(fabric.strategy.launcher, "procs", None)
    if not procs:
        return
    _children.extend(procs)
    procs.clear()
    threading.Thread(target=_watch_children, daemon=True, name="segarena-ranks").start()
    atexit.register(_stop_children, wait_s=GRACE_S)


def _failed_child(wait_s: float = 0.0) -> tuple[int, int] | None:
    """(rank, exit code) of the first started process that exited with an error."""
    deadline = time.monotonic() + wait_s
    while True:
        for rank, proc in enumerate(_children, start=1):
            if proc.poll():
                return rank, proc.returncode
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _watch_children() -> None:
    """A failed child ends its peers' collectives (gloo) and rank 0 stops by itself; should
    this process still run GRACE_S later (blocked in NCCL), stop the job from here."""
    while (failed := _failed_child()) is None:
        time.sleep(1.0)
    time.sleep(GRACE_S)
    log.error("process rank %d stopped with exit code %d; stopping the job", *failed)
    _stop_children()
    os._exit(failed[1])


def _stop_children(wait_s: float = 0.0) -> None:
    """Wait up to `wait_s` for the started processes to end, then kill the rest (SIGKILL:
    they are mid-collective, and a killed process prints nothing)."""
    deadline = time.monotonic() + wait_s
    for proc in _children:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RankZeroStopped(Exception):
    """Rank 0 failed while the other processes waited for it; they stop quietly."""

    def __init__(self, code: int) -> None:
        super().__init__(f"rank 0 stopped (exit code {code})")
        self.code = code


def exit_code(exc: BaseException) -> int:
    """The exit code segarena's command line gives `exc` (UserError 2, Ctrl-C 130, else 1)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 2 if isinstance(exc, UserError) else 1


def from_rank_zero(fabric: Fabric, make: Callable[[], T]) -> T:
    """`make()`, run by rank 0 alone; every process gets its value. When it raises, rank 0
    raises the error and the other processes raise RankZeroStopped."""
    if fabric.world_size == 1:
        return make()
    if fabric.global_rank == 0:
        try:
            value = make()
        except BaseException as exc:
            fabric.broadcast(RankZeroStopped(exit_code(exc)), src=0)
            raise
        return fabric.broadcast(value, src=0)
    value = fabric.broadcast(None, src=0)
    if isinstance(value, RankZeroStopped):
        raise value
    return value


def rank_failure(fabric: Fabric, exc: BaseException, *, shared: bool = False) -> BaseException:
    """The exception this process ends with when `exc` stops it in a job of several
    processes. `shared`: every process raised the same error (rank 0 alone reports it).

    Rank 0's own error (bad data found for every rank, Ctrl-C, ...) is the job's: it stops
    the others and raises it as it is. A collective that failed because a peer is gone
    (gloo says so at once) is reported as that peer's failure, with its exit code.
    """
    if fabric.world_size == 1:
        return exc
    if UNUSED in str(exc):  # every process finds it at its second step
        shared = True
        exc = UserError(
            "DDP: the model has parameters that no forward pass uses (e.g. encoder layers past "
            "model.kwargs.encoder_depth); set train.strategy=ddp_find_unused_parameters_true"
        )
    rank = fabric.global_rank
    peer_gone = any(text in str(exc) for text in PEER_GONE)
    if rank != 0:
        if shared or peer_gone or isinstance(exc, (RankZeroStopped, KeyboardInterrupt)):
            code = exc.code if isinstance(exc, RankZeroStopped) else exit_code(exc)
            return SystemExit(code)  # rank 0, or the process that failed, says why
        return _with_rank(exc, rank)
    if not peer_gone:
        _stop_children(wait_s=2.0 if shared else 0.0)  # the others end by themselves then
        return exc
    failed = _failed_child(wait_s=5.0)
    _stop_children()
    if failed is None:  # torchrun started the processes: it reports which one failed
        return TrainingError(
            f"another process of the job stopped (its message is above): {str(exc)[:200]}"
        )
    failed_rank, code = failed
    kind = UserError if code == 2 else TrainingError
    return kind(
        f"process rank {failed_rank} stopped with exit code {code} (its message is above); "
        "every process of the job was stopped"
    )


def _with_rank(exc: BaseException, rank: int) -> BaseException:
    """`exc` with the failing rank in its message (segarena's own errors) or as a note."""
    if type(exc) in (UserError, TrainingError):
        renamed = type(exc)(f"rank {rank}: {exc}")
        renamed.__cause__ = exc
        return renamed
    if isinstance(exc, Exception):
        exc.add_note(f"(raised in process rank {rank})")
    return exc


def sync_buffers(fabric: Fabric, modules: Iterable[nn.Module]) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics) of `modules`.

    DDP keeps the weights identical, but each process updates its BN statistics on its own
    batches (and the EMA averages them): once per epoch, before validation and the
    checkpoint, they become rank 0's, so that every rank scores and saves the same model.
    """
    if fabric.world_size == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def mean_over_ranks(fabric: Fabric, value: float) -> float:
    """The mean of `value` over the processes (each process's own when alone)."""
    if fabric.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=fabric.device)
    torch.distributed.all_reduce(total)
    return float(total) / fabric.world_size


def check_same_weights(fabric: Fabric, state: dict[str, Any], what: str) -> None:
    """TrainingError unless every process holds bit-identical tensors in `state` (weights,
    EMA, SWA): a cheap checksum per process, compared on all of them."""
    if fabric.world_size == 1:
        return
    tensors = list(_tensors(state))
    total = sum(float(t.double().sum()) for t in tensors)
    spread = sum(float(t.double().abs().sum()) for t in tensors)
    mine = torch.tensor([total, spread], dtype=torch.float64, device=fabric.device)
    every = [torch.empty_like(mine) for _ in range(fabric.world_size)]
    torch.distributed.all_gather(every, mine)
    sums = torch.stack(every).cpu()
    if not bool((sums == sums[0]).all()):
        raise TrainingError(f"{what} differ between the processes (checksums {sums.tolist()})")


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def gather_on_zero(fabric: Fabric, items: list[T]) -> list[T]:
    """Every process's `items`, concatenated in rank order on rank 0 ([] elsewhere)."""
    if fabric.world_size == 1:
        return items
    gathered: list[Any] | None = [None] * fabric.world_size if fabric.global_rank == 0 else None
    torch.distributed.gather_object(items, gathered, dst=0)
    return [item for part in gathered or [] for item in part]
