"""Pseudo-labels: `segarena pseudo` masks the ensemble's unsure pixels, a round trains on
them (training sets only) and records its gain over the source run; bad inputs exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import run_cli
from PIL import Image
from synthetic import draw_sample, make_mask_folder, tiny_config

from segarena.config import config_from_dict
from segarena.data.folds import read_folds
from segarena.data.readers import load_image, load_mask, read_samples
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.train.experiment import fold_data
from segarena.train.run import fit

pytestmark = pytest.mark.slow  # the module's runs are trained and `segarena pseudo` runs on them

IGNORE = 255
# a-d run through the model as one batch (the default --batch-size 8); e alone
POOL = {"a.png": (64, 64), "b.png": (64, 64), "c.png": (64, 64), "d.png": (64, 64),
        "more/e.png": (48, 80), "more/f.jpg": (64, 64)}  # fmt: skip


def top_probs(ensemble: Ensemble, pool):
    """(top probability, argmax) of every pool image, by image id."""
    found = {}
    for image_id in POOL:
        probs = ensemble.probs(load_image(pool / image_id))
        top, label = probs.max(0)
        found[image_id] = (top.numpy(), label.numpy())
    return found


@pytest.fixture(scope="module")
def rounds(tmp_path_factory, one_thread):
    """Source run A (fold 0), its pseudo-labels of a pool at the median confidence, and
    round B: A's config plus data.pseudo, trained through the CLI."""
    root = tmp_path_factory.mktemp("pseudo")
    data = make_mask_folder(root / "data", n=8)
    raw = tiny_config(data, root / "runs")
    raw["data"]["image_size"] = [64, 64]  # the pool's 48x80 image trains resized
    run_a = fit(config_from_dict(raw), root / "runs", folds=0).path
    pool = root / "pool"
    rng = np.random.default_rng(7)
    for image_id, (h, w) in POOL.items():
        (pool / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw_sample(rng, max(h, w))[0][:h, :w]).save(pool / image_id)
    ensemble = Ensemble.from_spec(EnsembleSpec((run_a,), overrides={"tta": "hflip"}, device="cpu"))
    expected = top_probs(ensemble, pool)
    threshold = float(np.median(np.concatenate([t.ravel() for t, _ in expected.values()])))
    pseudo_dir = root / "pseudo_r1"
    result = run_cli(
        "pseudo", run_a, "--images", pool, "--out", pseudo_dir, "--threshold", repr(threshold),
        "--tta", "hflip", "--device", "cpu", "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "train on them with --set data.pseudo=" in result.output

    raw_b = json.loads(json.dumps(raw))
    raw_b["data"]["pseudo"] = str(pseudo_dir)  # a single folder as a string
    config_b = root / "round_b.yaml"
    config_b.write_text(yaml.safe_dump(raw_b))
    trained = run_cli("train", config_b, "--fold", "0")
    assert trained.exit_code == 0, trained.output
    (run_b,) = [p for p in (root / "runs" / "tiny").iterdir() if p.is_dir() and p != run_a]
    return {
        "root": root, "data": data, "pool": pool, "run_a": run_a, "run_b": run_b,
        "raw_b": raw_b, "config_b": config_b, "pseudo": pseudo_dir, "threshold": threshold,
        "expected": expected, "train_output": trained.output,
    }  # fmt: skip


def manifest_of(folder):
    return json.loads((folder / "pseudo.json").read_text())


def read_pseudo_mask(folder, image_id):
    stem = image_id.rsplit(".", 1)[0]
    return np.array(Image.open(folder / "masks" / f"{stem}.png"))


def test_masks_are_the_argmax_where_the_ensemble_is_sure_and_ignore_elsewhere(rounds):
    threshold = np.float32(rounds["threshold"])
    kept = total = 0
    for image_id, (h, w) in POOL.items():
        mask = read_pseudo_mask(rounds["pseudo"], image_id)
        assert mask.shape == (h, w) and mask.dtype == np.uint8  # the image's own size
        top, label = rounds["expected"][image_id]
        sure = top >= threshold
        np.testing.assert_array_equal(mask[sure], label[sure])
        assert np.all(mask[~sure] == IGNORE)
        kept, total = kept + sure.sum(), total + sure.size
    assert 0.3 < kept / total < 0.7  # the median threshold: both cases, about half each


def test_manifest_records_the_source_and_the_kept_shares(rounds, tmp_path, monkeypatch):
    manifest = manifest_of(rounds["pseudo"])
    assert manifest["source_runs"] == [str(rounds["run_a"].resolve())]
    assert manifest["threshold"] == rounds["threshold"]
    assert manifest["classes"] == ["background", "red", "green", "blue"]
    assert manifest["ignore_index"] == IGNORE and manifest["checkpoint"] == "best"
    assert manifest["infer_overrides"] == {"tta": "hflip"}
    assert manifest["environment"]["versions"]["segarena"]
    assert manifest["image_count"] == len(POOL) == len(manifest["images"])
    kept = pixels = 0
    for record in manifest["images"]:
        mask = np.array(Image.open(rounds["pseudo"] / record["mask"]))
        assert record["kept_share"] == pytest.approx((mask != IGNORE).mean())
        assert record["classes"] == sorted(set(np.unique(mask).tolist()) - {IGNORE})
        kept, pixels = kept + (mask != IGNORE).sum(), pixels + mask.size
    assert manifest["kept_share"] == pytest.approx(kept / pixels)

    # pairs.txt is a data source from any data.root and working directory
    monkeypatch.chdir(tmp_path)
    raw = tiny_config(tmp_path, tmp_path / "runs")
    raw["data"]["sources"] = [{"pairs": str(rounds["pseudo"] / "pairs.txt")}]
    samples = read_samples(config_from_dict(raw).data)
    assert len(samples) == len(POOL)
    for sample in samples:
        record = next(r for r in manifest["images"] if r["image"] == str(sample.image_path))
        np.testing.assert_array_equal(
            load_mask(sample), np.array(Image.open(rounds["pseudo"] / record["mask"]))
        )


def test_pseudo_images_train_every_fold_and_never_validate(rounds):
    cfg = config_from_dict(rounds["raw_b"])
    samples = read_samples(cfg.data, cfg.split)
    folds = read_folds(rounds["run_b"] / "folds.csv", samples, cfg.split)
    folder = rounds["pseudo"]
    records = {f"pseudo:{folder.name}/{r['id']}": r for r in manifest_of(folder)["images"]}
    pseudo_ids = {i for i, r in records.items() if r["kept"] > 0}
    assert len(pseudo_ids) >= len(POOL) - 1
    labelled = {s.id for s in samples}
    for fold in (0, 1):
        for debug in (False, True):
            data = fold_data(samples, folds, fold, cfg, debug=debug)
            train_ids = {s.id for s in data.train}
            assert {s.id for s in data.val} <= labelled  # no pseudo image validates
            if debug:
                assert train_ids & pseudo_ids
            else:
                assert pseudo_ids <= train_ids
                assert train_ids - pseudo_ids == {s.id for s, f in zip(samples, folds) if f != fold}
    sample = next(
        s for s in fold_data(samples, folds, 0, cfg, debug=False).train if s.id in records
    )
    np.testing.assert_array_equal(
        load_mask(sample), np.array(Image.open(folder / records[sample.id]["mask"]))
    )
    listed = (rounds["run_b"] / "folds.csv").read_text()
    assert "pseudo" not in listed
    assert listed == (rounds["run_a"] / "folds.csv").read_text()


def test_the_round_records_its_gain_over_the_source_run(rounds):
    run_a, run_b = rounds["run_a"], rounds["run_b"]
    before = json.loads((run_a / "summary.json").read_text())
    summary = json.loads((run_b / "summary.json").read_text())
    gain = summary["pseudo_gain"]
    assert gain["source_run"] == str(run_a.resolve())
    assert gain["source_miou"] == before["miou"] and gain["miou"] == summary["miou"]
    assert gain["gain"] == pytest.approx(summary["miou"] - before["miou"])
    assert summary["pseudo_gain_reason"] is None
    assert "pseudo-labels: mIoU" in rounds["train_output"]
    manifest = manifest_of(rounds["pseudo"])
    for record in (summary["pseudo"][0], json.loads((run_b / "run.json").read_text())["pseudo"][0]):
        assert record["folder"] == str(rounds["pseudo"].resolve())
        assert record["source_runs"] == [str(run_a.resolve())]
        assert record["threshold"] == rounds["threshold"]
        assert record["image_count"] == len(POOL)
        assert record["kept_share"] == manifest["kept_share"]


def test_bad_pseudo_folders_exit_2_naming_the_folder(rounds, tmp_path):
    runs_before = sorted((rounds["root"] / "runs" / "tiny").iterdir())
    train_with = ["train", rounds["config_b"], "--fold", "0", "--set"]

    result = run_cli(*train_with, f"data.pseudo={tmp_path / 'nowhere'}")
    assert result.exit_code == 2 and f"{tmp_path / 'nowhere'}: folder not found" in result.output

    (tmp_path / "empty").mkdir()
    result = run_cli(*train_with, f"data.pseudo={tmp_path / 'empty'}")
    assert result.exit_code == 2 and f"{tmp_path / 'empty'}: no pseudo.json" in result.output

    other = tmp_path / "other_classes"
    shutil.copytree(rounds["pseudo"], other)
    manifest = manifest_of(other)
    manifest["classes"] = ["background", "red", "green", "yellow"]
    (other / "pseudo.json").write_text(json.dumps(manifest))
    result = run_cli(*train_with, f"data.pseudo={other}")
    assert result.exit_code == 2, result.output
    assert str(other) in result.output and "but data.classes is" in result.output

    leaky = tmp_path / "leaky"  # pseudo-labels of the labelled images themselves
    result = run_cli(
        "pseudo", rounds["run_a"], "--images", rounds["data"] / "images", "--out", leaky,
        "--device", "cpu", "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run_cli(*train_with, f"data.pseudo={leaky}")
    assert result.exit_code == 2, result.output
    assert str(leaky) in result.output and "are labelled images" in result.output

    result = run_cli(*train_with, f"data.pseudo={rounds['pseudo']}", "--set", "data.image_size=")
    assert result.exit_code == 2, result.output
    assert "more/e (80x48)" in result.output and "set data.image_size" in result.output

    # every check ran before a run directory was made
    assert sorted((rounds["root"] / "runs" / "tiny").iterdir()) == runs_before


def test_pseudo_refuses_a_non_empty_out_unless_forced(rounds, tmp_path):
    base = ["pseudo", rounds["run_a"], "--images", rounds["pool"], "--device", "cpu",
            "--workers", "0"]  # fmt: skip
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    result = run_cli(*base, "--out", taken)
    assert result.exit_code == 2 and f"--out {taken}: exists and is not empty" in result.output
    result = run_cli(*base, "--out", taken, "--force")  # --force replaces pseudo folders only
    assert result.exit_code == 2 and "not a pseudo-label folder" in result.output
    assert (taken / "notes.txt").read_text() == "mine"

    earlier = tmp_path / "earlier"
    shutil.copytree(rounds["pseudo"], earlier)
    result = run_cli(*base, "--out", earlier, "--threshold", "0.5")
    assert result.exit_code == 2 and "--force" in result.output
    result = run_cli(*base, "--out", earlier, "--threshold", "0.5", "--force")
    assert result.exit_code == 0, result.output
    assert manifest_of(earlier)["threshold"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "taken"]  # no leftovers

    result = run_cli(*base, "--out", tmp_path / "new", "--threshold", "1.5")
    assert result.exit_code == 2, result.output
    assert "--threshold 1.5" in result.output and not (tmp_path / "new").exists()
