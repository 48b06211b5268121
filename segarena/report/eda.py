"""`segarena eda CONFIG`: one self-contained HTML page about a dataset before training.

Class pixel frequency, class presence per image, image sizes, group sizes, mask examples
and the class share of every fold (the experiment's folds.csv, or new folds when there
is none yet; they are not written, `segarena split` does that).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segarena.config import Config
from segarena.data.folds import ALWAYS_TRAIN, make_folds, read_folds
from segarena.data.readers import Sample, load_image, load_mask, read_samples
from segarena.errors import UserError
from segarena.report import html as pages
from segarena.util.files import write_text_atomic

EXAMPLES = 4  # mask examples shown
MANY_GROUPS = 40  # above this, group sizes are a histogram rather than a bar per group


def pixel_counts(samples: list[Sample], num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixels of each class in each mask: [N, C + 1], the last column ignore_index."""

    def count(sample: Sample) -> np.ndarray:
        mask = load_mask(sample).ravel()
        ignored = int(np.count_nonzero(mask == ignore_index))
        # read_samples checked that every other value is a class id
        counts = np.bincount(mask[mask != ignore_index], minlength=num_classes)
        return np.append(counts[:num_classes], ignored)

    # PNG decoding releases the GIL: threads read the masks in parallel
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(count, samples))).astype(np.int64)


def bars(names: list[str], values: np.ndarray, xlabel: str, log: bool = False) -> str:
    """Horizontal bars with their values written beside them."""
    figure = pages.new_figure(8, 0.3 * len(names) + 1.2)
    ax = figure.subplots()
    ax.barh(range(len(names)), values, color="tab:blue")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.15)
    return pages.img(figure, xlabel)


def sizes_plot(samples: list[Sample]) -> str:
    """Image sizes: one dot per distinct width x height, its area the number of images."""
    counts = Counter((s.width, s.height) for s in samples)
    figure = pages.new_figure(6, 4.5)
    ax = figure.subplots()
    (widths, heights), number = zip(*counts.keys()), np.array(list(counts.values()))
    ax.scatter(widths, heights, s=30 + 300 * number / number.max(), alpha=0.6)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.grid(alpha=0.3)
    rows = [(f"{w}x{h}", n) for (w, h), n in counts.most_common(10)]
    return pages.img(figure, "image sizes") + pages.table(["width x height", "images"], rows)


def groups_plot(samples: list[Sample]) -> str:
    """Images per group: a bar per group, or a histogram when there are many groups."""
    counts = Counter(s.group or s.id for s in samples)
    if len(counts) > MANY_GROUPS:
        figure = pages.new_figure(7, 3.5)
        ax = figure.subplots()
        ax.hist(list(counts.values()), bins=30, color="tab:blue")
        ax.set_xlabel("images in the group")
        ax.set_ylabel("groups")
        return pages.img(figure, "group sizes")
    names, values = zip(*counts.most_common())
    return bars(list(names), np.array(values), "images per group")


def examples_plot(samples: list[Sample], classes: list[str], seed: int) -> str:
    """A few images (seeded choice) beside their masks tinted by class."""
    chosen = random.Random(seed).sample(samples, min(EXAMPLES, len(samples)))
    colours = pages.class_colours(len(classes))
    figure = pages.new_figure(11, 3 * len(chosen) + 0.3)
    grid = figure.subplots(len(chosen), 2, squeeze=False)
    for (left, right), sample in zip(grid, chosen):
        image = load_image(sample.image_path)
        left.imshow(image)
        left.set_title(sample.id, fontsize=9)
        right.imshow(pages.overlay(image, load_mask(sample), colours))
        right.set_title("mask", fontsize=9)
        left.axis("off")
        right.axis("off")
    pages.legend(grid[0, 1], classes, colours)
    return pages.img(figure, "mask examples")


def folds_section(config: Config, samples: list[Sample], counts: np.ndarray, out: Path) -> str:
    """Images, groups and class pixel share of every fold."""
    path = out / config.experiment / "folds.csv"
    if path.is_file():
        folds, origin = read_folds(path, samples, config.split), f"read from {path}"
    else:
        folds = make_folds(samples, config.split, config.data.num_classes)
        origin = f"made now from split settings ({path} does not exist yet)"
    folds = np.array(folds)
    keys = sorted(set(folds.tolist()), key=lambda k: (k == ALWAYS_TRAIN, k))
    labels = ["train only" if k == ALWAYS_TRAIN else f"fold {k}" for k in keys]
    classes = config.data.classes
    share = np.array([counts[folds == k, :-1].sum(0) for k in keys], dtype=np.float64)
    share /= np.maximum(share.sum(1, keepdims=True), 1)
    figure = pages.new_figure(0.7 * len(classes) + 3, 0.5 * len(keys) + 2)
    ax = figure.subplots()
    shown = ax.imshow(share, cmap="viridis", aspect="auto")
    figure.colorbar(shown, ax=ax, label="share of the fold's labelled pixels")
    for (i, j), v in np.ndenumerate(share):
        colour = "black" if v > 0.6 * share.max() else "white"  # viridis is light at the top
        ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(keys)), labels)
    groups = [len({s.group or s.id for s, f in zip(samples, folds) if f == k}) for k in keys]
    rows = [(label, int((folds == k).sum()), g) for label, k, g in zip(labels, keys, groups)]
    return (
        pages.note(f"Folds ({config.split.method}, {config.split.fold_count} fold(s)) {origin}.")
        + pages.table(["fold", "images", "groups"], rows)
        + pages.img(figure, "class share per fold")
    )


def render_eda(config: Config, out: Path) -> str:
    """The EDA page of `config`'s data as an HTML string (`out`: the runs folder)."""
    data = config.data
    samples = read_samples(data, config.split)
    counts = pixel_counts(samples, data.num_classes, data.ignore_index)
    totals = counts.sum(0)
    names = [*data.classes, f"ignore ({data.ignore_index})"]
    presence = np.array([[c in s.classes for c in range(data.num_classes)] for s in samples])
    overview = [
        ("images", len(samples)),
        ("classes", data.num_classes),
        ("groups", len({s.group or s.id for s in samples})),
        ("pixels", int(totals.sum())),
        ("ignored pixels", int(totals[-1])),
    ]
    sections = [
        pages.section("overview", "Dataset", pages.table(["", "value"], overview)),
        pages.section(
            "pixel-frequency",
            "Class pixel frequency",
            bars(names, totals / max(totals.sum(), 1), "share of all pixels (log)", log=True),
        ),
        pages.section(
            "presence",
            "Class presence per image",
            bars(list(data.classes), presence.mean(0), "share of images holding the class"),
        ),
        pages.section("sizes", "Image sizes", sizes_plot(samples)),
        pages.section("groups", "Group sizes", groups_plot(samples)),
        pages.section(
            "examples", "Mask examples", examples_plot(samples, data.classes, config.split.seed)
        ),
        pages.section("folds", "Folds", folds_section(config, samples, counts, out)),
    ]
    return pages.page(f"segarena EDA: {config.experiment}", sections)


def write_eda(config: Config, out: Path, html_path: Path | None = None) -> Path:
    """Write the EDA page (default OUT/<experiment>/eda.html) atomically; returns its path."""
    path = Path(html_path) if html_path is not None else out / config.experiment / "eda.html"
    if html_path is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise UserError(f"--html {path}: folder {path.parent} does not exist")
    write_text_atomic(path, render_eda(config, out))
    return path
