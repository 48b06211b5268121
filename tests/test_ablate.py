"""segarena ablate: arms parsed and checked, runs trained once and resumed after a kill,
the paired table (csv, html), inference arms that train nothing, and bad input (exit 2)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import history, run_cli, write_config
from synthetic import make_mask_folder, tiny_config
from torch.optim.optimizer import register_optimizer_step_pre_hook

from segarena.ablate.arms import parse_arm, read_arms_file, split_pairs
from segarena.ablate.infer_arms import mask_tensor, score_checkpoints
from segarena.ablate.plan import make_plan
from segarena.ablate.runner import Ablation, run_ablation
from segarena.ablate.stats import gain_interval, pooled_miou
from segarena.data.readers import load_image
from segarena.errors import UserError
from segarena.infer.ensemble import Ensemble, EnsembleSpec
from segarena.metrics import bootstrap_miou_diff_ci, confusion_matrix
from segarena.report.compare import compare_runs
from segarena.run_dir.layout import RunDir
from segarena.train.fold import TrainHooks

TRAIN = {"epochs": 2, "batch_size": 2, "seed": 0}
COLUMNS = [
    "arm", "kind", "change", "miou", "gain_points", "ci_low_points", "ci_high_points",
    "images_per_s", "minutes", "verdict", "note",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mask_folder(tmp_path_factory.mktemp("data"), n=24, size=32)


def read_rows(path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return {row["arm"]: row for row in reader}


def run_dirs(out, experiment="tiny"):
    return sorted(p for p in (out / experiment).iterdir() if (p / "run.json").is_file())


# parsing and checking (no training) ----------------------------------------------------


def test_pairs_split_on_commas_that_start_a_key():
    assert split_pairs("augment.mixing.cutmix_p=0.5,augment.mixing.cutmix_alpha=1") == [
        "augment.mixing.cutmix_p=0.5",
        "augment.mixing.cutmix_alpha=1",
    ]
    assert split_pairs("tta=hflip,scales=0.75,1.0,1.25,merge=gmean") == [
        "tta=hflip",
        "scales=0.75,1.0,1.25",
        "merge=gmean",
    ]
    assert split_pairs("model.kwargs.decoder_channels=[32, 16,8],train.seed=1") == [
        "model.kwargs.decoder_channels=[32, 16,8]",
        "train.seed=1",
    ]


def test_arms_file_gives_the_same_arms_as_the_flags(tmp_path):
    path = tmp_path / "arms.yaml"
    path.write_text(
        "ema: {train.ema.decay: 0.99}\n"
        "cutmix:\n  augment: {mixing: {cutmix_p: 0.5, cutmix_alpha: 1}}\n"
        "infer:\n  ms: {scales: [0.75, 1.0], merge: gmean}\n"
    )
    arms = {arm.name: arm for arm in read_arms_file(path)}
    assert arms["ema"].pairs == ("train.ema.decay=0.99",)
    assert arms["cutmix"].pairs == ("augment.mixing.cutmix_p=0.5", "augment.mixing.cutmix_alpha=1")
    assert arms["ms"].kind == "infer"
    assert arms["ms"].infer_settings()[1]["scales"] == [0.75, 1.0]
    flag = parse_arm("cutmix=augment.mixing.cutmix_p=0.5,augment.mixing.cutmix_alpha=1", "train")
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, tmp_path / "runs"))
    plan = make_plan(config, [], [arms["cutmix"]], [None])
    assert plan.config(arms["cutmix"], None) == plan.config(flag, None)


def test_unpaired_arm_gets_an_experiment_of_its_own(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, tmp_path / "runs"))
    arm = parse_arm("three=split.n_folds=3", "train")
    plan = make_plan(config, [], [arm], [None], allow_unpaired=True)
    (checked,) = plan.arms
    assert checked.unpaired == ("split.n_folds",)
    assert plan.config(checked, None).experiment == "tiny-three"
    assert plan.config(None, None).experiment == "tiny"


def test_seeds_set_train_seed_of_the_baseline_and_every_arm(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, tmp_path / "runs"))
    arm = parse_arm("lr=optimizer.lr=0.01", "train")
    plan = make_plan(config, ["train.epochs=1"], [arm], [3, 4])
    assert [plan.config(a, s).train.seed for a in (None, arm) for s in (3, 4)] == [3, 4, 3, 4]
    assert plan.config(arm, 4).optimizer.lr == 0.01 and plan.config(arm, 4).train.epochs == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arm", "same=optimizer.lr=0.003"], "arm 'same' changes nothing"),
        (["--arm", "a=optimizer.lr=0.01", "--arm", "a=optimizer.lr=0.02"],
         "two arms are named 'a'"),
        (["--arm", "typo=optimizer.lrr=0.01"], "arm 'typo': "),
        (["--arm", "sched=scheduler.name=cosin"],
         "arm 'sched': scheduler.name: unknown scheduler 'cosin'; did you mean 'cosine'?"),
        (["--arm", "folds=split.n_folds=3"], "arm 'folds' changes split.n_folds"),
        (["--arm", "src=data.sources=[{images: images, masks: other}]"], "arm 'src' changes"),
        (["--arm", "exp=experiment=other"], "arm 'exp' changes experiment"),
        (["--arm", "s=train.seed=3", "--seeds", "0,1"], "arm 's' sets train.seed"),
        (["--infer-arm", "plain=tta=none"], "arm 'plain' changes nothing"),
        (["--infer-arm", "flip=flip=h"], "arm 'flip': 'flip' is not an inference option"),
        (["--infer-arm", "ema=checkpoint=ema"], "arm 'ema': checkpoint=ema, but the baseline"),
        (["--infer-arm", "big=scales=0.5,x"], "arm 'big': --scales"),
        (["--arm", "a=optimizer.lr=0.01", "--arm", "b=optimizer.lr=0.010"],
         "same config as arm 'a'"),
    ],
)  # fmt: skip
def test_bad_arms_exit_2_naming_the_arm(tmp_path, args, message):
    out = tmp_path / "runs"
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path, out))
    result = run_cli("ablate", config, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    if "typo" in message:  # load_config's own did-you-mean, under the arm's name
        assert "optimizer.lrr: unknown key; did you mean 'lr'?" in result.output
    assert not out.exists()  # checked before anything trains


# the statistics -------------------------------------------------------------------------


def _cms(correct: np.ndarray) -> np.ndarray:
    """Two-class per-image matrices with `correct[i]` of 100 class-0 pixels right."""
    return np.stack([[[c, 100 - c], [0, 100]] for c in correct]).astype(np.int64)


def test_one_seed_is_the_compare_interval_and_seeds_add_their_variance():
    rng = np.random.default_rng(0)
    base = rng.integers(30, 80, size=40)
    better = _cms(base + 5)
    (gain, ci) = gain_interval([(_cms(base), better)], n_boot=500)
    assert ci == bootstrap_miou_diff_ci(_cms(base), better, n_boot=500)
    assert 0 < ci[0] < gain < ci[1]
    # two seeds that disagree (+5 and -5 on every image): each seed alone is clear, their
    # mean is 0 and the two-level interval holds 0
    worse = _cms(base - 5)
    gain, (low, high) = gain_interval([(_cms(base), better), (_cms(base), worse)], n_boot=500)
    assert abs(gain) < 0.01 and low < 0 < high
    # two seeds that agree stay clear
    gain, (low, high) = gain_interval([(_cms(base), better), (_cms(base), better)], n_boot=500)
    assert 0 < low < high


# trained ablations ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helps(data, tmp_path_factory):
    """A baseline that learns nothing (lr 1e-20) and an arm with a sane lr."""
    tmp = tmp_path_factory.mktemp("helps")
    out = tmp / "runs"
    frozen = tiny_config(
        data, out, optimizer={"name": "sgd", "lr": 1e-20}, scheduler={"name": "none"}, train=TRAIN
    )
    config = write_config(tmp / "base.yaml", frozen)
    args = ["ablate", config, "--arm", "lr=optimizer.name=adamw,optimizer.lr=0.01"]
    args += ["--arm", "holdout=split.method=holdout", "--allow-unpaired"]
    result = run_cli(*args, "--n-boot", "500")
    assert result.exit_code == 0, result.output
    return out, out / "tiny" / "ablation" / "base", args, result.output


@pytest.mark.slow
def test_an_arm_that_helps_has_an_interval_above_zero(helps):
    out, root, _, output = helps
    rows = read_rows(root / "ablation.csv")
    assert list(rows) == ["baseline", "lr", "holdout"]
    lr = rows["lr"]
    assert lr["verdict"] == "helps" and float(lr["ci_low_points"]) > 0, output
    assert float(lr["gain_points"]) > float(lr["ci_low_points"])
    assert "2 epochs per arm" in output and "helps" in output
    # the table's interval is `segarena compare BASELINE ARM`'s, in points
    record = json.loads((root / "ablation.json").read_text())
    base_run = out / record["arms"]["baseline"]["runs"]["0"]
    arm_run = out / record["arms"]["lr"]["runs"]["0"]
    comparison = compare_runs(base_run, arm_run, n_boot=500)
    assert float(lr["ci_low_points"]) == pytest.approx(100 * comparison.ci[0], abs=1e-5)
    assert float(lr["miou"]) == pytest.approx(comparison.scores_b["miou"], abs=1e-6)
    assert float(rows["baseline"]["miou"]) == pytest.approx(comparison.scores_a["miou"], abs=1e-6)
    # the runs are ordinary run directories of the experiment, on its folds.csv
    assert run_dirs(out) == sorted([base_run, arm_run])
    folds = (out / "tiny" / "folds.csv").read_bytes()
    assert (base_run / "folds.csv").read_bytes() == (arm_run / "folds.csv").read_bytes() == folds
    assert run_cli("runs", out).exit_code == 0


@pytest.mark.slow
def test_csv_parses_back_and_html_is_written(helps):
    _, root, _, _ = helps
    rows = read_rows(root / "ablation.csv")
    base, lr = rows["baseline"], rows["lr"]
    assert base["gain_points"] == base["ci_low_points"] == "" and base["verdict"] == ""
    for row in (base, lr):
        for key in ("miou", "images_per_s", "minutes"):
            assert float(row[key]) > 0
    assert float(lr["ci_low_points"]) <= float(lr["gain_points"]) <= float(lr["ci_high_points"])
    assert lr["change"] == "optimizer.name=adamw, optimizer.lr=0.01"
    # the unpaired arm: its own experiment and folds, a gain but no interval, and why
    holdout = rows["holdout"]
    assert holdout["ci_low_points"] == holdout["ci_high_points"] == ""
    assert holdout["verdict"] == "n/a" and "unpaired: changes split.method" in holdout["note"]
    assert float(holdout["gain_points"]) == pytest.approx(
        100 * (float(holdout["miou"]) - float(base["miou"])), abs=1e-3
    )
    assert len(run_dirs(root.parents[2], "tiny-holdout")) == 1
    page = (root / "ablation.html").read_text()
    assert "<table>" in page and "optimizer.lr=0.01" in page


@pytest.mark.slow
def test_inference_arms_run_no_optimizer_step(helps):
    out, root, args, _ = helps
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    steps = []
    handle = register_optimizer_step_pre_hook(lambda *_: steps.append(1))
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).step()
    assert steps == [1]  # the hook sees every optimizer's steps
    steps.clear()
    try:
        infer_arms = ["--infer-arm", "hflip=tta=hflip,scales=0.75,1.0"]
        infer_arms += ["--infer-arm", "vflip=tta=vflip"]
        result = run_cli(*args, *infer_arms, "--n-boot", "500")
    finally:
        handle.remove()
    assert result.exit_code == 0, result.output
    assert steps == [] and "reusing the finished run" in result.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")} == before
    assert len(run_dirs(out)) == 2
    rows = read_rows(root / "ablation.csv")
    assert list(rows) == ["baseline", "baseline (infer)", "lr", "holdout", "hflip", "vflip"]
    # the inference arms pair with the baseline scored as its config infers (no TTA here)
    reference = rows["baseline (infer)"]
    assert reference["kind"] == "infer" and reference["gain_points"] == ""
    base_run = out / json.loads((root / "ablation.json").read_text())["arms"]["baseline"][
        "runs"]["0"]  # fmt: skip
    assert (root / f"reference_{base_run.name}.npz").is_file()
    as_inferred, _ = score_checkpoints(base_run, "best", {}, device="cpu")
    assert float(reference["miou"]) == pytest.approx(pooled_miou(as_inferred.cms), abs=1e-6)
    for name in ("hflip", "vflip"):  # each gain is over that row, not over training's scores
        gain = float(rows[name]["miou"]) - float(reference["miou"])
        assert float(rows[name]["gain_points"]) == pytest.approx(100 * gain, abs=1e-3)
    for name in ("hflip", "vflip"):
        row = rows[name]
        assert row["kind"] == "infer" and row["minutes"] == "" and "no training" in row["note"]
        low, high = float(row["ci_low_points"]), float(row["ci_high_points"])
        assert low <= float(row["gain_points"]) <= high
        assert row["verdict"] == ("helps" if low > 0 else "hurts" if high < 0 else "can't tell")
    # The baseline learned nothing (lr 1e-20), so flipping its input moves its guesses
    # at random. Measured: hflip with two scales is below 0 throughout (-2.9 to -1.0
    # points): "hurts"; vflip's interval holds 0 (-1.0 to +0.3 points): "can't tell",
    # the verdict a rule that looks at one end of the interval only gets wrong.
    hflip, vflip = rows["hflip"], rows["vflip"]
    assert float(hflip["ci_high_points"]) < 0 and hflip["verdict"] == "hurts"
    assert float(vflip["ci_low_points"]) < 0 < float(vflip["ci_high_points"])
    assert vflip["verdict"] == "can't tell"
    assert (root / "infer_hflip_seed0.npz").is_file()
    # the same arm under another setting is refused: the ablation recorded it
    result = run_cli(*args, "--infer-arm", "hflip=tta=vflip")
    assert result.exit_code == 2 and "arm 'hflip'" in result.output


@pytest.mark.slow
def test_inference_arms_pair_with_the_baseline_as_its_config_infers(data, tmp_path):
    """With infer.tta: hflip in the config, training validates without TTA but the
    baseline's own inference flips: an arm taking TTA out is measured against the flipped
    scores (the reference row), not against training's (where it would read +0.00)."""
    out = tmp_path / "runs"
    flipped = tiny_config(data, out, infer={"tta": "hflip"}, train=TRAIN)
    config = write_config(tmp_path / "flipped.yaml", flipped)
    result = run_cli("ablate", config, "--infer-arm", "plain=tta=none", "--n-boot", "200")
    assert result.exit_code == 0, result.output
    rows = read_rows(out / "tiny" / "ablation" / "flipped" / "ablation.csv")
    assert list(rows) == ["baseline", "baseline (infer)", "plain"]
    base, reference, plain = rows["baseline"], rows["baseline (infer)"], rows["plain"]
    assert float(reference["miou"]) != pytest.approx(float(base["miou"]), abs=1e-4)
    gain = float(plain["miou"]) - float(reference["miou"])
    assert float(plain["gain_points"]) == pytest.approx(100 * gain, abs=1e-3)
    # no TTA through predict's code scores what training's validation scored
    assert float(plain["miou"]) == pytest.approx(float(base["miou"]), abs=1e-4)


@pytest.mark.slow
def test_inference_arm_scores_each_image_as_it_scores_alone(helps):
    """Batched scoring (same-size images in one pass) gives every image the confusion
    matrix it gets through predict's code one image at a time."""
    out, root, _, _ = helps
    run = out / json.loads((root / "ablation.json").read_text())["arms"]["lr"]["runs"]["0"]
    matrices, _ = score_checkpoints(run, "best", {"tta": "hflip"}, device="cpu")
    config = RunDir(run).config()
    samples = {s.id: s for s in RunDir(run).samples_and_folds(config)[0]}
    assert set(matrices.folds) == {0} and len(matrices.ids) == 12  # batches of 8 and 4
    spec = EnsembleSpec((run,), checkpoint="best", overrides={"tta": "hflip"}, device="cpu")
    ensemble = Ensemble.from_spec(spec.with_folds([0]))
    for image_id, cm in zip(matrices.ids, matrices.cms):
        mask = mask_tensor(samples[image_id])
        probs = ensemble.probs(load_image(samples[image_id].image_path), mask.shape)
        alone = confusion_matrix(probs.argmax(0), mask, config.data.num_classes, 255)
        np.testing.assert_array_equal(cm, alone.numpy(), err_msg=image_id)


def kill_at(call: int):
    """An on_epoch_start hook that raises KeyboardInterrupt at its `call`-th call."""
    calls = []

    def hook(epoch, learner):
        calls.append(epoch)
        if len(calls) == call:
            raise KeyboardInterrupt

    return hook


@pytest.mark.slow
def test_a_killed_ablation_resumes_without_retraining(data, tmp_path):
    out = tmp_path / "runs"
    config = write_config(tmp_path / "sane.yaml", tiny_config(data, out, train=TRAIN))
    # train.save_top_k=2 keeps more checkpoints and learns the same: a no-op arm
    plan = make_plan(config, [], [parse_arm("top2=train.save_top_k=2", "train")], [None])
    # killed as the arm's first epoch starts: the baseline is finished, the arm is not
    with pytest.raises(KeyboardInterrupt):
        run_ablation(plan, name="resume", hooks=TrainHooks(on_epoch_start=kill_at(3)))
    record_path = out / "tiny" / "ablation" / "resume" / "ablation.json"
    runs = json.loads(record_path.read_text())["arms"]
    base_run, arm_run = (out / runs[arm]["runs"]["0"] for arm in ("baseline", "top2"))
    baseline_done = (base_run / "summary.json").stat().st_mtime_ns
    assert not (arm_run / "summary.json").exists()
    # killed again inside the arm, after its first epoch was saved
    with pytest.raises(KeyboardInterrupt):
        run_ablation(plan, name="resume", hooks=TrainHooks(on_epoch_start=kill_at(2)))
    assert (arm_run / "fold_0" / "last.ckpt").is_file()
    assert [r["epoch"] for r in history(arm_run)] == [1]
    # the same command again: the baseline is reused, the arm continues in its own run
    result = run_cli("ablate", config, "--arm", "top2=train.save_top_k=2", "--name", "resume")
    assert result.exit_code == 0, result.output
    assert f"baseline: reusing the finished run {base_run}" in result.output
    assert f"top2: resuming {arm_run}" in result.output
    assert (base_run / "summary.json").stat().st_mtime_ns == baseline_done
    assert run_dirs(out) == sorted([base_run, arm_run])
    assert [r["epoch"] for r in history(arm_run)] == [1, 2]
    rows = read_rows(record_path.parent / "ablation.csv")
    # resumed twice, the arm learned exactly what the baseline did: no gain, can't tell
    top2 = rows["top2"]
    assert top2["verdict"] == "can't tell", result.output
    assert float(top2["gain_points"]) == float(top2["ci_low_points"]) == 0.0
    assert float(top2["ci_high_points"]) == 0.0
    # a third time: nothing trains
    again = run_cli("ablate", config, "--arm", "top2=train.save_top_k=2", "--name", "resume")
    assert again.exit_code == 0 and "training (seed" not in again.output
    assert run_dirs(out) == sorted([base_run, arm_run])


@pytest.mark.slow
def test_an_arm_hard_killed_before_its_first_epoch_is_resumed_not_orphaned(data, tmp_path):
    out = tmp_path / "runs"
    config = write_config(tmp_path / "sane.yaml", tiny_config(data, out, train=TRAIN))
    args = ["ablate", config, "--arm", "top2=train.save_top_k=2", "--name", "orphan"]
    # SIGKILL in the arm's fold set-up (the second): its run exists, no epoch has started
    kill_at = Path(__file__).with_name("kill_at.py")
    command = [sys.executable, kill_at, "fold-set-up", "2", *args]
    killed = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    record_path = out / "tiny" / "ablation" / "orphan" / "ablation.json"
    arms = json.loads(record_path.read_text())["arms"]
    base_run = out / arms["baseline"]["runs"]["0"]
    # Run.create recorded the arm's run before its first epoch: the kill cannot orphan it
    (killed_run,) = set(run_dirs(out)) - {base_run}
    assert out / arms["top2"]["runs"]["0"] == killed_run
    assert not list(killed_run.glob("fold_*/last.ckpt"))

    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert f"top2: resuming {killed_run}" in result.output
    assert run_dirs(out) == sorted([base_run, killed_run])  # no new run beside it
    assert [r["epoch"] for r in history(killed_run)] == [1, 2]
    assert (killed_run / "summary.json").is_file()


@pytest.mark.slow
def test_an_arm_the_store_already_holds_reuses_that_run(data, tmp_path):
    """With MLflow records on, an ablation whose baseline is an experiment trained before
    (same config, data and folds) takes that finished run instead of being refused."""
    out = tmp_path / "runs"
    raw = tiny_config(data, out, train=TRAIN)
    raw["records"]["mlflow"] = True
    config = write_config(tmp_path / "c.yaml", raw)
    trained = run_cli("train", config, "--fold", 0)
    assert trained.exit_code == 0, trained.output
    (first,) = run_dirs(out)
    again = run_cli("train", config, "--fold", 0)
    assert again.exit_code == 2 and "already run" in again.output  # a plain repeat is refused
    result = run_cli("ablate", config, "--arm", "top2=train.save_top_k=2", "--name", "dup")
    assert result.exit_code == 0, result.output
    assert f"baseline: reusing {first}, a finished run of the same experiment" in result.output
    assert len(run_dirs(out)) == 2  # the first run and the arm's


def test_an_older_ablation_json_reads_and_a_broken_one_names_the_file(tmp_path):
    root = tmp_path / "runs" / "tiny" / "ablation" / "old"
    root.mkdir(parents=True)
    older = {  # as segarena wrote it before runs were recorded at creation ("started")
        "name": "old",
        "arms": {"baseline": {"kind": "train", "change": [], "runs": {"0": "tiny/r1"},
                              "started": {}}},  # fmt: skip
        "config": "c.yaml", "set": [], "folds": [0],
    }  # fmt: skip
    (root / "ablation.json").write_text(json.dumps(older))
    ablation = Ablation(tmp_path / "runs", "tiny", "old")
    assert ablation.run_of("baseline", "0") == tmp_path / "runs" / "tiny" / "r1"
    assert ablation.record.precision is None  # chosen on the next run, then recorded
    ablation.set_run("baseline", "1", tmp_path / "runs" / "tiny" / "r2")
    written = json.loads((root / "ablation.json").read_text())
    assert written["arms"]["baseline"]["runs"] == {"0": "tiny/r1", "1": "tiny/r2"}

    older["arms"]["baseline"]["change"] = "lr"  # a string where a list belongs
    (root / "ablation.json").write_text(json.dumps(older))
    with pytest.raises(UserError, match=r"ablation\.json: arms\.baseline\.change: "):
        Ablation(tmp_path / "runs", "tiny", "old")
