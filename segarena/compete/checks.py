"""Bad input to `segarena compete`, found before any file is written (exit 2, one message):
a split without folds, an empty test folder or one of another channel count, an output
folder holding another competition, and (in `plan`) a budget too small for any plan."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from segarena.compete.plan import DEFAULT_MAX_EPOCHS, DataFacts
from segarena.config import Config
from segarena.data.readers import Sample
from segarena.errors import BadOption, UserError
from segarena.infer.images import list_images
from segarena.util.text import examples

COMPETE = "compete.json"


def check_split(config: Config) -> None:
    """compete decides every stage on out-of-fold predictions: it needs K >= 2 folds."""
    if config.split.fold_count < 2:
        raise UserError(
            f"split.method={config.split.method}: one fold, but compete chooses every stage "
            "on out-of-fold (OOF) predictions of K folds; set split.method: kfold (or group, "
            "stratified, stratified_group) with split.n_folds >= 2"
        )


def test_images(folder: Path) -> list[tuple[str, Path]]:
    """(id, path) of every image under --test-images; UserError when there are none."""
    try:
        return list_images(Path(folder))
    except BadOption as exc:
        raise UserError(f"--test-images {exc.detail}") from None


def channels(path: Path) -> int:
    """The image's channel count as stored (a palette image counts as colour: 3)."""
    with Image.open(path) as image:
        return 3 if image.mode == "P" else len(image.getbands())


def check_channels(samples: list[Sample], items: list[tuple[str, Path]], folder: Path) -> None:
    """UserError unless every test image has the training images' channel count."""
    train = Counter(channels(s.image_path) for s in samples[:50]).most_common(1)[0][0]
    other = [f"{image_id} ({n})" for image_id, path in items if (n := channels(path)) != train]
    if other:
        raise UserError(
            f"--test-images {folder}: {len(other)} image(s) have another channel count than "
            f"the training images ({train}): {examples(other)}; expected test images like the "
            "training images"
        )


def data_facts(config: Config, samples: list[Sample], test_count: int) -> DataFacts:
    """What the planner needs: image count, the input size at scale 1, folds, test images."""
    if config.data.image_size is not None:
        size = tuple(config.data.image_size)
    else:  # native: the most common size
        size = Counter((s.height, s.width) for s in samples).most_common(1)[0][0]
    return DataFacts(
        images=len(samples),
        size=size,
        folds=config.split.fold_count,
        test_images=test_count,
        resizable=config.data.tiles is None,
        max_epochs=config.train.epochs or DEFAULT_MAX_EPOCHS,
    )


def identity(config: Config, test_folder: Path) -> str:
    """What makes a competition the same one: the resolved config and the test folder."""
    text = json.dumps(
        {"config": config.model_dump(mode="json"), "test": str(Path(test_folder).resolve())},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_out(out: Path, ident: str, resume: bool) -> dict | None:
    """The recorded competition in `out` to resume (None: a new one). UserError when `out`
    holds one and --resume is not given, or holds another competition."""
    path = Path(out) / COMPETE
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: is a file; expected a folder for the competition")
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); choose another --out") from None
    if record.get("identity") != ident:
        raise UserError(
            f"--out {out}: holds another competition ({COMPETE} of config "
            f"{record.get('config_path')!r}, test images {record.get('test_images')!r}); "
            "choose another --out"
        )
    if not resume:
        raise UserError(
            f"--out {out}: already holds this competition ({COMPETE}); pass --resume to "
            "continue it, or choose another --out"
        )
    return record
