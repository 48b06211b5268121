"""The audit's HTML page: overlays of the worst images (segarena.report.html: self-contained)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segarena.labels.confident import ImageIssues
from segarena.report.html import (
    class_colours,
    img,
    legend,
    new_figure,
    note,
    overlay,
    page,
    section,
)
from segarena.util.files import write_text_atomic

FLAG_COLOUR = np.array([1.0, 0.0, 1.0])  # magenta: not in tab20, stands out on grey


def render_panels(image: np.ndarray, found: ImageIssues, classes: list[str], title: str) -> str:
    """An <img>: image | given mask | out-of-fold prediction | flagged pixels."""
    colours = class_colours(len(classes))
    flagged = np.repeat(image.mean(2, keepdims=True) / 255.0 * 0.6, 3, axis=2)
    flagged[found.issues] = FLAG_COLOUR
    views = [
        ("image", image),
        ("given mask", overlay(image, found.labels, colours)),
        ("predicted (out of fold)", overlay(image, found.pred, colours)),
        (f"flagged: {int(found.issues.sum())} px", flagged),
    ]
    height, width = image.shape[:2]
    figure = new_figure(18, 16 / 4 * height / width + 0.5)
    axes = figure.subplots(1, 4)
    for ax, (name, view) in zip(axes, views):
        ax.imshow(view, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    legend(axes[-1], classes, colours)
    figure.suptitle(title, fontsize=11)
    return img(figure, title)


def write_report(path: Path, panels: list[str], classes: list[str], run_dir: Path) -> None:
    """report.html from the rendered panels, worst first."""
    intro = note(
        "Images ranked by label quality: the softmin of the out-of-fold probability of each "
        "pixel's given class (lower is worse). Flagged pixels (magenta) are confident-"
        "learning label issues; ignored pixels are left untinted. Full ranking: issues.csv; "
        f"classes: {', '.join(classes)}."
    )
    body = panels or [note("No images to show (--top 0).")]
    title = f"Label audit of {run_dir}"
    write_text_atomic(path, page(title, [section("worst", "Worst images", intro, *body)]))
