"""Console output for training: a rich progress bar on terminals, one line per epoch always."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from segarena.run_dir.schema import EpochRecord


class EpochProgress:
    """A live bar with loss, lr and images/s while an epoch runs (terminals only)."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    @contextmanager
    def epoch(
        self, fold: int, epoch: int, epochs: int, steps: int
    ) -> Iterator[Callable[[int, float, float, float], None] | None]:
        if not (self.enabled and self.console.is_terminal):
            yield None
            return
        bar = Progress(
            TextColumn(f"fold {fold} epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        task = bar.add_task("train", total=steps, info="")
        with bar:

            def on_step(step: int, loss: float, lr: float, images_per_s: float) -> None:
                info = f"loss {loss:.4f} lr {lr:.2e} {images_per_s:.1f} img/s"
                bar.update(task, completed=step, info=info)

            yield on_step

    def summary(self, fold: int, record: EpochRecord, best: float, stopping: bool) -> None:
        if not self.enabled:
            return
        val = f" val mIoU {record.val_miou:.4f} (best {best:.4f})" if record.validated else ""
        stop = "  early stop" if stopping else ""
        self.console.print(
            f"fold {fold} epoch {record.epoch}: loss {record.train_loss:.4f} "
            f"lr {record.lr:.2e} {record.images_per_s:.1f} img/s "
            f"(data wait {100 * record.data_wait_share:.0f}%){val}{stop}",
            highlight=False,
            soft_wrap=True,
        )
