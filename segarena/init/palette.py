"""Class names from palette masks. A palette gives colours, not names, with one exception
worth knowing: PASCAL VOC (and SBD, and the many sets made in their format) store masks
as palette PNGs with the VOC colour map, whose colours stand for VOC's 21 classes. Any
other palette is shown as colours, so the user can name the classes from them."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
             "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
             "pottedplant", "sheep", "sofa", "train", "tvmonitor"]  # fmt: skip


def voc_colormap(count: int) -> list[tuple[int, int, int]]:
    """The first `count` colours of the PASCAL VOC colour map (the bits of each index
    spread over the high bits of r, g and b, as VOC's devkit builds it)."""
    colours = []
    for index in range(count):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        colours.append((r, g, b))
    return colours


def mask_palette(path: Path) -> list[tuple[int, int, int]] | None:
    """The RGB colour of each index of a palette PNG mask; None for any other mask."""
    with Image.open(path) as mask:
        if mask.mode != "P" or mask.getpalette() is None:
            return None
        flat = mask.getpalette()
    return [tuple(flat[i : i + 3]) for i in range(0, len(flat) - 2, 3)]


def palette_names(palette: list[tuple[int, int, int]], count: int) -> tuple[list[str], str]:
    """(names of the classes 0..count-1, the note that says where they came from)."""
    if count <= len(VOC_NAMES) and palette[:count] == voc_colormap(count):
        return VOC_NAMES[:count], "classes: PASCAL VOC names, from the masks' VOC colour map"
    shown = ", ".join(f"{v} #{r:02x}{g:02x}{b:02x}" for v, (r, g, b) in
                      enumerate(palette[:count]))  # fmt: skip
    return [f"class_{v}" for v in range(count)], (
        f"classes: palette masks, named class_<value>; their colours: {shown} (rename them)"
    )
