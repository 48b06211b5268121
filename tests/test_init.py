"""segarena init: a Roboflow-shaped COCO export (generated) and mask folders give
a config that loads and trains as written; the split follows the ids' groups and the
classes' rarity; bad data and an existing --out stop with exit 2 and write nothing."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image
from synthetic import make_mask_folder, make_roboflow_export

from segarena.config import Source, load_config
from segarena.data.readers import Sample, load_image, load_mask, read_samples
from segarena.infer.api import Predictor
from segarena.init.draft import BUDGET_EPOCHS, ROBOFLOW, SEQUENCE, choose_size
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
