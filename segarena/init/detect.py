"""What `segarena init` finds in a dataset folder before any config exists: its labelled
sources (COCO jsons or image + mask folders), the test split it leaves alone, the classes
and the void value. Every guess is returned with the note that explains it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from segarena.data.readers import IMAGE_EXTS, mask_file_counts
from segarena.errors import UserError
from segarena.init.palette import mask_palette, palette_names

# a mask folder is named after its image folder plus one of these (CamVid: train/trainannot)
MASK_SUFFIXES = ("annot", "_annot", "masks", "_masks", "mask", "_mask", "labels", "_labels",
                 "annotations", "_annotations", "gt", "_gt")  # fmt: skip
MASK_PARTNERS = {"images": "masks", "imgs": "masks", "image": "mask", "img": "mask"}
TEST_NAMES = {"test", "testing"}
VAL_NAMES = {"val", "valid", "validation"}
CLASS_FILES = ("classes.txt", "class_names.txt", "labels.txt")
VOID = 255
# Another void value (CamVid's 11) is guessed from how void labels look: the top value, in
# most masks (object outlines, unlabelled strips) yet few pixels. A rare last class is in
# few masks, so it is not taken for void; a small but common last class would be, which is
# why the guess is stated in the config, with how to undo it.
VOID_MAX_PIXEL_SHARE, VOID_MIN_MASK_SHARE = 0.05, 0.5
VOID_NAMES = {"void", "unlabelled", "unlabeled", "ignore", "unknown"}


@dataclass
class Found:
    """The labelled sources (data.sources entries, relative to `root`), the classes and
    ignore_index, what was left out, and one note per guess."""

    root: Path
    kind: str  # "coco" or "masks"
    sources: list[dict]
    classes: list[str]
    ignore_index: int
    notes: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)  # test folders or jsons, not in sources


def find_data(data: Path, coco: Path | None = None) -> Found:
    """The labelled data in folder `data` (see the module docstring); UserError when there
    is none."""
    if not data.is_dir():
        raise UserError(f"DATA {data}: not a folder; expected the dataset's folder")
    if coco is not None:
        if not coco.is_file():
            raise UserError(f"--coco {coco}: file not found")
        dataset = _coco_json(coco)
        if dataset is None:
            raise UserError(f"--coco {coco}: not a COCO json (images, annotations, categories)")
        return _coco_found(data, {coco.resolve(): dataset}, [], note_given=True)
    parsed = {p: _coco_json(p) for p in sorted([*data.glob("*.json"), *data.glob("*/*.json")])}
    jsons = [p for p, dataset in parsed.items() if dataset is not None]
    if jsons:
        test = [p for p in jsons if _split_name(p.parent, data) in TEST_NAMES]
        return _coco_found(data, {p: parsed[p] for p in jsons if p not in test}, test)
    return _masks_found(data)


def _coco_json(path: Path) -> dict | None:
    """The parsed json when it is a COCO dataset (images, annotations, categories)."""
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    is_coco = isinstance(head, dict) and {"images", "annotations", "categories"} <= set(head)
    return head if is_coco else None


def _split_name(folder: Path, data: Path) -> str:
    return "" if folder.resolve() == data.resolve() else folder.name.lower()


def _relative(path: Path, data: Path) -> str:
    try:
        return path.resolve().relative_to(data.resolve()).as_posix() or "."
    except ValueError:
        return str(path.resolve())


def _coco_found(data: Path, jsons: dict[Path, dict], test: list[Path], note_given=False) -> Found:
    used: dict[str, int] = {}  # category name -> annotations, over every json
    order: dict[str, int] = {}  # category name -> its smallest id
    for dataset in jsons.values():
        counts: dict[int, int] = {}
        for ann in dataset["annotations"]:
            counts[ann.get("category_id")] = counts.get(ann.get("category_id"), 0) + 1
        for cat in dataset["categories"]:
            name = str(cat["name"])
            order[name] = min(order.get(name, cat["id"]), cat["id"])
            used[name] = used.get(name, 0) + counts.get(cat["id"], 0)
    kept = sorted((n for n in order if used[n]), key=lambda n: order[n])
    if not kept:
        raise UserError(f"{', '.join(map(str, jsons))}: no annotation uses any category")
    sources, notes = [], []
    for path in jsons:
        source = {"images": _relative(path.parent, data), "coco": _relative(path, data)}
        if _split_name(path.parent, data) in VAL_NAMES:
            source["role"] = "val"
        sources.append(source)
    how = "the --coco file" if note_given else f"{len(jsons)} COCO json(s) found"
    notes.append(f"classes: {how}; categories in id order after background (class 0)")
    unused = [n for n in order if not used[n]]
    if unused:
        notes.append(f"left out: categories no annotation uses ({', '.join(unused)})")
    if any(s.get("role") == "val" for s in sources):
        notes.append("the valid split is pooled into the folds (its role: val is read only "
                     "by split.method: predefined)")  # fmt: skip
    for path in test:
        notes.append(f"left for the end: {_relative(path, data)} (never trained or tuned on)")
    return Found(data, "coco", sources, ["background", *kept], VOID, notes,
                 [_relative(p, data) for p in test])  # fmt: skip


def _images_in(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS}


def _masks_found(data: Path) -> Found:
    folders = [p for p in sorted(data.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    by_name = {p.name.lower(): p for p in folders}
    pairs = []
    for folder in folders:
        names = [folder.name.lower() + s for s in MASK_SUFFIXES]
        names.append(MASK_PARTNERS.get(folder.name.lower(), ""))
        partner = next((by_name[n] for n in names if n in by_name), None)
        if partner is None:
            continue
        images, masks = _images_in(folder), _images_in(partner)
        if images and len(images.keys() & masks.keys()) >= len(images) / 2:
            pairs.append((folder, partner))
    if not pairs:
        raise UserError(
            f"DATA {data}: found no COCO json and no image folder with a mask folder beside "
            f"it (named like train + trainannot, images + masks); give --coco FILE"
        )
    test = [(i, m) for i, m in pairs if i.name.lower() in TEST_NAMES]
    labelled = [(i, m) for i, m in pairs if (i, m) not in test]
    sources = []
    for images, masks in labelled:
        source = {"images": images.name, "masks": masks.name}
        if images.name.lower() in VAL_NAMES:
            source["role"] = "val"
        sources.append(source)
    pixels, masks_with, files = _mask_stats([m for _, m in labelled])
    named = _class_file(data)
    void, void_note = _void_guess(pixels, masks_with, files, named[1] if named else [])
    palette = mask_palette(next(iter(_images_in(labelled[0][1]).values())))
    names, notes = _class_names(data, sorted(v for v in pixels if v != void), palette)
    notes.append(void_note)
    for images, masks in test:
        notes.append(f"left for the end: {images.name} + {masks.name} (never trained or "
                     "tuned on)")  # fmt: skip
    return Found(data, "masks", sources, names, void, notes,
                 [f"{i.name} + {m.name}" for i, m in test])  # fmt: skip


def _mask_stats(folders: list[Path]) -> tuple[dict[int, int], dict[int, int], int]:
    """Over every mask of `folders` (palette PNGs give their indices): value -> pixels,
    value -> masks holding it, and the number of masks."""
    pixels: dict[int, int] = {}
    masks_with: dict[int, int] = {}
    files = 0
    for folder in folders:
        for path in _images_in(folder).values():
            files += 1
            for value, count in mask_file_counts(path).items():
                pixels[value] = pixels.get(value, 0) + count
                masks_with[value] = masks_with.get(value, 0) + 1
    return dict(sorted(pixels.items())), masks_with, files


def _void_guess(
    pixels: dict[int, int], masks_with: dict[int, int], files: int, names: list[str]
) -> tuple[int, str]:
    """(data.ignore_index, the note that explains it): 255 when masks use it; else the top
    value when the classes file `names` calls it void, or, without a name for it, when it
    looks like void (see VOID_MAX_PIXEL_SHARE); else 255, unused."""
    if VOID in pixels:
        return VOID, f"ignore_index: {VOID}, a guess: masks use it and it looks like void"
    top = max(pixels)
    if top < len(names):
        if names[top].lower() in VOID_NAMES:
            return top, f"ignore_index: {top}, named {names[top]!r} in the classes file"
        return VOID, f"ignore_index: {VOID} (unused): the classes file names every value"
    pixel_share, mask_share = pixels[top] / sum(pixels.values()), masks_with[top] / files
    if top >= 2 and pixel_share <= VOID_MAX_PIXEL_SHARE and mask_share >= VOID_MIN_MASK_SHARE:
        return top, (f"ignore_index: {top}, a guess: the top value is in {mask_share:.0%} of "
                     f"the masks but {pixel_share:.1%} of the pixels, as void labels are; if "
                     f"{top} is a class, set data.ignore_index: {VOID} and name it in "
                     "data.classes")  # fmt: skip
    return VOID, (f"ignore_index: {VOID} (unused): no void value found; if one of the "
                  "values marks unlabelled pixels, set data.ignore_index to it")  # fmt: skip


def _class_file(data: Path) -> tuple[str, list[str]] | None:
    """(file name, one class name per value) of the dataset's classes file, if it has one."""
    for name in CLASS_FILES:
        path = data / name
        if path.is_file():
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
            return name, [ln for ln in lines if ln]
    return None


def _class_names(
    data: Path, values: list[int], palette: list[tuple[int, int, int]] | None = None
) -> tuple[list[str], list[str]]:
    """Names of the classes 0..max(values): from a classes file when there is one, else
    from the masks' `palette` (VOC's names, or its colours in the note)."""
    count = max(values) + 1
    named = _class_file(data)
    if named is not None and len(named[1]) >= count:
        return named[1][:count], [f"classes: names from {named[0]}, values 0..{count - 1}"]
    if palette is not None and len(palette) >= count:
        names, note = palette_names(palette, count)
        return names, [note]
    names = [f"class_{v}" for v in range(count)]
    missing = sorted(set(range(count)) - set(values))
    note = f"classes: the mask values 0..{count - 1}, named class_<value> (rename them)"
    if missing:
        note += f"; values {missing} appear in no mask"
    return names, [note]
