"""segarena compare: config diff, one-change warning, paired bootstrap on OOF predictions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from fake_runs import fake_run, masks, predictions
from helpers import run_cli
from synthetic import make_mask_folder, tiny_config

from segarena.config.diff import NOT_LEARNED, config_diff, settings_changed, without
from segarena.metrics import bootstrap_miou_diff_ci, scores
from segarena.report.compare import compare_runs
from segarena.run_dir.per_image import run_matrices


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mask_folder(tmp_path_factory.mktemp("data"), n=40, size=64)


def test_config_diff_dotted_keys_lists_whole_and_ignored_sections():
    a = {"model": {"encoder": "r18", "kwargs": {}}, "loss": {"terms": [{"name": "ce"}]}}
    b = {"model": {"encoder": "r34", "kwargs": {"depth": 3}}, "loss": {"terms": []}}
    a.update(experiment="x", records={"out": "runs"})
    b.update(experiment="y", records={"out": "elsewhere"})
    changes = {c.key: (c.old, c.new) for c in config_diff(a, b)}
    assert changes == {
        "experiment": ("x", "y"),
        "loss.terms": ([{"name": "ce"}], []),
        "model.encoder": ("r18", "r34"),
        "model.kwargs.depth": ("(absent)", 3),
        "records.out": ("runs", "elsewhere"),
    }
    assert settings_changed(config_diff(a, b)) == [
        "loss.terms",
        "model.encoder",
        "model.kwargs.depth",
    ]
    assert config_diff(a, a) == []


def test_data_root_counts_as_a_change_and_without_drops_nested_keys():
    # another data.root may hold other data: compare and ablate count it; the fingerprint
    # (which hashes the data itself) drops it with `without`
    a = {"data": {"root": "/a", "classes": ["x"]}, "records": {"out": "r"}, "experiment": "e"}
    b = {"data": {"root": "/b", "classes": ["x"]}, "records": {"out": "s"}, "experiment": "e"}
    assert settings_changed(config_diff(a, b)) == ["data.root"]
    assert without(a, (*NOT_LEARNED, "data.root")) == {"data": {"classes": ["x"]}}
    assert a["data"]["root"] == "/a"  # a copy: the config itself is left as it was


def test_injected_improvement_has_an_interval_above_zero(tmp_path, data):
    truth = masks(data)
    run_a = fake_run(tmp_path, data, "a", predictions(truth, 0.4, seed=1))
    run_b = fake_run(tmp_path, data, "b", predictions(truth, 0.8, seed=2))
    result = compare_runs(run_a, run_b, n_boot=1000)
    assert result.images == 40 and result.source == "per_image_cm"
    assert result.diff > 0.1
    assert 0 < result.ci[0] < result.diff < result.ci[1]
    # the point estimate is the pooled mIoU of each run's own matrices
    assert result.scores_a["miou"] == pytest.approx(
        json.loads((run_a / "summary.json").read_text())["miou"]
    )
    swapped = compare_runs(run_b, run_a, n_boot=1000)
    assert swapped.ci[1] < 0 and swapped.diff == pytest.approx(-result.diff)


def test_no_change_has_an_interval_around_zero(tmp_path, data):
    truth = masks(data)
    same = predictions(truth, 0.6, seed=3)
    run_a = fake_run(tmp_path, data, "a", same)
    run_b = fake_run(tmp_path, data, "b", same, train={"seed": 1})
    identical = compare_runs(run_a, run_b, n_boot=500)
    assert identical.diff == 0 and identical.ci == (0.0, 0.0)
    # equal quality, different images right (two "seeds"): the interval straddles 0
    run_c = fake_run(tmp_path, data, "c", predictions(truth, 0.6, seed=4))
    other = compare_runs(run_a, run_c, n_boot=1000)
    assert other.diff != 0 and other.ci[0] < 0 < other.ci[1]


def test_paired_interval_is_narrower_than_unpaired_resampling():
    """The same images drawn for A and B: shared image difficulty cancels out."""
    rng = np.random.default_rng(0)
    hard = rng.uniform(0.2, 1.0, size=60)  # per-image share of correct pixels, shared by A and B
    cms_a = np.zeros((60, 2, 2))
    cms_b = np.zeros((60, 2, 2))
    for i, share in enumerate(hard):
        cms_a[i] = [[100 * share, 100 * (1 - share)], [0, 100]]
        cms_b[i] = [[100 * share + 3, 100 * (1 - share) - 3], [0, 100]]
    low, high = bootstrap_miou_diff_ci(cms_a, cms_b, n_boot=500)
    assert 0 < low < high
    diff = scores(cms_b.sum(0))["miou"] - scores(cms_a.sum(0))["miou"]
    assert low < diff < high and high - low < 0.5 * diff


def test_one_change_warning_fires_on_two_keys_only(tmp_path, data):
    truth = masks(data)
    preds = predictions(truth, 0.5, seed=5)
    base = fake_run(tmp_path, data, "base", preds)
    one = fake_run(tmp_path, data, "one", preds, optimizer={"lr": 0.01})
    two = fake_run(
        tmp_path, data, "two", preds, optimizer={"lr": 0.01}, model={"encoder": "resnet34"}
    )
    records = fake_run(tmp_path / "elsewhere", data, "rec", preds, optimizer={"lr": 0.01})
    result = run_cli("compare", base, one)
    assert result.exit_code == 0, result.output
    assert "optimizer.lr" in result.output and "warning:" not in result.output
    # records.out differs too, but it does not change what a run learns
    result = run_cli("compare", base, records)
    assert "records.out" in result.output and "warning:" not in result.output
    result = run_cli("compare", base, two)
    assert result.exit_code == 0, result.output
    assert "warning: B differs from A in 2 settings (model.encoder, optimizer.lr)" in result.output


@pytest.mark.slow  # ~5 s: three fake runs of 40 images, OOF recomputed
def test_oof_fallback_matches_stored_matrices_and_uses_the_intersection(tmp_path, data):
    truth = masks(data)
    preds = predictions(truth, 0.5, seed=6)
    stored = fake_run(tmp_path, data, "stored", preds)
    from_oof = fake_run(tmp_path, data, "oof", preds, per_image=False)
    a, b = run_matrices(stored), run_matrices(from_oof)
    assert (a.source, b.source) == ("per_image_cm", "oof")
    order = [b.ids.index(i) for i in a.ids]
    np.testing.assert_array_equal(a.cms, b.cms[order])
    # OOF stored at half size: upsampled to the mask, the truth still scores near 1
    half = fake_run(tmp_path, data, "half", truth, per_image=False, oof_scale=0.5)
    assert scores(run_matrices(half).cms.sum(0))["miou"] > 0.9
    # B lost the OOF files of 10 images: compared on the 30 both hold, and said so
    for path in sorted((from_oof / "fold_0" / "oof").glob("*.npy"))[:10]:
        path.unlink()
    result = run_cli("compare", stored, from_oof, "--n-boot", "200")
    assert result.exit_code == 0, result.output
    assert "A has out-of-fold predictions for 40 images, B for 30" in result.output
    assert "comparing on the 30 images both hold" in result.output
    assert "recomputed from the OOF probabilities" in result.output


@pytest.mark.slow  # ~2 s: two fake runs of 40 images
def test_bad_input_exits_2_naming_the_path(tmp_path, data):
    run_a = fake_run(tmp_path, data, "a", predictions(masks(data), 0.5, seed=7))
    result = run_cli("compare", run_a, tmp_path / "nope")
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: not a segarena run directory" in result.output
    config = yaml.safe_load((run_a / "config.yaml").read_text())
    config["data"]["classes"] = ["a", "b", "c", "d"]
    other = fake_run(tmp_path, data, "b", predictions(masks(data), 0.5, seed=7))
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("compare", run_a, other)
    assert result.exit_code == 2 and "expected runs on the same classes" in result.output


@pytest.mark.slow  # trains
def test_trained_runs_save_per_image_matrices_and_compare(tmp_path):
    from segarena.config import config_from_dict
    from segarena.train.run import fit

    data = make_mask_folder(tmp_path / "data", n=8, size=32)
    out = tmp_path / "runs"
    config = config_from_dict(tiny_config(data, out, train={"epochs": 1}))
    run_dir = fit(config, out, folds="all").path
    for k in (0, 1):
        fold_dir = run_dir / f"fold_{k}"
        cms = np.load(fold_dir / "per_image_cm.npy")
        ids = json.loads((fold_dir / "per_image_ids.json").read_text())
        assert cms.dtype == np.int64 and cms.shape == (len(ids), 4, 4) == (4, 4, 4)
        confusion = json.loads((fold_dir / "result.json").read_text())["confusion"]
        np.testing.assert_array_equal(cms.sum(0), confusion)
    # the same predictions under another lr: one change, and exactly no difference
    copy = shutil.copytree(run_dir, out / "tiny" / "copy")
    raw = yaml.safe_load((copy / "config.yaml").read_text())
    raw["optimizer"]["lr"] = 0.01
    (copy / "config.yaml").write_text(yaml.safe_dump(raw))
    result = run_cli("compare", run_dir, copy, "--n-boot", "200")
    assert result.exit_code == 0, result.output
    assert "optimizer.lr" in result.output and "0.003" in result.output
    assert "B - A +0.0000, 95% CI [+0.0000, +0.0000] (paired bootstrap over 8 images" in (
        result.output
    )
    assert "warning:" not in result.output
