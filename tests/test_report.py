"""segarena report and eda: self-contained HTML pages, checked in a headless browser."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import yaml
from browser import check_page, chromium
from fake_runs import fake_run, masks, predictions
from helpers import run_cli
from PIL import Image
from synthetic import make_mask_folder, tiny_config

from segarena.config import config_from_dict
from segarena.data.readers import read_samples
from segarena.report.eda import pixel_counts

REPORT_PLOTS = {"curves": 1, "per-class-iou": 1, "confusion": 1, "examples": 2}
EDA_PLOTS = {
    "pixel-frequency": 1,
    "presence": 1,
    "sizes": 1,
    "groups": 1,
    "examples": 1,
    "folds": 1,
}
PNG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A trained two-fold run with its report, and the EDA page of its data."""
    from segarena.train.run import fit

    root = tmp_path_factory.mktemp("pages")
    data = make_mask_folder(root / "data", n=12, size=32)
    out = root / "runs"
    config = tiny_config(data, out, train={"epochs": 2})
    run_dir = fit(config_from_dict(config), out, folds="all").path
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("report", run_dir, "--examples", "2")
    assert result.exit_code == 0, result.output
    result = run_cli("eda", root / "c.yaml")
    assert result.exit_code == 0, result.output
    return {"report": run_dir / "report.html", "eda": out / "tiny" / "eda.html"}


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, re.S))


def assert_plots(html: str, expected: dict[str, int]) -> None:
    """Each plot section holds its embedded PNGs, and nothing is loaded from elsewhere."""
    found = sections(html)
    for anchor, count in expected.items():
        images = PNG.findall(found[anchor])
        assert len(images) == count, anchor
        for data in images:
            assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    assert html.count("<img") == sum(expected.values())
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html


@pytest.mark.slow  # `pages` trains a run
def test_report_sections_and_embedded_plots(pages):
    html = pages["report"].read_text()
    assert_plots(html, REPORT_PLOTS)
    assert list(sections(html)) == ["summary", "curves", "per-class-iou", "confusion", "examples"]
    assert "Best validation images" in html and "Worst validation images" in html
    run_dir = pages["report"].parent
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run_dir.name in sections(html)["summary"]
    assert f"{summary['miou']:.4f}" in sections(html)["summary"]


@pytest.mark.slow  # `pages` trains a run
def test_eda_sections_and_embedded_plots(pages):
    html = pages["eda"].read_text()
    assert_plots(html, EDA_PLOTS)
    assert list(sections(html))[0] == "overview"
    assert "folds.csv" in html and "read from" in html  # the run wrote the experiment's folds


def test_eda_pixel_counts_match_the_masks(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=6, size=32)
    config = config_from_dict(tiny_config(data, tmp_path / "runs"))
    samples = read_samples(config.data)
    counts = pixel_counts(samples, 4, 255)
    truth = masks(data)
    for row, sample in zip(counts, samples):
        np.testing.assert_array_equal(row[:4], np.bincount(truth[sample.id].ravel(), minlength=4))
        assert row[4] == 0
    result = run_cli("eda", tmp_path / "missing.yaml")
    assert result.exit_code == 2


def test_report_of_a_run_without_predictions_says_so(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=6, size=32)
    run_dir = fake_run(tmp_path, data, "r", predictions(masks(data), 0.5, seed=0))
    for path in (run_dir / "fold_0" / "oof").glob("*.npy"):
        path.unlink()
    result = run_cli("report", run_dir, "--html", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r.html").read_text()
    assert "holds no out-of-fold predictions" in html
    assert_plots(html, {"curves": 1, "per-class-iou": 1, "confusion": 1, "examples": 0})


@pytest.mark.slow  # `pages` trains a run; a browser starts
@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make test installs it)")
@pytest.mark.parametrize("name", ["report", "eda"])
def test_pages_render_in_a_real_browser(pages, name):
    html = pages[name].read_text()
    check = check_page(pages[name])
    assert check.errors == []
    assert check.requests == [pages[name].resolve().as_uri()]  # no other file, no network
    assert len(check.images) == html.count("<img") > 0
    for alt, complete, width in check.images:
        assert complete and width > 0, f"image {alt!r} did not decode"
    shot = np.asarray(Image.open(io.BytesIO(check.screenshot)).convert("L"))
    assert shot.shape[0] > 1000 and shot.std() > 20  # tall, and not one blank colour
    heading = "segarena report" if name == "report" else "segarena EDA"
    assert heading in check.text
