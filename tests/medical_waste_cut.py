"""A small real cut of the medical-waste Roboflow export (CC BY 4.0, see its README in
../shared), made when a test needs it rather than committed: data stays in ../shared.
4 train sources x their 3 augmented copies, 3 valid and 3 test images, downscaled 4x
(640 -> 160 px) with their polygons and boxes scaled alike, and the categories as exported
(the unused parent category 0 included)."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# beside the CamVid that $SEGARENA_DATA names (.ci/run sets it), else ../shared
MEDICAL_WASTE = (Path(os.environ["SEGARENA_DATA"]).parent if "SEGARENA_DATA" in os.environ
                 else REPO.parent / "shared" / "data") / "medical_waste"  # fmt: skip
SCALE = 4
SOURCES = {"train": 4, "valid": 3, "test": 3}  # train: sources (x3 copies); others: images


def shrink(folder: Path, out: Path, count: int, grouped: bool) -> None:
    data = json.loads((folder / "_annotations.coco.json").read_text())
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    # images with at least two classes, most classes first, then by name: deterministic
    images = sorted(
        data["images"],
        key=lambda i: (-len({a["category_id"] for a in by_image[i["id"]]}), i["file_name"]),
    )
    if grouped:
        source = {i["id"]: re.sub(r"\.rf\.[0-9a-f]+\.jpg$", "", i["file_name"]) for i in images}
        chosen_sources = list(dict.fromkeys(source[i["id"]] for i in images))[:count]
        chosen = [i for i in images if source[i["id"]] in chosen_sources]
    else:
        chosen = images[:count]
    out.mkdir(parents=True, exist_ok=True)
    keep = {i["id"] for i in chosen}
    for info in chosen:
        with Image.open(folder / info["file_name"]) as image:
            small = image.resize((info["width"] // SCALE, info["height"] // SCALE))
            small.save(out / info["file_name"], quality=85)
        info.update(width=info["width"] // SCALE, height=info["height"] // SCALE)
    annotations = []
    for ann in data["annotations"]:
        if ann["image_id"] in keep:
            ann["segmentation"] = [[v / SCALE for v in poly] for poly in ann["segmentation"]]
            ann["bbox"] = [v / SCALE for v in ann["bbox"]]
            ann["area"] = ann["area"] / SCALE**2
            annotations.append(ann)
    data.update(images=chosen, annotations=annotations)
    (out / "_annotations.coco.json").write_text(json.dumps(data))


def make_cut(out: Path, source: Path = MEDICAL_WASTE) -> Path:
    """The cut of `source` in out/train, out/valid, out/test (each with its json)."""
    for split, count in SOURCES.items():
        shrink(source / split, out / split, count, grouped=split == "train")
    return out
