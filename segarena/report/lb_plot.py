"""`segarena lb --plot`: CV against the leaderboard for every scored submission, one
self-contained page. It answers "does my validation follow the leaderboard?": the
Pearson correlation of the pairs, the least-squares line, and the submissions whose
leaderboard score lies further from the line than the others do.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from segarena.errors import UserError
from segarena.records.leaderboard import LEDGER, ledger, store_ledger
from segarena.report.html import img, new_figure, note, page, section, table
from segarena.util.files import write_text_atomic

FLAG_TIMES = 3.0  # a submission is flagged this many times further from the line...
FLAG_FLOOR = 0.005  # ...than the others' RMS distance to it (at least this, in mIoU)
RULE = (
    f"A submission is flagged when its public score lies more than {FLAG_TIMES:g} times "
    "further from the line fitted to the other submissions than those others do (their RMS "
    f"distance, at least {FLAG_FLOOR:g} mIoU); it needs at least 4 submissions."
)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r of the pairs; None with fewer than 3 pairs or a constant side."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / np.sqrt((dx * dx).sum() * (dy * dy).sum()))


def outliers(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(residual of each point from the line fitted to the others, flagged) under RULE."""
    n = len(x)
    residuals, flagged = np.zeros(n), np.zeros(n, dtype=bool)
    if n < 4:
        return residuals, flagged
    for i in range(n):
        rest = np.arange(n) != i
        if np.std(x[rest]) == 0:  # no line through the others
            continue
        slope, intercept = np.polyfit(x[rest], y[rest], 1)
        spread = np.sqrt(np.mean((y[rest] - (slope * x[rest] + intercept)) ** 2))
        residuals[i] = y[i] - (slope * x[i] + intercept)
        flagged[i] = abs(residuals[i]) > FLAG_TIMES * max(spread, FLAG_FLOOR)
    return residuals, flagged


def _label(entry: dict[str, Any]) -> str:
    if entry.get("submission"):
        return Path(entry["submission"]).name
    return "run " + Path(entry["runs"][0]).name


def cv_lb_pairs(out: Path | None = None, store: str | None = None) -> list[dict[str, Any]]:
    """The scored submissions with a CV (finished runs) and a public score: of runs folder
    `out` (its ledger), or of every teammate in the MLflow store `store`."""
    entries = store_ledger(store) if store else ledger(Path(out))
    return [e for e in entries if e.get("cv") is not None and e.get("public") is not None]


def _figure(x, y, flagged, labels, r) -> str:
    figure = new_figure(7, 5)
    axes = figure.add_subplot()
    axes.scatter(x[~flagged], y[~flagged], color="#1f77b4", label="submission")
    if flagged.any():
        axes.scatter(x[flagged], y[flagged], color="#d62728", marker="X", s=80, label="flagged")
    if len(x) >= 2 and np.std(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        grid = np.linspace(x.min(), x.max(), 50)
        axes.plot(grid, slope * grid + intercept, color="#888", linestyle="--", label="fit")
    for xi, yi, text in zip(x, y, labels):
        axes.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel("CV mIoU (runs' pooled validation, mean over the submission's runs)")
    axes.set_ylabel("public leaderboard")
    shown = "n/a" if r is None else f"{r:.3f}"
    axes.set_title(f"CV vs LB: Pearson r = {shown} ({len(x)} submissions)")
    axes.legend(loc="best", fontsize=8)
    return img(figure, "CV against public leaderboard score")


def write_lb_page(
    out: Path, page_path: Path | None = None, store: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write the CV-vs-LB page of runs folder OUT (default OUT/lb.html), or of the MLflow
    store `store` (every teammate's scores); returns its path and {"n", "pearson",
    "flagged"}."""
    out = Path(out)
    pairs = cv_lb_pairs(out, store)
    source = store or str(out / LEDGER)
    if not pairs:
        raise UserError(
            f"lb --plot: {source} holds no scored submission with a finished run; "
            "record scores first: segarena lb SUBMISSION --public SCORE"
        )
    x = np.array([p["cv"] for p in pairs], dtype=float)
    y = np.array([p["public"] for p in pairs], dtype=float)
    r = pearson(x, y)
    residuals, flagged = outliers(x, y)
    labels = [_label(p) for p in pairs]
    verdict = (
        "Too few submissions for a correlation (3 needed)."
        if r is None
        else f"Pearson r = {r:.3f} between CV and the public score over {len(x)} "
        "submissions (1: the leaderboard follows CV on a straight line; 0: no linear relation)."
    )
    rows = [
        [labels[i], ", ".join(Path(run).name for run in p["runs"]), p["cv"], p["public"],
         p.get("private"), float(residuals[i]) if len(x) >= 4 else None,
         "yes" if flagged[i] else "", p.get("user"), p.get("time")]
        for i, p in enumerate(pairs)
    ]  # fmt: skip
    headers = [
        "submission",
        "runs",
        "CV",
        "public",
        "private",
        "off the line of the others",
        "flagged",
        "by",
        "at",
    ]
    body = [
        section("plot", "CV against the leaderboard", note(verdict),
                _figure(x, y, flagged, labels, r)),
        section("rule", "Flagged submissions", note(RULE),
                f"<p>{html.escape(', '.join(np.array(labels)[flagged]) or 'none')}</p>"),
        section("scores", "Scored submissions", table(headers, rows),
                note(f"From {source}; the latest score of each submission.")),
    ]  # fmt: skip
    path = Path(page_path) if page_path is not None else out / "lb.html"
    write_text_atomic(path, page("CV vs leaderboard", body))
    return path, {"n": len(x), "pearson": r, "flagged": [labels[i] for i in np.where(flagged)[0]]}
