"""The Python API (`import segarena as sa`) end to end on tiny data: config, create and
fit, seeds, open, evaluate, Predictor; and the errors it raises in the library's words."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import miou_of, run_cli, write_config
from synthetic import CLASSES, make_mask_folder, tiny_config

import segarena as sa
from segarena.data.readers import Sample, load_image, load_mask


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Tiny mask-folder data, its config file, and one trained run of fold 0."""
    root = tmp_path_factory.mktemp("api")
    data = make_mask_folder(root / "data", n=8)
    path = write_config(root / "exp.yaml", tiny_config(data, root / "runs", train={"epochs": 1}))
    config = sa.load_config(path, overrides={"train.batch_size": 2, "model.encoder": "resnet18"})
    run = sa.fit(config, out=root / "runs", folds=[0])
    return root, data, path, run


def test_fit_stays_the_function_after_the_train_package_is_imported():
    import segarena.train.fold  # noqa: F401  (binds the package as segarena's `train`)

    assert callable(sa.fit) and sa.fit.__module__ == "segarena.train.run"
    assert sa.train.__name__ == "segarena.train"  # the package keeps its own name


def test_import_is_light_and_names_are_public():
    code = "import sys, segarena as sa; print('torch' in sys.modules, sa.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", sa.__version__]  # heavy imports wait for first use
    assert set(sa.__all__) == set(sa._EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        sa.trian  # noqa: B018


def test_load_config_overrides_from_a_mapping_are_typed_and_checked(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=4)
    path = write_config(tmp_path / "exp.yaml", tiny_config(data, tmp_path / "runs"))
    config = sa.load_config(path, overrides={"train.epochs": 5, "data.image_size": [32, 48]})
    assert config.train.epochs == 5 and tuple(config.data.image_size) == (32, 48)
    with pytest.raises(sa.UserError, match="epochz"):
        sa.load_config(path, overrides={"train.epochz": 5})


@pytest.mark.slow
def test_fit_returns_a_finished_run_that_opens_with_its_records(project):
    root, _, _, run = project
    assert isinstance(run, sa.Run) and run.finished
    summary = json.loads((run.path / "summary.json").read_text())
    opened = sa.Run.open(run.path)
    assert opened.summary.miou == summary["miou"]
    assert opened.info.folds == [0]
    assert opened.config.train.batch_size == 2  # the override reached the resolved config


@pytest.mark.slow
def test_create_makes_the_run_directory_before_fit_trains_it(project, tmp_path):
    _, _, path, _ = project
    config = sa.load_config(path, overrides={"train.epochs": 1})
    run = sa.Run.create(config, out=tmp_path / "runs", folds="all")
    assert (run.path / "run.json").is_file() and (run.path / "folds.csv").is_file()
    assert not run.finished and run.summary is None and not list(run.path.glob("fold_*"))
    assert run.info.folds == [0, 1]
    run.fit()
    assert run.finished and [f.fold for f in run.summary.folds] == [0, 1]


@pytest.mark.slow
def test_fit_seeds_trains_one_run_per_seed(project, tmp_path):
    _, _, path, _ = project
    config = sa.load_config(path, overrides={"train.epochs": 1})
    runs = sa.fit_seeds(config, seeds=[3, 4], out=tmp_path / "runs")
    assert [r.config.train.seed for r in runs] == [3, 4]
    assert len({r.path for r in runs}) == 2 and all(r.finished for r in runs)
    with pytest.raises(sa.UserError, match="distinct integers"):
        sa.fit_seeds(config, seeds=[1, 1], out=tmp_path / "runs")


@pytest.mark.slow
def test_evaluate_on_a_folder_matches_the_predictor_and_the_cli(project):
    root, data, _, run = project
    images, masks = data / "images", data / "masks"
    scores = sa.evaluate([run], images=images, masks=masks, tta="hflip", device="cpu")
    assert scores.path.is_file() and json.loads(scores.path.read_text())["miou"] == scores.miou

    # the same number from the Predictor's masks, scored here by hand
    predictor = sa.Predictor([run], tta="hflip", device="cpu")
    assert predictor.classes == CLASSES
    matrix = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    for image_path in sorted(images.iterdir()):
        image = load_image(image_path)
        probs = predictor.probs(image)
        assert probs.shape == (len(CLASSES), *image.shape[:2]) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        predicted = predictor.predict(image)
        np.testing.assert_array_equal(predicted, probs.argmax(0))
        truth = np.array(load_mask_of(data, image_path))
        keep = truth != 255
        np.add.at(matrix, (truth[keep], predicted[keep]), 1)
    assert miou_of(matrix)[0] == pytest.approx(scores.miou, abs=1e-9)

    cli = run_cli("evaluate", run.path, "--images", images, "--masks", masks, "--tta", "hflip")
    assert cli.exit_code == 0, cli.output
    assert f"mIoU {scores.miou:.4f}" in cli.output


def load_mask_of(data, image_path):
    mask_path = data / "masks" / (image_path.stem + ".png")
    return load_mask(Sample(image_path.stem, image_path, mask_path))


@pytest.mark.slow
def test_errors_name_arguments_in_the_library_and_flags_in_the_cli(project):
    _, _, _, run = project
    with pytest.raises(sa.UserError) as caught:
        sa.Predictor([run], checkpoint="newest")
    assert str(caught.value).startswith("checkpoint 'newest': expected one of")
    cli = run_cli("evaluate", run.path, "--checkpoint", "newest")
    assert cli.exit_code == 2 and "--checkpoint 'newest': expected one of" in cli.output
    predictor = sa.Predictor([run], device="cpu")
    with pytest.raises(sa.UserError, match=r"shape \(8, 8\).*H x W x 3 uint8"):
        predictor.probs(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(sa.UserError, match=r"folds \[7\]: expected distinct fold numbers"):
        sa.Run.create(run.config, out=run.path.parent.parent, folds=[7])
