"""segarena: a toolkit for winning semantic-segmentation competitions.

The Python API (the `segarena` command is a thin layer over it):

    import segarena as sa
    cfg = sa.load_config("exp.yaml", overrides={"train.epochs": 5})
    run = sa.fit(cfg, out="runs", folds=[0])            # sa.Run.create(...).fit()
    runs = sa.fit_seeds(cfg, seeds=[0, 1], out="runs")  # a seed ensemble
    run = sa.Run.open("runs/exp/20261205-101515")
    scores = sa.evaluate([run], images="test/", masks="testannot/", tta="hflip")
    probs = sa.Predictor([run], tta="hflip").probs(image)

Names are imported on first use, so `import segarena` (and `segarena --help`) stays fast.
Library code logs to the "segarena" logger and never prints.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The library logs and never prints; the command line shows the records (cli.common.show_logs)
logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> the module that defines it
_EXPORTS = {
    "Config": "segarena.config",
    "load_config": "segarena.config",
    "Run": "segarena.train.run",
    # `fit`, not `train`: segarena.train is the training package, and importing it sets the
    # package's attribute `train`, which would hide a function of that name
    "fit": "segarena.train.run",
    "fit_seeds": "segarena.train.run",
    "resume": "segarena.train.run",
    "TrainHooks": "segarena.train.fold",
    "evaluate": "segarena.infer.api",
    "Predictor": "segarena.infer.api",
    "Scores": "segarena.infer.api",
    "UserError": "segarena.errors",
    "TrainingError": "segarena.errors",
}
__all__ = [  # the same names as _EXPORTS, spelt out for linters and `from segarena import *`
    "Config", "Predictor", "Run", "Scores", "TrainHooks", "TrainingError", "UserError",
    "evaluate", "fit", "fit_seeds", "load_config", "resume",
]  # fmt: skip

if TYPE_CHECKING:
    from segarena.config import Config, load_config
    from segarena.errors import TrainingError, UserError
    from segarena.infer.api import Predictor, Scores, evaluate
    from segarena.train.fold import TrainHooks
    from segarena.train.run import Run, fit, fit_seeds, resume


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segarena' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
