"""`python tests/kill_at.py POINT N ARGS...`: `segarena ARGS...` in this process, SIGKILLed
the N-th time (from 1) it reaches POINT, as the OOM killer or a lost machine would stop it:
no exception, no clean-up, no atexit. POINT `none` runs it to the end.

Each point wraps a function the run really calls (here, never in segarena's code):

  train-step   an optimizer update inside a training epoch (segarena.train.loop.update)
  validation   a validation forward pass (segarena.train.loop.mask_probs), epoch or final
  checkpoint   torch.save of last.ckpt, killed with its temporary .last.ckpt.tmp half written
  swa-bn       SWA's BN update (update_bn as segarena.train.averaging calls it), killed
               after its first batch
  oof          np.save of an out-of-fold file (fold_<k>/oof/), killed half written
  fold-set-up  a fold's set-up (segarena.train.fold.build_parts): the run directory
               exists, no epoch has started (not in POINTS: for tests/test_ablate.py)

One intra-op thread: a run and its resumption must do the same float sums to give the
same bytes, and the test machine's cores are shared.
"""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

POINTS = ("train-step", "validation", "checkpoint", "swa-bn", "oof")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Countdown:
    """True on the n-th call of `reached`."""

    def __init__(self, n: int) -> None:
        self.left = n

    def reached(self) -> bool:
        self.left -= 1
        return self.left == 0


def write_half_and_die(data: bytes, file) -> None:
    """Write the first half of `data` to `file` (a path or an open binary file), then die."""
    if isinstance(file, str | os.PathLike):
        Path(file).write_bytes(data[: len(data) // 2])
    else:
        file.write(data[: len(data) // 2])
        file.flush()
    die()


def die_on_call(module, name: str, countdown: Countdown) -> None:
    """Replace `module.name` by a wrapper that dies when `countdown` is reached."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        if countdown.reached():
            die()
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


def install(point: str, n: int) -> None:
    """Wrap POINT's function so that its n-th call kills this process."""
    import segarena.train.averaging as averaging
    import segarena.train.fold as fold
    import segarena.train.loop as loop

    countdown = Countdown(n)
    plain = {  # points that die as the function is called
        "train-step": (loop, "update"),
        "validation": (loop, "mask_probs"),
        "fold-set-up": (fold, "build_parts"),
    }
    if point in plain:
        die_on_call(*plain[point], countdown)
    elif point == "checkpoint":
        real_save = torch.save

        def save(obj, file, *args, **kwargs):
            if Path(file).name == ".last.ckpt.tmp" and countdown.reached():
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                write_half_and_die(buffer.getvalue(), file)
            return real_save(obj, file, *args, **kwargs)

        torch.save = save
    elif point == "swa-bn":
        real_update_bn = averaging.update_bn

        def update_bn(loader, model, *args, **kwargs):
            if not countdown.reached():
                return real_update_bn(loader, model, *args, **kwargs)

            def first_batch_only():
                for i, batch in enumerate(loader):
                    if i == 1:
                        die()
                    yield batch

            return real_update_bn(first_batch_only(), model, *args, **kwargs)

        averaging.update_bn = update_bn
    elif point == "oof":
        real_np_save = np.save

        def np_save(file, array, *args, **kwargs):
            name = file if isinstance(file, str | os.PathLike) else file.name  # an open file
            if "oof" in Path(name).parts and countdown.reached():
                buffer = io.BytesIO()
                real_np_save(buffer, array, *args, **kwargs)
                write_half_and_die(buffer.getvalue(), file)
            return real_np_save(file, array, *args, **kwargs)

        np.save = np_save
    elif point != "none":
        raise SystemExit(f"kill_at.py: unknown point {point!r}; expected one of {POINTS}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    point, n, *args = sys.argv[1:]
    install(point, int(n))
    from segarena.cli.app import app

    app(args, prog_name="segarena")
