"""segarena compete: the plan (budget and device), the playbook end to end on tiny data, a
stage dropped (and one kept) by the keep rule, stages skipped when time runs out, resume
after a kill between stages and inside one, and bad input (exit 2, nothing created)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import history, run_cli, write_config
from PIL import Image
from synthetic import make_mask_folder, tiny_config

from segarena.compete import oof, runner
from segarena.compete import stages as stage_module
from segarena.compete.plan import (
    BARE,
    MIN_EPOCHS,
    BudgetTooSmall,
    Costs,
    DataFacts,
    minimum_minutes,
    plan_competition,
)
from segarena.compete.probe import Speed, affine, item_costs, measure_speed
from segarena.config import config_from_dict
from segarena.data.readers import read_samples
from segarena.submission.check import validate_submission

FAST = Speed(train_s_per_mpx=0.03, infer_s_per_mpx=0.01, device="cuda")  # an H100-like pace
SLOW = Speed(train_s_per_mpx=9.0, infer_s_per_mpx=3.0, device="cpu")  # 2 CPU cores
TINY = Speed(train_s_per_mpx=1.0, infer_s_per_mpx=0.3, device="cpu")  # plans every stage
CAMVID = DataFacts(images=367, size=(360, 480), folds=5, test_images=233)
TRAIN = {"epochs": 2, "batch_size": 4, "seed": 0}
pytestmark = pytest.mark.usefixtures("one_thread")  # a shared 2-core machine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compete")
    labelled = make_mask_folder(root / "data", n=12)
    test = make_mask_folder(root / "test", n=6, seed=5) / "images"
    return labelled, test


@pytest.fixture
def stub_probe(monkeypatch):
    monkeypatch.setattr(runner, "measure_speed", lambda config, size, device, samples: TINY)


def project(tmp_path, labelled, name="exp", **sections):
    raw = tiny_config(labelled, tmp_path / "runs", train=TRAIN, **sections)
    return write_config(tmp_path / f"{name}.yaml", raw), raw


def run_dirs(runs: Path) -> list[Path]:
    folder = runs / "tiny"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "run.json").is_file())


# the plan (no training) ------------------------------------------------------------------


def test_a_fast_device_plans_more_folds_and_a_bigger_input_than_two_cpus():
    fast, slow = plan_competition(CAMVID, FAST, 3600), plan_competition(CAMVID, SLOW, 3600)
    assert len(fast.folds) > len(slow.folds)
    assert fast.image_size[0] * fast.image_size[1] > slow.image_size[0] * slow.image_size[1]
    assert fast.pseudo and not slow.pseudo  # the CPU budget has no room for a second run
    assert sum(slow.estimates.values()) <= 3600 * 0.9  # the plan fits the budget
    assert any("do not fit" in r for r in slow.reasons) and slow.reasons[0].startswith(
        "measured on cpu"
    )


def test_a_bigger_budget_plans_at_least_as_much():
    short, long = plan_competition(CAMVID, SLOW, 3600), plan_competition(CAMVID, SLOW, 6 * 3600)
    assert len(long.folds) >= len(short.folds) and long.scale >= short.scale
    shape = [(len(p.folds), p.scale, p.pseudo) for p in (short, long)]
    assert shape[0] != shape[1]


def test_a_cpu_budget_trains_one_fold_fully_rather_than_several_folds_weakly():
    """2 folds would fit the minimum 8 epochs each (10), not a full schedule (30): the plan
    trains 1 fold for 22 epochs instead; with 6 times the budget, 4 folds train all 30."""
    mid = Speed(train_s_per_mpx=2.0, infer_s_per_mpx=0.6, device="cpu")
    short, long = plan_competition(CAMVID, mid, 3600), plan_competition(CAMVID, mid, 6 * 3600)
    two_folds = Costs(CAMVID, mid).most_epochs(3600 * 0.9, tuple(short.image_size), 2, **BARE)[0]
    assert MIN_EPOCHS <= two_folds < CAMVID.max_epochs
    assert short.folds == [0] and short.epochs > 2 * two_folds
    assert any("do not fit a full schedule" in r for r in short.reasons)
    assert len(long.folds) >= 3 and long.epochs == CAMVID.max_epochs


def test_a_time_bound_plan_trains_its_runs_by_the_clock(data, tmp_path):
    """When fewer epochs than a full schedule fit, the runs get train.budget_min (their
    planned seconds), whose own probe measures the real pipeline; SWA, which needs a
    fixed epoch count, is left out. A capped plan keeps fixed epochs."""
    labelled, _ = data
    _, raw = project(tmp_path, labelled)
    raw["train"]["epochs"] = 30
    config = config_from_dict(raw)
    facts = DataFacts(images=12, size=(64, 64), folds=2, test_images=6, max_epochs=30)
    plan = plan_competition(facts, Speed(500.0, 100.0, "cpu"), 300)
    assert plan.epochs < 30 and plan.run_budget_s and plan.swa_start is None
    assert any("SWA needs a fixed epoch count" in r for r in plan.reasons)
    stages = stage_module.Stages(None, config, plan, None, 300, None, None, "cpu", 200, print)
    folds, pseudo = stages.stage_config(), stages.stage_config(pseudo=str(tmp_path))
    assert folds.train.epochs is None
    assert folds.train.budget_min == pytest.approx(plan.run_budget_s["folds"] / 60, abs=1e-3)
    assert pseudo.train.budget_min > folds.train.budget_min  # it trains on the test images too
    capped = plan_competition(facts, FAST, 300)
    assert capped.run_budget_s is None and capped.epochs == 30
    fixed = stage_module.Stages(None, config, capped, None, 300, None, None, "cpu", 200, print)
    assert fixed.stage_config().train.epochs == 30 and fixed.stage_config().train.budget_min is None


def test_the_probe_splits_time_into_a_fixed_and_a_per_megapixel_part(data, tmp_path):
    assert affine([(0.2, 1.0), (0.05, 0.4)]) == pytest.approx((4.0, 0.2))
    assert affine([(0.2, 1.0), (0.05, 0.1)]) == pytest.approx((5.0, 0.0))  # fixed < 0: all per MPx
    labelled, _ = data
    _, raw = project(tmp_path, labelled)
    config = config_from_dict(raw)
    samples = read_samples(config.data, config.split)
    train_item_s, infer_item_s = item_costs(config, samples[:3])
    assert 0 < train_item_s < 1 and 0 < infer_item_s < 1  # decoding, resizing, scoring
    speed = measure_speed(config, (64, 64), "cpu", samples)
    assert speed.train_s_per_mpx > 0 and speed.infer_s_per_mpx > 0
    assert speed.infer_item_s > 0 and speed.device == "cpu"


def test_a_choice_without_tta_is_scored_and_submitted_plain_whatever_the_runs_infer_says():
    choice = {"runs": ["run"], "checkpoint": "best", "tta": {}, "weights": None}
    assert oof.choice_spec(choice, "cpu").overrides == {"tta": "none", "scales": [1.0]}
    scales = {**choice, "tta": {"tta": "hflip", "scales": [0.75, 1.0, 1.25]}}
    assert oof.choice_spec(scales, "cpu").overrides == scales["tta"]


def test_a_budget_below_the_smallest_plan_names_the_minimum():
    least = minimum_minutes(CAMVID, SLOW)
    plan_competition(CAMVID, SLOW, least * 60 * 1.01)  # just enough
    with pytest.raises(BudgetTooSmall, match=r"give at least [\d.]+ minutes"):
        plan_competition(CAMVID, SLOW, least * 60 * 0.9)


# bad input: exit 2, one message, nothing created -------------------------------------------


def created_nothing(tmp_path: Path) -> bool:
    return not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_bad_input_exits_2_and_creates_nothing(data, tmp_path, stub_probe, monkeypatch):
    labelled, test = data
    config, raw = project(tmp_path, labelled)
    base = ["compete", config, "--out", tmp_path / "out"]

    result = run_cli(*base, "--test-images", test, "--budget-min", 0.001)  # budget
    assert result.exit_code == 2 and "give at least" in result.output, result.output
    assert created_nothing(tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(*base, "--test-images", empty, "--budget-min", 30)
    assert result.exit_code == 2 and "--test-images" in result.output and "no " in result.output
    assert created_nothing(tmp_path)

    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(grey / "a.png")  # 1 channel, not 3
    result = run_cli(*base, "--test-images", grey, "--budget-min", 30)
    assert result.exit_code == 2 and "channel count" in result.output, result.output
    assert created_nothing(tmp_path)

    holdout, _ = project(tmp_path, labelled, "holdout", split={"method": "holdout"})
    result = run_cli("compete", holdout, "--test-images", test, "--budget-min", 30,
                     "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 2 and "split.method=holdout" in result.output, result.output
    assert created_nothing(tmp_path)

    other = tmp_path / "other"
    other.mkdir()
    (other / "compete.json").write_text(json.dumps({"identity": "x", "config_path": "b.yaml"}))
    for extra in ([], ["--resume"]):
        result = run_cli("compete", config, "--test-images", test, "--budget-min", 30,
                         "--out", other, *extra)  # fmt: skip
        assert result.exit_code == 2 and "another competition" in result.output, result.output
    assert created_nothing(tmp_path) and sorted(p.name for p in other.iterdir()) == ["compete.json"]


# the playbook on tiny data ---------------------------------------------------------------


@pytest.mark.slow
def test_compete_end_to_end_keeps_what_helps_drops_what_does_not(
    data, tmp_path, stub_probe, monkeypatch
):
    """TTA is forced to help and the pseudo round forced not to (the real gain function
    scores everything else): the submission validates, compete.json and compete.html say
    which stage was kept and which dropped, and the submission uses only what was kept."""
    labelled, test = data
    config, _ = project(tmp_path, labelled)
    real = oof.gain_of

    def forced(base, arm, name, n_boot=2000):
        result = real(base, arm, name, n_boot)
        if name == "tta_hflip":
            result.update(gain=0.05, ci=[0.01, 0.09])
        elif name.startswith(("pseudo", "ensemble", "tta_hflip_scales", "swa")):
            result.update(gain=-0.05, ci=[-0.09, -0.01])
        return result

    monkeypatch.setattr(oof, "gain_of", forced)
    out = tmp_path / "out"
    result = run_cli("compete", config, "--test-images", test, "--budget-min", 30,
                     "--out", out, "--n-boot", 200)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.index("plan: folds [0, 1]") < result.output.index("folds: running")
    submission = out / "submission.csv"
    assert validate_submission(submission, None, 4, (256, 256), "csv") == 6
    record = json.loads((out / "compete.json").read_text())
    stages = record["stages"]
    assert {k: v["status"] for k, v in stages.items()} == {
        "plan": "done", "folds": "done", "tta": "kept", "pseudo": "dropped",
        "ensemble": "dropped", "swa": "dropped", "submit": "done",
    }  # fmt: skip
    assert "interval" in stages["pseudo"]["reason"] and stages["pseudo"]["ci"][1] < 0
    assert stages["pseudo"]["threshold"]["threshold"] in oof.THRESHOLDS
    assert (out / "pseudo" / "pseudo.json").is_file()  # an ordinary segarena pseudo folder
    sidecar = json.loads((out / "submission.csv.segarena.json").read_text())
    base_run = str(Path(stages["folds"]["runs"][0]).resolve())
    assert sidecar["run_dirs"] == [base_run]  # the dropped pseudo run is not in it
    assert sidecar["options"] == {"tta": "hflip", "scales": [1.0]}
    assert sidecar["checkpoint"] == "best"
    assert len(run_dirs(tmp_path / "runs")) == 2  # the fold run and the pseudo run
    page = (out / "compete.html").read_text()
    assert "dropped" in page and "kept" in page and "Pseudo-label threshold" in page
    again = run_cli("compete", config, "--test-images", test, "--budget-min", 30,
                    "--out", out)  # fmt: skip
    assert again.exit_code == 2 and "--resume" in again.output  # same competition, no --resume


@pytest.mark.slow
def test_a_time_bound_competition_trains_by_the_clock_within_its_budget(data, tmp_path):
    labelled, test = data
    _, raw = project(tmp_path, labelled)
    raw["train"]["epochs"] = 30  # a full schedule does not fit one minute at this speed
    speed = Speed(train_s_per_mpx=50.0, infer_s_per_mpx=10.0, device="cpu")
    comp = runner.compete(config_from_dict(raw), test, 1.0, out=tmp_path / "out",
                          probe=lambda c, s: speed, n_boot=200, echo=lambda line: None)  # fmt: skip
    plan = comp.record["plan"]
    assert plan["run_budget_s"] and plan["swa_start"] is None
    run = Path(comp.record["stages"]["folds"]["runs"][0])
    summary = json.loads((run / "summary.json").read_text())
    planned_min = plan["run_budget_s"]["folds"] / 60
    assert summary["budget"]["minutes"] == pytest.approx(planned_min, abs=1e-3)
    assert comp.record["stages"]["submit"]["status"] == "done"
    assert comp.spent_s() <= 60 * 1.25  # the whole competition, with a loaded machine's slack


@pytest.mark.slow
def test_stages_are_skipped_when_the_time_left_cannot_fit_them(data, tmp_path, monkeypatch):
    labelled, test = data
    _, raw = project(tmp_path, labelled)
    monkeypatch.setattr(stage_module, "time_left", lambda comp, budget_s: 0.0)
    comp = runner.compete(config_from_dict(raw), test, 30, out=tmp_path / "out",
                          probe=lambda c, s: TINY, n_boot=200, echo=lambda line: None)  # fmt: skip
    stages = comp.record["stages"]
    for name in ("tta", "pseudo", "swa"):
        assert stages[name]["status"] == "skipped" and "min left" in stages[name]["reason"]
    assert stages["ensemble"]["status"] == "skipped"
    assert stages["submit"]["status"] == "done" and (tmp_path / "out" / "submission.csv").is_file()
    assert len(run_dirs(tmp_path / "runs")) == 1


@pytest.mark.slow
def test_a_killed_compete_resumes_without_retraining_finished_stages(
    data, tmp_path, stub_probe, monkeypatch
):
    labelled, test = data
    config, raw = project(tmp_path, labelled)
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["compete", config, "--test-images", test, "--budget-min", 30, "--out", out,
            "--n-boot", 200]  # fmt: skip

    # 1. killed between stages: after the fold run, as TTA starts
    def killed(self, stage):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(stage_module.Stages, "tta", killed)
        result = run_cli(*args)
    assert result.exit_code == 130 and "--resume" in result.output, result.output
    record = json.loads((out / "compete.json").read_text())
    assert record["stages"]["folds"]["status"] == "done"
    assert record["stages"]["tta"]["status"] == "running"
    (base,) = run_dirs(runs)
    base_history = (base / "fold_1" / "metrics.jsonl").read_text()

    # 2. resumed, then killed inside the pseudo run: after its first epoch
    calls = []

    def stop(record, learner):
        calls.append(record.epoch)
        if len(calls) == 1:
            raise KeyboardInterrupt

    from segarena.train.fold import TrainHooks

    with pytest.raises(KeyboardInterrupt):
        runner.compete(config_from_dict(raw), test, 30, out=out, resume=True,
                       probe=lambda c, s: TINY, hooks=TrainHooks(on_epoch_end=stop),
                       n_boot=200, echo=lambda line: None)  # fmt: skip
    record = json.loads((out / "compete.json").read_text())
    assert record["stages"]["tta"]["status"] in ("kept", "dropped")
    assert record["stages"]["pseudo"]["status"] == "running"
    pseudo = runs / record["runs"]["pseudo"]
    assert not (pseudo / "summary.json").exists() and not history(pseudo, 0)  # killed in epoch 1

    # 3. resumed to the end: the fold run is not trained again, the pseudo run continues
    result = run_cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "folds: done earlier" in result.output and "pseudo: resuming" in result.output
    assert run_dirs(runs) == sorted([base, pseudo])  # no third run
    assert (base / "fold_1" / "metrics.jsonl").read_text() == base_history
    for fold in (0, 1):
        assert [r["epoch"] for r in history(pseudo, fold)] == [1, 2]
    record = json.loads((out / "compete.json").read_text())
    assert all(s["status"] in ("done", "kept", "dropped") for s in record["stages"].values())
    assert validate_submission(out / "submission.csv", None, 4, (256, 256), "csv") == 6
