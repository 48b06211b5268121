"""Self-contained HTML pages: matplotlib figures embedded as base64 PNG, no external assets
and no JavaScript, so a page opens anywhere (a mail attachment, an offline machine).

The markup is a few headings, tables and <img> tags put together with html.escape; a
template engine (Jinja2) would be one more dependency for that much.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ddd; padding: .2em .6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: .5em 0; }
p.note { color: #555; }
"""


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas: no display, no pyplot global state."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def img(figure: Figure, alt: str) -> str:
    """An <img> holding the figure as a base64 PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; floats are shown with 4 decimals."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def section(anchor: str, title: str, *parts: str) -> str:
    """<section id=anchor> with an <h2> title and the given HTML parts."""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def page(title: str, sections: Sequence[str]) -> str:
    """A whole HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def class_colours(count: int) -> np.ndarray:
    """One RGB colour (floats 0-1) per class: tab20 up to 20 classes, turbo beyond."""
    if count <= 20:
        return np.array(matplotlib.colormaps["tab20"].colors[:count])
    return matplotlib.colormaps["turbo"](np.linspace(0, 1, count))[:, :3]


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.55):
    """The RGB uint8 image with each pixel of class c tinted by colours[c]; pixels with no
    class (ignore_index or any value >= len(colours)) are left as they are."""
    out = image.astype(np.float32) / 255.0
    known = mask < len(colours)
    tint = colours[np.where(known, mask, 0)]
    out[known] = (1 - alpha) * out[known] + alpha * tint[known]
    return out


def legend(axes, names: Sequence[str], colours: np.ndarray) -> None:
    """A legend of class colours beside `axes`."""
    handles = [Patch(color=c, label=n) for n, c in zip(names, colours)]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
