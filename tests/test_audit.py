"""segarena audit: agreement with cleanlab (the AGPL reference, a test-only dependency),
and finding known label noise in a run whose out-of-fold probabilities know the truth."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cleanlab.segmentation.filter import find_label_issues
from cleanlab.segmentation.rank import get_label_quality_scores
from helpers import run_cli
from label_noise import fake_run

from segarena.data.readers import load_mask, read_samples
from segarena.labels.audit import audit_run, load_probs
from segarena.labels.confident import LabelIssueFinder

IGNORE = 255


def noisy_problem(seed: int, n: int = 6, k: int = 4, h: int = 24, w: int = 32):
    """Labels with 10% of pixels relabelled at random, and float32 probabilities of a
    model that mostly knows the true labels."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=(n, h, w))
    logits = 3.0 * np.eye(k)[truth].transpose(0, 3, 1, 2) + 2.0 * rng.normal(size=(n, k, h, w))
    probs = torch.from_numpy(logits).softmax(1).float().numpy()
    labels = truth.copy()
    flip = rng.random(labels.shape) < 0.1
    labels[flip] = rng.integers(0, k, size=flip.sum())
    return labels, probs


def run_finder(labels: np.ndarray, probs: np.ndarray, num_classes: int):
    def pairs():
        return ((torch.from_numpy(p), torch.from_numpy(y)) for p, y in zip(probs, labels))

    finder = LabelIssueFinder(num_classes, IGNORE).fit(pairs)
    return finder, np.stack([found.issues for found in finder.issues(pairs)])


def cleanlab_issues(labels, probs):
    return find_label_issues(labels, probs, n_jobs=1, verbose=False)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_cleanlab_exactly_on_continuous_probabilities(seed):
    labels, probs = noisy_problem(seed)
    finder, issues = run_finder(labels, probs, 4)
    expected = cleanlab_issues(labels, probs)
    assert expected.sum() > 50  # the comparison is not between two empty masks
    np.testing.assert_array_equal(issues, expected)
    scores, _ = get_label_quality_scores(labels, probs, verbose=False)
    np.testing.assert_allclose(finder.scores, scores, rtol=0, atol=1e-9)


def test_quantised_probabilities_differ_from_cleanlab_only_in_ties():
    labels, probs = noisy_problem(2)
    probs = (np.round(probs * 255) / 255).astype(np.float32)  # as train.oof_dtype uint8
    finder, issues = run_finder(labels, probs, 4)
    expected = cleanlab_issues(labels, probs)
    assert finder.ties > 0  # the cutoff falls inside a run of equal self-confidences
    assert issues.sum() == pytest.approx(expected.sum(), abs=finder.ties)
    assert (issues == expected).mean() > 0.99
    own = np.take_along_axis(probs, labels[:, None], 1)[:, 0]
    cutoff = np.sort(own.ravel())[finder.num_issues - 1]
    # every disagreement sits exactly at the cutoff value, where the order is arbitrary
    assert np.all(own[issues != expected] == cutoff)


def test_exactly_the_estimated_number_of_candidates_is_taken_despite_ties():
    # Every pixel's label is its least likely class, so every candidate is flagged:
    # the flagged count is then the number of candidates the cutoff let through.
    _, probs = noisy_problem(3)
    probs = (np.round(probs * 20) / 20).astype(np.float32)  # coarse: many ties
    labels = probs.argmin(1)
    finder, issues = run_finder(labels, probs, 4)
    assert finder.ties > 0 and finder.num_issues > 0
    assert issues.sum() == finder.num_issues


def test_ignored_pixels_are_never_flagged_and_change_nothing():
    labels, probs = noisy_problem(4)
    ignored = np.random.default_rng(4).random(labels.shape) < 0.2
    labels[ignored] = IGNORE
    finder, issues = run_finder(labels, probs, 4)
    assert issues.any() and not issues[ignored].any()
    other = probs.copy()
    other.transpose(0, 2, 3, 1)[ignored] = np.eye(4, dtype=np.float32)[0]  # differ there only
    finder2, issues2 = run_finder(labels, other, 4)
    np.testing.assert_array_equal(issues, issues2)
    np.testing.assert_array_equal(finder.scores, finder2.scores)
    np.testing.assert_array_equal(finder.thresholds, finder2.thresholds)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A fake run with 4 of 24 masks corrupted, audited into RUN/audit."""
    tmp = tmp_path_factory.mktemp("audit")
    run_dir, config, swapped, _ = fake_run(tmp)
    manifest = audit_run(run_dir, top=5)
    return run_dir, config, swapped, manifest


@pytest.mark.slow  # `audited` builds and audits a run (~2 s)
def test_audit_ranks_the_corrupted_images_first_and_flags_the_swapped_pixels(audited):
    run_dir, _, swapped, manifest = audited
    with (run_dir / "audit" / "issues.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24 and [int(r["rank"]) for r in rows] == list(range(1, 25))
    assert list(rows[0])[-4:] == ["issues_background", "issues_red", "issues_green", "issues_blue"]
    k = len(swapped)
    precision_at_k = sum(r["id"] in swapped for r in rows[:k]) / k
    assert precision_at_k >= 0.8, [(r["id"], r["score"]) for r in rows[: k + 2]]

    found = hits = 0
    for stem, pixels in swapped.items():
        record = manifest["images"][stem]
        stored = np.load(run_dir / "audit" / record["file"])
        assert stored["issues"].shape == pixels.shape
        hits += (stored["issues"] & pixels).sum()
        found += pixels.sum()
    recall = hits / found
    flagged_in_swaps = hits / manifest["flagged_pixels"]
    print(f"precision@{k} {precision_at_k:.2f}, swapped-pixel recall {recall:.3f}, "
          f"flagged pixels inside swapped blobs {flagged_in_swaps:.3f}")  # fmt: skip
    assert recall > 0.5 and flagged_in_swaps > 0.9

    page = (run_dir / "audit" / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5
    assert rows[0]["id"] in page and "http" not in page  # self-contained
    assert json.loads((run_dir / "audit" / "audit.json").read_text()) == manifest


@pytest.mark.slow  # `audited` builds and audits a run (~2 s)
def test_audit_of_a_run_agrees_with_cleanlab_on_the_same_inputs(audited):
    run_dir, config, _, manifest = audited
    from segarena.config import config_from_dict

    data = config_from_dict(config).data
    samples = {s.id: s for s in read_samples(data)}
    folds = {i: r["fold"] for i, r in manifest["images"].items()}
    ids = sorted(folds)  # the audit's order is the data order, which sorts by stem here
    labels = np.stack([load_mask(samples[i]) for i in ids]).astype(np.int64)
    probs = np.stack(
        [
            load_probs(run_dir / f"fold_{folds[i]}" / "oof" / f"{i}.npy", 4, (48, 48)).numpy()
            for i in ids
        ]
    )
    expected = cleanlab_issues(labels, probs)
    issues = np.zeros_like(expected)
    for row, sample_id in enumerate(ids):
        record = manifest["images"][sample_id]
        if record["file"]:
            issues[row] = np.load(run_dir / "audit" / record["file"])["issues"]
    agreement = (issues == expected).mean()
    print(f"pixel agreement with cleanlab {agreement:.5f}, {expected.sum()} vs {issues.sum()}")
    assert agreement > 0.99 and abs(int(issues.sum()) - int(expected.sum())) <= 2
    scores, _ = get_label_quality_scores(labels, probs, verbose=False)
    with (run_dir / "audit" / "issues.csv").open() as f:
        ours = {r["id"]: float(r["score"]) for r in csv.DictReader(f)}
    np.testing.assert_allclose([ours[i] for i in ids], scores, atol=1e-6)


@pytest.mark.slow  # runs `segarena audit`
def test_cli_audit_and_its_errors(audited, tmp_path):
    run_dir = audited[0]
    out = tmp_path / "aud"
    result = run_cli("audit", run_dir, "--top", "2", "--out", out)
    assert result.exit_code == 0, result.output
    assert "audited 24 images" in result.output
    assert (out / "audit.json").is_file() and (out / "issues.csv").is_file()
    result = run_cli("audit", tmp_path / "nowhere")
    assert result.exit_code == 2 and "not a segarena run directory" in result.output
    empty = tmp_path / "empty_run"
    empty.mkdir()
    for name in ("config.yaml", "folds.csv"):
        (empty / name).write_text((run_dir / name).read_text())
    result = run_cli("audit", empty)
    assert result.exit_code == 2 and "no out-of-fold probabilities" in result.output
    result = run_cli("audit", run_dir, "--top", "-1", "--out", out)
    assert result.exit_code == 2 and "--top -1" in result.output


def test_oof_of_the_wrong_class_count_is_a_user_error(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 4, 4), np.uint8))
    from segarena.errors import UserError

    with pytest.raises(UserError, match=r"x\.npy.*expected \(4, h, w\)"):
        load_probs(path, 4, (8, 8))


def test_the_product_never_imports_cleanlab():
    # cleanlab is AGPL: a test-only reference; segarena must run without it
    import segarena

    root = Path(segarena.__file__).parent
    importing = [
        str(path)
        for path in root.rglob("*.py")
        if re.search(r"^\s*(import|from)\s+cleanlab", path.read_text(), re.MULTILINE)
    ]
    assert not importing
