"""Rebuild tests/data/medical_waste from the full Roboflow export (../shared/data/medical_waste):
4 train sources x their 3 augmented copies, 3 valid and 3 test images, downscaled 4x
(640 -> 160 px) with their polygons and boxes scaled alike, and the categories as exported
(the unused parent category 0 included). CC BY 4.0, see README.md beside it.

    python tests/data/make_medical_waste.py [--source ../shared/data/medical_waste]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image

SCALE = 4
SOURCES = {"train": 4, "valid": 3, "test": 3}  # train: sources (x3 copies); others: images
HERE = Path(__file__).resolve().parent / "medical_waste"


def shrink(folder: Path, out: Path, count: int, grouped: bool) -> None:
    data = json.loads((folder / "_annotations.coco.json").read_text())
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    # images with at least two classes, most classes first, then by name: deterministic
    images = sorted(data["images"], key=lambda i: (-len({a["category_id"] for a in
                                                          by_image[i["id"]]}), i["file_name"]))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data/medical_waste")
    args = parser.parse_args()
    for split, count in SOURCES.items():
        shrink(Path(args.source) / split, HERE / split, count, grouped=split == "train")


if __name__ == "__main__":
    main()
