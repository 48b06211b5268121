"""Training's progress: one logged line per epoch always, and a live bar on terminals.

The epoch line is an INFO record of this module's logger, as every library message is (the
command line shows them on stdout). The live bar redraws itself in place, which a log record
cannot do, so it stays a rich display on stderr, shown only when stderr is a terminal and
someone asked for segarena's INFO lines (the command line does; a library user who has not
configured logging gets neither the lines nor the bar).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from segarena.run_dir.schema import EpochRecord

log = logging.getLogger(__name__)


class EpochProgress:
    """A live bar with loss, lr and images/s while an epoch runs (terminals only)."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    def live(self) -> bool:
        """Whether to draw the bar: enabled, INFO wanted, and stderr a terminal."""
        return self.enabled and log.isEnabledFor(logging.INFO) and self.console.is_terminal

    @contextmanager
    def epoch(
        self, fold: int, epoch: int, epochs: int, steps: int
    ) -> Iterator[Callable[[int, float, float, float], None] | None]:
        if not self.live():
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
        log.info(
            f"fold {fold} epoch {record.epoch}: loss {record.train_loss:.4f} "
            f"lr {record.lr:.2e} {record.images_per_s:.1f} img/s "
            f"(data wait {100 * record.data_wait_share:.0f}%){val}{stop}"
        )
