"""segarena init: a Roboflow-shaped COCO export (generated, and a real cut of ../shared's)
and mask folders give a config that loads and trains as written; the split follows the
ids' groups and the classes' rarity; bad data and an existing --out stop with exit 2 and
write nothing."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from medical_waste_cut import MEDICAL_WASTE, make_cut
from PIL import Image
from pycocotools.coco import COCO
from synthetic import make_mask_folder, make_roboflow_export

from segarena.config import Source, load_config
from segarena.data.readers import Sample, load_image, load_mask, read_samples
from segarena.infer.api import Predictor
from segarena.init.detect import find_data
from segarena.init.draft import BUDGET_EPOCHS, ROBOFLOW, SEQUENCE, choose_size
from segarena.init.palette import voc_colormap
from segarena.metrics import confusion_matrix, scores


def test_a_roboflow_export_gives_a_config_that_trains_as_written(tmp_path):
    export = make_roboflow_export(tmp_path / "export")
    out = tmp_path / "exp.yaml"
    result = run_cli("init", export, "--out", out, "--name", "medical_waste")
    assert result.exit_code == 0, result.output
    config = load_config(out)
    # the parent category no annotation uses is left out, with a note; background is 0
    assert config.data.classes == ["background", "red", "green", "blue"]
    assert "categories no annotation uses (boxes)" in result.output
    assert [(s.images, s.role) for s in config.data.sources] == [("train", "train"),
                                                                 ("valid", "val")]  # fmt: skip
    assert "left for the end: test/_annotations.coco.json" in out.read_text()
    # Roboflow's copies of one source image are one group: 4 train sources + 3 valid images
    assert config.split.group_regex == ROBOFLOW and config.split.n_folds == 5
    assert "7 groups" in result.output and config.data.image_size == (160, 160)
    runs = tmp_path / "runs"
    assert run_cli("split", out, "--out", runs).exit_code == 0
    with (runs / "medical_waste" / "folds.csv").open() as f:
        folds = {row["id"]: row["fold"] for row in csv.DictReader(f)}
    by_source: dict[str, set[str]] = {}
    for image_id, fold in folds.items():
        by_source.setdefault(re.match(ROBOFLOW, image_id).group(1), set()).add(fold)
    assert len(by_source) == 7 and all(len(f) == 1 for f in by_source.values())
    trained = run_cli("train", out, "--out", runs, "--set", "train.epochs=1",
                      "--set", "data.image_size=[64,64]", "--set", "data.num_workers=0",
                      "--set", "train.precision=32-true")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    # the labelled COCO test split is scored as it is, no conversion: the same number as
    # the run's own predictions on the json's painted masks
    (run_dir,) = [p for p in (runs / "medical_waste").iterdir() if (p / "run.json").is_file()]
    test_json = export / "test" / "_annotations.coco.json"
    result = run_cli("evaluate", run_dir, "--coco", test_json, "--workers", "0", "--tta", "none")
    assert result.exit_code == 0, result.output
    (path,) = run_dir.glob("eval_coco-test*.json")
    written = json.loads(path.read_text())
    assert written["folds"][0]["images"] == 3
    test_source = Source(images="test", coco="test/_annotations.coco.json")
    data = config.data.model_copy(update={"sources": [test_source], "root": str(export)})
    predictor = Predictor([run_dir], tta="none", device="cpu")
    matrix = sum(
        confusion_matrix(torch.from_numpy(predictor.predict(load_image(s.image_path))),
                         torch.from_numpy(load_mask(s).astype(np.int64)), 4, 255)
        for s in read_samples(data)
    )  # fmt: skip
    assert written["miou"] == pytest.approx(scores(matrix)["miou"], abs=1e-6)
    assert f"mIoU {written['miou']:.4f}" in result.output
    # predict takes the test images, and their order, from the json
    submission = tmp_path / "submission.csv"
    result = run_cli("predict", run_dir, "--coco", test_json, "--out", submission,
                     "--workers", "0")  # fmt: skip
    assert result.exit_code == 0, result.output
    with submission.open() as f:
        ids = [row["image_id"] for row in csv.DictReader(f)]
    listed = [info["file_name"] for info in json.loads(test_json.read_text())["images"]]
    assert ids == listed
    # pseudo labels the json's images, no others, from the json's folder
    (export / "test" / "stray.jpg").write_bytes((export / "test" / listed[0]).read_bytes())
    pseudo = tmp_path / "pseudo"
    result = run_cli("pseudo", run_dir, "--coco", test_json, "--out", pseudo, "--workers", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((pseudo / "pseudo.json").read_text())
    assert [r["image"] for r in manifest["images"]] == [
        str((export / "test" / name).resolve()) for name in listed
    ]
    assert len(list((pseudo / "masks").rglob("*.png"))) == len(listed)


def test_mask_folders_with_sequences_and_void_are_grouped_and_ignored(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=16)
    mask_path = sorted((data / "masks").iterdir())[0]
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:4] = 255  # a void border
    Image.fromarray(mask).save(mask_path)
    out = tmp_path / "exp.yaml"
    result = run_cli("init", data, "--out", out, "--name", "boxes")
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert config.experiment == "boxes" and config.data.ignore_index == 255
    assert config.data.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert config.split.method in ("group", "stratified_group")
    assert config.split.group_regex == SEQUENCE and config.split.n_folds == 4  # 4 sequences
    assert "ignore_index: 255, a guess" in result.output
    # a classes file names them
    (data / "classes.txt").write_text("background\nred\ngreen\nblue\n")
    again = run_cli("init", data, "--out", out, "--force")
    assert again.exit_code == 0, again.output
    assert load_config(out).data.classes == ["background", "red", "green", "blue"]


def _mark_top_rows(data: Path, masks: int, value: int = 4) -> None:
    """Paint the first row of the first `masks` masks with `value` (1/64 of their pixels)."""
    for path in sorted((data / "masks").iterdir())[:masks]:
        mask = np.asarray(Image.open(path)).copy()
        mask[0] = value
        Image.fromarray(mask).save(path)


@pytest.mark.parametrize(
    ("masks", "classes_file", "void", "classes"),
    [
        (12, None, 4, 4),  # in 75% of masks, 1.2% of pixels: looks like void (CamVid's 11)
        (2, None, 255, 5),  # in 2 of 16 masks: a rare last class, kept
        (12, "car", 255, 5),  # void-like, but the classes file names it a class
        (2, "Unlabelled", 4, 4),  # the classes file calls it void
    ],
)
def test_a_void_value_other_than_255_is_guessed_and_said(tmp_path, masks, classes_file,
                                                        void, classes):  # fmt: skip
    data = make_mask_folder(tmp_path / "data", n=16)
    _mark_top_rows(data, masks)
    if classes_file:
        (data / "classes.txt").write_text(f"background\nred\ngreen\nblue\n{classes_file}\n")
    found = find_data(data)
    assert found.ignore_index == void and len(found.classes) == classes
    assert any(note.startswith(f"ignore_index: {void}") for note in found.notes)


@pytest.mark.parametrize("voc", [True, False])
def test_palette_masks_give_voc_names_or_their_colours(tmp_path, voc):
    data = make_mask_folder(tmp_path / "data", n=8)
    colours = voc_colormap(256) if voc else [(255, 0, 0), (0, 255, 0), (0, 0, 255),
                                             (9, 9, 9)] + [(0, 0, 0)] * 252  # fmt: skip
    for path in sorted((data / "masks").iterdir()):
        values = np.asarray(Image.open(path))
        mask = Image.frombytes("P", values.shape[::-1], values.tobytes())  # indices as they are
        mask.putpalette([c for rgb in colours for c in rgb])
        mask.save(path)
    found = find_data(data)
    # VOC's devkit colours, written out: aeroplane dark red, person (15) pink
    assert voc_colormap(16)[1] == (128, 0, 0) and voc_colormap(16)[15] == (192, 128, 128)
    if voc:
        assert found.classes == ["background", "aeroplane", "bicycle", "bird"]
        assert "PASCAL VOC names" in " ".join(found.notes)
    else:
        assert found.classes == ["class_0", "class_1", "class_2", "class_3"]
        assert "0 #ff0000, 1 #00ff00, 2 #0000ff, 3 #090909" in " ".join(found.notes)


def test_bad_data_or_an_existing_out_exits_2_and_writes_nothing(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    out = tmp_path / "exp.yaml"
    out.write_text("kept: true\n")
    result = run_cli("init", data, "--out", out)
    assert result.exit_code == 2 and "--force" in result.output
    assert out.read_text() == "kept: true\n"
    small = sorted((data / "masks").iterdir())[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)  # not the image's size
    fresh = tmp_path / "fresh.yaml"
    result = run_cli("init", data, "--out", fresh)
    assert result.exit_code == 2 and small.stem in result.output, result.output
    assert not fresh.exists() and not list(tmp_path.glob("*.tmp*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("init", empty, "--out", fresh)
    assert result.exit_code == 2 and "--coco" in result.output and not fresh.exists()


def test_the_input_size_follows_the_device_and_the_budget():
    samples = [Sample(f"s{i}", Path("x.png"), None, height=720, width=960) for i in range(5)]
    cpu, _ = choose_size(samples, gpu=False, budget_min=None, epoch_s=None)
    gpu, _ = choose_size(samples, gpu=True, budget_min=None, epoch_s=None)
    assert cpu == [192, 256] and gpu == [384, 512]

    # a stub speed: 1 s per epoch per 10,000 pixels; 10 minutes fit 20 epochs of 30,000 px
    def epoch_s(size):
        return size[0] * size[1] / 10_000

    short, why = choose_size(samples, gpu=False, budget_min=10, epoch_s=epoch_s)
    long, _ = choose_size(samples, gpu=False, budget_min=100, epoch_s=epoch_s)
    assert BUDGET_EPOCHS * epoch_s(short) <= 600 and short[0] * short[1] < long[0] * long[1]
    assert f"trains {BUDGET_EPOCHS} epochs in 10 min" in why


@pytest.fixture(scope="module")
def real_cut(tmp_path_factory) -> Path:
    """17 real images of the medical-waste export at 160x160 (tests/medical_waste_cut.py)."""
    if not MEDICAL_WASTE.is_dir():
        pytest.skip(f"the medical-waste export not found at {MEDICAL_WASTE}")
    return make_cut(tmp_path_factory.mktemp("medical_waste") / "medical_waste")


def paint_with_pycocotools(json_path: Path, classes: list[str], out: Path) -> None:
    """The json's label masks as PNGs, drawn by pycocotools' annToMask: the largest shape
    first, so a smaller one on top keeps its class (segarena's overlap policy)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(json_path))
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    out.mkdir()
    for image in coco.dataset["images"]:
        shapes = [(classes.index(names[a["category_id"]]), coco.annToMask(a))
                  for a in coco.imgToAnns[image["id"]]]  # fmt: skip
        mask = np.zeros((image["height"], image["width"]), np.uint8)
        for value, drawn in sorted(shapes, key=lambda s: -int(s[1].sum())):
            mask[drawn > 0] = value
        Image.fromarray(mask).save(out / f"{Path(image['file_name']).stem}.png")


def test_the_real_cut_inits_and_its_coco_test_split_scores_as_painted_masks(tmp_path, real_cut):
    """A cut of a real Roboflow export: init names its classes and groups its copies;
    evaluate --coco gives the same mIoU as the same images with masks painted independently
    by pycocotools, and the data is left as it was."""
    before = {p: p.stat().st_mtime_ns for p in real_cut.rglob("*")}
    out, runs = tmp_path / "mw.yaml", tmp_path / "runs"
    result = run_cli("init", real_cut, "--out", out)
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert config.data.classes == ["background", "Blood bag", "Mask", "ampoule", "syringe"]
    assert "categories no annotation uses (medical-waste)" in result.output
    # 4 train sources with 11 copies between them, and 3 valid images: 7 groups
    assert config.split.group_regex == ROBOFLOW and "7 groups" in result.output
    tiny = ["train.epochs=1", "data.image_size=[64,64]", "train.precision=32-true"]
    trained = run_cli("train", out, "--out", runs, *[a for s in tiny for a in ("--set", s)])
    assert trained.exit_code == 0, trained.output
    (run_dir,) = [p for p in (runs / "medical_waste").iterdir() if (p / "run.json").is_file()]
    test_json = real_cut / "test" / "_annotations.coco.json"
    from_coco = run_cli("evaluate", run_dir, "--coco", test_json, "--workers", "0")
    assert from_coco.exit_code == 0, from_coco.output
    paint_with_pycocotools(test_json, config.data.classes, tmp_path / "painted")
    from_masks = run_cli("evaluate", run_dir, "--images", real_cut / "test",
                         "--masks", tmp_path / "painted", "--workers", "0")  # fmt: skip
    assert from_masks.exit_code == 0, from_masks.output
    (coco_eval,) = [json.loads(p.read_text()) for p in run_dir.glob("eval_coco-*.json")]
    (mask_eval,) = [json.loads(p.read_text()) for p in run_dir.glob("eval_folder-*.json")]
    assert coco_eval["folds"][0]["images"] == mask_eval["folds"][0]["images"] == 3
    assert coco_eval["miou"] == pytest.approx(mask_eval["miou"], abs=1e-9)
    assert {p: p.stat().st_mtime_ns for p in real_cut.rglob("*")} == before
