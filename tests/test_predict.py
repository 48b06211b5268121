"""predict end to end: tiny trained runs + a folder of images -> a valid submission."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from helpers import miou_of, run_cli
from PIL import Image
from synthetic import draw_sample, make_mask_folder, tiny_config

from segarena.config import config_from_dict
from segarena.data.readers import load_image, load_mask, read_samples
from segarena.infer.ensemble import Ensemble, EnsembleSpec, member_probs
from segarena.model.build import build_model
from segarena.run_dir.checkpoints import load_checkpoint
from segarena.submission.codecs import read_submission
from segarena.train.run import fit

pytestmark = pytest.mark.slow  # the module's runs are trained; every test runs the CLI or them

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
    run_a = fit(config_from_dict(native), root / "runs", folds=0).path
    run_b = fit(config_from_dict(resized), root / "runs", folds=0).path
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


def test_predict_writes_a_valid_contest_csv(runs, tmp_path):
    out = tmp_path / "sub" / "submission.csv"
    result = run_cli(
        "predict", runs["a"], runs["b"], "--images", runs["images"], "--out", out,
        "--sample", runs["sample"], "--tta", "hflip", "--workers", "0", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "PredictionString"]
    assert [r[0] for r in rows[1:]] == TEST_IDS  # the sample's order, not sorted
    masks = read_submission(out, "csv", 4, size=(256, 256))
    assert all(m.shape == (256, 256) and m.max() < 4 for m in masks.values())
    result = run_cli("validate-submission", out, "--sample", runs["sample"], "--classes", "4")
    assert result.exit_code == 0, result.output

    wrong = tmp_path / "wrong_sample.csv"
    wrong.write_text("image_id,PredictionString\n" + "\n".join(TEST_IDS[:2]) + "\nother.png\n")
    result = run_cli("validate-submission", out, "--sample", wrong, "--classes", "4")
    assert result.exit_code == 2
    assert "not in the sample" in result.output and "missing" in result.output


def test_ensemble_members_of_different_sizes_average_at_the_original_size(runs):
    ensemble = Ensemble.from_spec(
        EnsembleSpec((runs["a"], runs["b"]), weights=(3, 1), device="cpu")
    )
    assert [m.weight for m in ensemble.members] == [0.75, 0.25]
    image = np.asarray(Image.open(runs["images"] / TEST_IDS[0]).convert("RGB"))
    probs = ensemble.probs(image)
    assert probs.shape == (4, *TEST_SHAPE) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(TEST_SHAPE))
    cpu = torch.device("cpu")
    parts = [member_probs(m, [image], TEST_SHAPE, cpu)[0] for m in ensemble.members]
    torch.testing.assert_close(probs, 0.75 * parts[0] + 0.25 * parts[1])
    assert not torch.allclose(parts[0], parts[1], atol=1e-3)  # the members do differ


def test_a_batch_of_images_gives_what_one_at_a_time_gives(runs, tmp_path):
    ensemble = Ensemble.from_spec(
        EnsembleSpec((runs["a"], runs["b"]), overrides={"tta": "hflip"}, device="cpu")
    )
    images = [np.asarray(Image.open(runs["images"] / i).convert("RGB")) for i in TEST_IDS]
    batched = ensemble.batch_probs(images, (50, 60))
    assert batched.shape == (3, 4, 50, 60)
    one_by_one = torch.stack([ensemble.probs(image, (50, 60)) for image in images])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-4)

    subs = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}.csv"
        result = run_cli(
            "predict", runs["a"], "--images", runs["images"], "--out", out, "--workers", "0",
            "--device", "cpu", "--batch-size", batch, "--size", "40,50",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        subs[batch] = read_submission(out, "csv", 4, size=(40, 50))
    assert list(subs[1]) == list(subs[3]) == sorted(TEST_IDS)
    for image_id in TEST_IDS:
        np.testing.assert_array_equal(subs[1][image_id], subs[3][image_id])

    result = run_cli(
        "predict", runs["a"], "--images", runs["images"], "--out", tmp_path / "x.csv",
        "--batch-size", 0,
    )  # fmt: skip
    assert result.exit_code == 2 and "--batch-size 0: expected 1 or more" in result.output


def test_predict_png_with_sliding_windows_at_native_size(runs, tmp_path):
    def predict(name: str, *window) -> dict[str, np.ndarray]:
        out = tmp_path / name
        result = run_cli(
            "predict", runs["a"], "--images", runs["images"], "--out", out, "--format", "png",
            *window, "--workers", "0", "--device", "cpu",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        masks = read_submission(out, "png", 4)
        assert sorted(masks) == sorted(TEST_IDS)  # ids already end in .png
        assert all(m.shape == TEST_SHAPE for m in masks.values())
        return masks

    whole = predict("whole")
    # a window the size of the image is one window: the plain prediction, pixel for pixel
    one_window = predict("one_window", "--window", "72,100")
    # 4 x 4 overlapping windows, the last of each row and column flush with the edge
    sliding = predict("sliding", "--window", "32,48", "--overlap", "0.5")
    for image_id in TEST_IDS:
        np.testing.assert_array_equal(one_window[image_id], whole[image_id])
        image = np.asarray(Image.open(runs["images"] / image_id).convert("RGB"))
        probs = sliding_by_hand(runs["a"], image, window=(32, 48), overlap=0.5)
        # The model is barely trained, so some pixels are near ties that float rounding
        # may tip either way (the closest top two differ by 5e-7); every other pixel must
        # get the class of the blend written out here. Measured: ~99.6% of pixels have
        # a margin above 1e-4, and all of them agree.
        top_two = np.sort(probs, axis=0)[-2:]
        decided = top_two[1] - top_two[0] > 1e-4
        assert decided.mean() > 0.98
        np.testing.assert_array_equal(sliding[image_id][decided], probs.argmax(0)[decided])
        # windows see less context than the whole image, so the two do differ (~24% of
        # pixels for this barely trained model): the window really was used
        assert (sliding[image_id] != whole[image_id]).mean() > 0.05


def sliding_by_hand(
    run_dir, image: np.ndarray, window: tuple[int, int], overlap: float
) -> np.ndarray:
    """Probabilities [C, H, W] of fold 0's best checkpoint on `image` by sliding windows,
    written out without segarena.infer: windows every (1 - overlap) of their size plus one
    flush with the far edge, each window's softmax weighted by a Gaussian centred on it
    (sigma = size / 8, peak 1), divided by the summed weights. The windows' sides must be
    multiples of 8 (the model's input divisor), as no padding is done here."""
    config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    model = build_model(config.model, config.data.num_classes)
    model.load_state_dict(load_checkpoint(run_dir / "fold_0" / "best.ckpt")["model"])
    model.eval()
    mean = torch.tensor(config.data.mean).view(3, 1, 1)
    std = torch.tensor(config.data.std).view(3, 1, 1)
    pixels = (torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255.0 - mean) / std
    (height, width), (win_h, win_w) = image.shape[:2], window

    def starts(length: int, size: int) -> list[int]:
        return sorted({*range(0, length - size + 1, int(size * (1 - overlap))), length - size})

    def gaussian(n: int) -> np.ndarray:
        x = np.arange(n) - (n - 1) / 2
        return np.exp(-0.5 * (x / (n / 8)) ** 2)

    weight = np.outer(gaussian(win_h), gaussian(win_w))
    total = np.zeros((config.data.num_classes, height, width))
    weights = np.zeros((height, width))
    for y in starts(height, win_h):
        for x in starts(width, win_w):
            with torch.no_grad():
                logits = model(pixels[None, :, y : y + win_h, x : x + win_w])
            probs = logits.softmax(1)[0].double().numpy()
            total[:, y : y + win_h, x : x + win_w] += probs * weight
            weights[y : y + win_h, x : x + win_w] += weight
    return total / weights


def test_predict_rejects_bad_options(runs, tmp_path):
    base = ["predict", runs["a"], "--images", runs["images"], "--workers", "0"]
    result = run_cli(*base, "--out", tmp_path / "s.csv", "--tta", "d8")
    assert result.exit_code == 2 and "--tta" in result.output
    result = run_cli(*base, "--out", tmp_path / "s.csv", "--scales", "1,x")
    assert result.exit_code == 2 and "--scales '1,x'" in result.output
    missing = tmp_path / "sample.csv"
    missing.write_text("image_id,PredictionString\nnope.jpg,\n")
    result = run_cli(*base, "--out", tmp_path / "s.csv", "--sample", missing)
    assert result.exit_code == 2 and "nope.jpg" in result.output
    assert not (tmp_path / "s.csv").exists()


def test_evaluate_scores_inference_options(runs):
    run_dir = runs["a"]
    result = run_cli("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    plain = json.loads((run_dir / "eval_val.json").read_text())
    # a window as large as the image goes through the wrapper and must score the same
    result = run_cli("evaluate", run_dir, "--window", "64")
    assert result.exit_code == 0, result.output
    windowed = json.loads((run_dir / "eval_val_none_s1_mean_w64x64.json").read_text())
    assert windowed["miou"] == pytest.approx(plain["miou"], abs=1e-9)
    result = run_cli("evaluate", run_dir, "--tta", "d4", "--scales", "0.75,1", "--merge", "gmean")
    assert result.exit_code == 0, result.output
    tta = json.loads((run_dir / "eval_val_d4_s0.75-1_gmean.json").read_text())
    assert tta["infer"]["tta"] == "d4" and tta["infer"]["merge"] == "gmean"
    # the same score worked out by hand, view by view: a wrong view, inverse, scale or merge
    # moves pixels from one class to another
    matrix = d4_gmean_by_hand(run_dir, scales=(0.75, 1.0))
    assert tta["folds"][0]["images"] == 4 and matrix.sum() == 4 * 64 * 64
    assert tta["miou"] == pytest.approx(miou_of(matrix)[0], abs=1e-9)
    assert tta["pixel_acc"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-9)


# identity, rot90, rot180, rot270, then the same after a horizontal flip: the D4 group
D4 = [(flip, turns) for flip in (False, True) for turns in range(4)]


def d4_gmean_by_hand(run_dir, scales) -> np.ndarray:
    """Confusion matrix of fold 0's best checkpoint on fold 0's validation images with
    `--tta d4 --scales ... --merge gmean`, written out without segarena.infer: every view of
    every rescaled image through the model, mapped back and resized to the image, and the
    softmax of the mean log-probability."""
    config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    k = config.data.num_classes
    model = build_model(config.model, k)
    model.load_state_dict(load_checkpoint(run_dir / "fold_0" / "best.ckpt")["model"])
    model.eval()
    mean = torch.tensor(config.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.data.std).view(1, 3, 1, 1)
    with open(run_dir / "folds.csv", newline="") as f:
        val_ids = {row["id"] for row in csv.DictReader(f) if row["fold"] == "0"}
    matrix = np.zeros((k, k), dtype=np.int64)
    for sample in read_samples(config.data, config.split):
        if sample.id not in val_ids:
            continue
        pixels = torch.from_numpy(load_image(sample.image_path).transpose(2, 0, 1).copy())[None]
        image = (pixels.float() / 255.0 - mean) / std
        size = tuple(image.shape[-2:])
        log_probs = torch.zeros(1, k, *size)
        for scale in scales:
            scaled = image
            if scale != 1:
                scaled_size = [round(n * scale) for n in size]
                scaled = F.interpolate(image, scaled_size, mode="bilinear", align_corners=False)
            views = [torch.rot90(scaled.flip(-1) if hf else scaled, t, (-2, -1)) for hf, t in D4]
            with torch.no_grad():
                outputs = model(torch.cat(views)).split(1)
            for (flipped, turns), logits in zip(D4, outputs, strict=True):
                logits = torch.rot90(logits, -turns, (-2, -1))
                logits = logits.flip(-1) if flipped else logits
                if tuple(logits.shape[-2:]) != size:
                    logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
                log_probs += logits.log_softmax(1)
        pred = (log_probs / (len(D4) * len(scales))).softmax(1)[0].argmax(0).numpy()
        mask = load_mask(sample).astype(np.int64)
        matrix += np.bincount(mask.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)
    return matrix


def test_evaluate_on_a_labelled_folder_equals_the_same_images_by_split(runs):
    run_dir, data = runs["a"], runs["root"] / "data"
    result = run_cli("evaluate", run_dir, "--split", "all", "--workers", "0")
    assert result.exit_code == 0, result.output
    by_split = json.loads((run_dir / "eval_all.json").read_text())
    folder = ["--images", data / "images", "--masks", data / "masks"]
    result = run_cli("evaluate", run_dir, *folder, "--workers", "0")
    assert result.exit_code == 0, result.output
    by_folder = json.loads((run_dir / "eval_folder-images.json").read_text())
    assert by_folder["folds"][0]["images"] == 8
    assert by_folder["miou"] == pytest.approx(by_split["miou"], abs=1e-12)
    result = run_cli("evaluate", run_dir, "--images", data / "images", "--workers", "0")
    assert result.exit_code == 2 and "--masks" in result.output


def test_evaluate_an_ensemble_of_runs_out_of_fold(runs):
    """Runs of the same folds ensemble per fold; a zero weight leaves the other run alone."""
    a, b = runs["a"], runs["b"]
    result = run_cli("evaluate", a, "--workers", "0")
    assert result.exit_code == 0, result.output
    alone = json.loads((a / "eval_val.json").read_text())
    result = run_cli("evaluate", a, b, "--weights", "1,0", "--workers", "0")
    assert result.exit_code == 0, result.output
    weighted = json.loads((a / "eval_val_ens2_w1-0.json").read_text())
    assert len(weighted["members"]) == 2
    assert weighted["miou"] == pytest.approx(alone["miou"], abs=1e-12)
    result = run_cli("evaluate", a, b, "--workers", "0")
    assert result.exit_code == 0, result.output
    mean = json.loads((a / "eval_val_ens2.json").read_text())
    assert mean["miou"] != pytest.approx(alone["miou"], abs=1e-9)  # b does change the result
    result = run_cli("evaluate", a, "--checkpoint", "newest")
    assert result.exit_code == 2 and "--checkpoint 'newest'" in result.output
