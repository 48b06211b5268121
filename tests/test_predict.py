"""predict end to end: tiny trained runs + a folder of images -> a valid submission."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import draw_sample, make_mask_folder, tiny_config
from typer.testing import CliRunner

from segarena.cli import app
from segarena.config import config_from_dict
from segarena.infer.ensemble import Ensemble, member_probs
from segarena.submission import read_submission
from segarena.train.run import train

runner = CliRunner()
TEST_IDS = ["batch_01/0002.png", "batch_01/0001.png", "batch_02/0007.png"]  # not sorted
TEST_SHAPE = (72, 100)  # neither the training size nor square


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-fold runs: native 64x64 and resized to 32x48 with another decoder."""
    root = tmp_path_factory.mktemp("predict")
    data = make_mask_folder(root / "data", n=8)
    native = tiny_config(data, root / "runs")
    resized = tiny_config(
        data,
        root / "runs",
        data={**native["data"], "image_size": [32, 48]},
        model={**native["model"], "kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}},
    )
    resized["experiment"] = "resized"
    run_a = train(config_from_dict(native), root / "runs", fold=0)
    run_b = train(config_from_dict(resized), root / "runs", fold=0)
    images = root / "test"
    rng = np.random.default_rng(5)
    for image_id in TEST_IDS:
        (images / image_id).parent.mkdir(parents=True, exist_ok=True)
        image, _, _ = draw_sample(rng, size=max(TEST_SHAPE))
        Image.fromarray(image[: TEST_SHAPE[0], : TEST_SHAPE[1]]).save(images / image_id)
    sample = root / "sample_submission.csv"
    with open(sample, "w", newline="") as f:
        csv.writer(f).writerows([["image_id", "PredictionString"]] + [[i, ""] for i in TEST_IDS])
    return {"a": run_a, "b": run_b, "images": images, "sample": sample, "root": root}


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_predict_writes_a_valid_contest_csv(runs, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    code, output = cli(
        "predict", runs["a"], runs["b"], "--images", runs["images"], "--out", out,
        "--sample", runs["sample"], "--tta", "hflip", "--workers", "0", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, output
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "PredictionString"]
    assert [r[0] for r in rows[1:]] == TEST_IDS  # the sample's order, not sorted
    masks = read_submission(out, "csv", 4, size=(256, 256))
    assert all(m.shape == (256, 256) and m.max() < 4 for m in masks.values())
    assert cli("validate-submission", out, "--sample", runs["sample"], "--classes", "4")[0] == 0

    wrong = tmp_path / "wrong_sample.csv"
    wrong.write_text("image_id,PredictionString\n" + "\n".join(TEST_IDS[:2]) + "\nother.png\n")
    code, output = cli("validate-submission", out, "--sample", wrong, "--classes", "4")
    assert code == 2 and "not in the sample" in output and "missing" in output


def test_ensemble_members_of_different_sizes_average_at_the_original_size(runs):
    ensemble = Ensemble.from_runs([runs["a"], runs["b"]], weights=[3, 1], device="cpu")
    assert [m.weight for m in ensemble.members] == [0.75, 0.25]
    image = np.asarray(Image.open(runs["images"] / TEST_IDS[0]).convert("RGB"))
    probs = ensemble.predict(image)
    assert probs.shape == (4, *TEST_SHAPE) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(TEST_SHAPE))
    parts = [member_probs(m, image, TEST_SHAPE, torch.device("cpu")) for m in ensemble.members]
    torch.testing.assert_close(probs, 0.75 * parts[0] + 0.25 * parts[1])
    assert not torch.allclose(parts[0], parts[1], atol=1e-3)  # the members do differ


def test_predict_png_with_sliding_windows_at_native_size(runs, tmp_path):
    out = tmp_path / "masks"
    code, output = cli(
        "predict", runs["a"], "--images", runs["images"], "--out", out, "--format", "png",
        "--window", "32,48", "--overlap", "0.5", "--workers", "0", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, output
    masks = read_submission(out, "png", 4)
    assert sorted(masks) == sorted(TEST_IDS)  # ids already end in .png
    assert all(m.shape == TEST_SHAPE for m in masks.values())


def test_predict_rejects_bad_options(runs, tmp_path):
    base = ["predict", runs["a"], "--images", runs["images"], "--workers", "0"]
    code, output = cli(*base, "--out", tmp_path / "s.csv", "--tta", "d8")
    assert code == 2 and "--tta" in output
    code, output = cli(*base, "--out", tmp_path / "s.csv", "--scales", "1,x")
    assert code == 2 and "--scales '1,x'" in output
    missing = tmp_path / "sample.csv"
    missing.write_text("image_id,PredictionString\nnope.jpg,\n")
    code, output = cli(*base, "--out", tmp_path / "s.csv", "--sample", missing)
    assert code == 2 and "nope.jpg" in output and not (tmp_path / "s.csv").exists()


def test_evaluate_scores_inference_options(runs):
    run_dir = runs["a"]
    code, output = cli("evaluate", run_dir)
    assert code == 0, output
    plain = json.loads((run_dir / "eval_val.json").read_text())
    # a window as large as the image goes through the wrapper and must score the same
    code, output = cli("evaluate", run_dir, "--window", "64")
    assert code == 0, output
    windowed = json.loads((run_dir / "eval_val_none_s1_mean_w64x64.json").read_text())
    assert windowed["miou"] == pytest.approx(plain["miou"], abs=1e-9)
    code, output = cli("evaluate", run_dir, "--tta", "d4", "--scales", "0.75,1", "--merge", "gmean")
    assert code == 0, output
    tta = json.loads((run_dir / "eval_val_d4_s0.75-1_gmean.json").read_text())
    assert tta["infer"]["tta"] == "d4" and 0.0 <= tta["miou"] <= 1.0


def test_evaluate_on_a_labelled_folder_equals_the_same_images_by_split(runs):
    run_dir, data = runs["a"], runs["root"] / "data"
    code, output = cli("evaluate", run_dir, "--split", "all", "--workers", "0")
    assert code == 0, output
    by_split = json.loads((run_dir / "eval_all.json").read_text())
    folder = ["--images", data / "images", "--masks", data / "masks"]
    code, output = cli("evaluate", run_dir, *folder, "--workers", "0")
    assert code == 0, output
    by_folder = json.loads((run_dir / "eval_folder-images.json").read_text())
    assert by_folder["folds"][0]["images"] == 8
    assert by_folder["miou"] == pytest.approx(by_split["miou"], abs=1e-12)
    code, output = cli("evaluate", run_dir, "--images", data / "images", "--workers", "0")
    assert code == 2 and "--masks" in output


def test_evaluate_an_ensemble_of_runs_out_of_fold(runs):
    """Runs of the same folds ensemble per fold; a zero weight leaves the other run alone."""
    a, b = runs["a"], runs["b"]
    code, output = cli("evaluate", a, "--workers", "0")
    assert code == 0, output
    alone = json.loads((a / "eval_val.json").read_text())
    code, output = cli("evaluate", a, b, "--weights", "1,0", "--workers", "0")
    assert code == 0, output
    weighted = json.loads((a / "eval_val_ens2_w1-0.json").read_text())
    assert len(weighted["members"]) == 2
    assert weighted["miou"] == pytest.approx(alone["miou"], abs=1e-12)
    code, output = cli("evaluate", a, b, "--workers", "0")
    assert code == 0, output
    mean = json.loads((a / "eval_val_ens2.json").read_text())
    assert mean["miou"] != pytest.approx(alone["miou"], abs=1e-9)  # b does change the result
    code, output = cli("evaluate", a, "--checkpoint", "newest")
    assert code == 2 and "--checkpoint 'newest'" in output
