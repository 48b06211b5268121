"""`segarena report RUN_DIR`: one self-contained HTML page about a run.

Learning curves (fold_k/metrics.jsonl), per-class IoU (summary.json), the row-normalised
confusion matrix (fold_k/result.json) and the best and worst validation images by
per-image mIoU, drawn from the run's out-of-fold predictions (segarena.run_dir.per_image).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from segarena.data.readers import Sample, load_image, load_mask
from segarena.errors import UserError
from segarena.metrics import scores
from segarena.report import html as pages
from segarena.report.runs_table import run_row
from segarena.run_dir.layout import RunDir
from segarena.run_dir.per_image import (
    oof_name,
    oof_paths,
    oof_prediction,
    run_matrices,
    samples_by_oof_name,
)
from segarena.util.files import write_text_atomic

# the run_row fields shown in the report's summary table
SETTINGS = (
    "experiment run_id date status arch encoder image_size loss lr epochs folds "
    "cv_miou cv_miou_std oof_miou"
).split()


def learning_curves(run_dir: Path) -> str:
    """Train loss, learning rate and validation mIoU per epoch, one line per fold."""
    figure = pages.new_figure(12, 3.6)
    axes = figure.subplots(1, 3)
    found = False
    run = RunDir(run_dir)
    for k, fold_dir in run.fold_dirs():
        history = run.history(k)
        if not history:
            continue
        label = fold_dir.name
        found = found or bool(history)
        epochs = [r.epoch for r in history]
        axes[0].plot(epochs, [r.train_loss for r in history], label=label)
        axes[1].plot(epochs, [r.lr for r in history], label=label)
        val = [(r.epoch, r.val_miou) for r in history if r.validated]
        if val:
            axes[2].plot(*zip(*val), marker="o", label=label)
    if not found:
        return pages.note("No epoch was logged (fold_*/metrics.jsonl is missing or empty).")
    for ax, title in zip(axes, ("train loss", "learning rate", "validation mIoU")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if all(np.min(line.get_ydata(), initial=1.0) > 0 for line in axes[1].get_lines()):
        axes[1].set_yscale("log")  # warmup and decay span decades
    axes[2].legend(fontsize=8)
    return pages.img(figure, "learning curves")


def class_iou_bars(classes: list[str], per_class: list[float | None]) -> str:
    """Horizontal bars of the pooled out-of-fold IoU of every class."""
    values = [math.nan if v is None else v for v in per_class]
    figure = pages.new_figure(8, 0.3 * len(classes) + 1.2)
    ax = figure.subplots()
    ax.barh(range(len(classes)), np.nan_to_num(values), color="tab:blue")
    for y, v in enumerate(values):
        ax.text(min(np.nan_to_num(v), 0.9) + 0.01, y, "n/a" if v != v else f"{v:.3f}", va="center")
    ax.set_yticks(range(len(classes)), classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    return pages.img(figure, "per-class IoU")


def confusion_heatmap(classes: list[str], matrix: np.ndarray) -> str:
    """The confusion matrix with each row (target class) divided by its pixel count."""
    with np.errstate(invalid="ignore", divide="ignore"):
        rows = matrix / matrix.sum(axis=1, keepdims=True)
    size = 0.45 * len(classes) + 2.5
    figure = pages.new_figure(size + 1, size)
    ax = figure.subplots()
    shown = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(shown, ax=ax, shrink=0.8, label="share of the target class's pixels")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("target")
    if len(classes) <= 20:
        for (i, j), v in np.ndenumerate(rows):
            if v == v and v >= 0.005:
                colour = "white" if v > 0.6 else "black"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)
    return pages.img(figure, "confusion matrix")


def example_grid(title: str, picks: list[tuple[Sample, Path, float]], config) -> str:
    """Image, given mask and OOF prediction of each (sample, oof file, mIoU) in a row."""
    classes = config.data.classes
    colours = pages.class_colours(len(classes))
    figure = pages.new_figure(12, 3.2 * len(picks) + 0.4)
    grid = figure.subplots(len(picks), 3, squeeze=False)
    for row, (sample, path, miou) in zip(grid, picks):
        image, mask = load_image(sample.image_path), load_mask(sample)
        pred = oof_prediction(path, mask.shape)
        panels = (
            image / 255.0,
            pages.overlay(image, mask, colours),
            pages.overlay(image, pred, colours),
        )
        names = (f"{sample.id}", "given mask", f"prediction (mIoU {miou:.3f})")
        for ax, panel, name in zip(row, panels, names):
            ax.imshow(panel)
            ax.set_title(name, fontsize=9)
            ax.axis("off")
    pages.legend(grid[0, 2], classes, colours)
    figure.suptitle(title)
    return pages.img(figure, title)


def examples_section(run_dir: Path, config, count: int) -> str:
    """Best and worst validation images by per-image mIoU."""
    files = oof_paths(run_dir)
    if not files:
        return pages.note("This run holds no out-of-fold predictions (fold_*/oof/).")
    try:
        samples = samples_by_oof_name(config)
        matrices = run_matrices(run_dir, samples=samples)
    except UserError as exc:  # e.g. the data moved: the rest of the report still stands
        return pages.note(f"Examples left out: {exc}")
    names = [oof_name(sample_id) for sample_id in matrices.ids]
    mious = np.array([scores(cm)["miou"] for cm in matrices.cms])
    # an image whose pixels are all ignore_index has no mIoU
    ranked = [
        i
        for i in np.argsort(-mious, kind="stable")
        if not math.isnan(mious[i]) and names[i] in files
    ]
    if not ranked:
        return pages.note("No validation image with an OOF prediction has a labelled pixel.")
    count = min(count, max(len(ranked) // 2, 1))

    def picks(indices) -> list[tuple[Sample, Path, float]]:
        return [(samples[names[i]], files[names[i]][1], float(mious[i])) for i in indices]

    return (
        pages.note(
            f"{len(ranked)} validation images ranked by their own mIoU (classes present in "
            "the image's mask or prediction). Tint: class colour; untinted: ignore_index."
        )
        + example_grid("Best validation images", picks(ranked[:count]), config)
        + example_grid("Worst validation images", picks(ranked[::-1][:count]), config)
    )


def pooled_confusion(run_dir: Path) -> np.ndarray | None:
    """The sum of the folds' best-checkpoint confusion matrices (fold_k/result.json)."""
    found = [result.confusion for result in RunDir(run_dir).fold_results()]
    return np.sum(np.array(found, dtype=np.int64), axis=0) if found else None


def render_run_page(run_dir: Path, examples: int = 3) -> str:
    """The report page of `run_dir` as an HTML string."""
    config = RunDir(run_dir).config()
    row = run_row(run_dir)
    classes = list(config.data.classes)
    summary_rows = [(key, row[key]) for key in SETTINGS]
    sections = [
        pages.section("summary", "Run", pages.table(["setting", "value"], summary_rows)),
        pages.section("curves", "Learning curves", learning_curves(run_dir)),
    ]
    matrix = pooled_confusion(run_dir)
    if matrix is None:
        sections.append(pages.section("scores", "Scores", pages.note("No fold has finished.")))
    else:
        pooled = scores(matrix)
        sections += [
            pages.section(
                "per-class-iou",
                "Per-class IoU (out of fold, pooled over folds)",
                class_iou_bars(classes, pooled["per_class_iou"]),
            ),
            pages.section(
                "confusion", "Confusion matrix (rows: target)", confusion_heatmap(classes, matrix)
            ),
            pages.section(
                "examples",
                "Best and worst validation images",
                examples_section(run_dir, config, examples),
            ),
        ]
    return pages.page(f"segarena report: {config.experiment} / {run_dir.name}", sections)


def write_report(run_dir: Path, html_path: Path | None = None, examples: int = 3) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    run_dir = Path(run_dir)
    if examples < 1:
        raise UserError(f"--examples {examples}: expected at least 1")
    path = Path(html_path) if html_path is not None else run_dir / "report.html"
    if not path.parent.is_dir():
        raise UserError(f"--html {path}: folder {path.parent} does not exist")
    if RunDir(run_dir).check().summary() is None:
        raise UserError(
            f"{run_dir}: not a finished run (no summary.json): it is still training or it "
            f"stopped; finish it with `segarena train --resume {run_dir}`"
        )
    write_text_atomic(path, render_run_page(run_dir, examples))
    return path
