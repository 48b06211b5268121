"""EMA, SWA and top-k checkpoints: the averages are the right ones, and survive a resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import history, miou_of
from synthetic import frozen_config, make_mask_folder, tiny_config

import segarena.train.averaging as averaging
from segarena.config import config_from_dict
from segarena.errors import UserError
from segarena.infer.ensemble import EnsembleSpec, load_members
from segarena.model.build import unwrap
from segarena.run_dir.checkpoints import CHECKPOINT_KINDS, fold_checkpoints, load_checkpoint
from segarena.train.debug import debug_config
from segarena.train.fold import TrainHooks
from segarena.train.run import fit, resume

pytestmark = pytest.mark.usefixtures("one_thread")

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def assert_close(actual: dict, expected: dict, keys=None) -> None:
    for key in keys or expected:
        if expected[key].is_floating_point():
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(actual[key], expected[key]), key


def holdout_config(tmp_path, **train):
    data = make_mask_folder(tmp_path / "data", n=8)  # 6 train / 2 val images
    raw = tiny_config(data, tmp_path / "runs", split={"method": "holdout"}, train=train)
    return config_from_dict(raw)


@pytest.mark.slow  # trains
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_the_moving_average_of_every_update(tmp_path, warmup):
    decay = 0.7  # low enough that every update moves the average visibly
    ema_cfg = {"decay": decay, "warmup": warmup}
    config = holdout_config(tmp_path, epochs=2, batch_size=2, ema=ema_cfg)
    weights: list[dict] = []  # the initial weights, then the weights after each update
    epoch_ends: list[int] = []  # updates done when each epoch ended

    def at_start(epoch, learner):
        if not weights:
            weights.append(snapshot(learner.model))

    hooks = TrainHooks(
        on_epoch_start=at_start,
        on_update=lambda learner: weights.append(snapshot(learner.model)),
        on_epoch_end=lambda record, learner: epoch_ends.append(len(weights) - 1),
    )
    run_dir = fit(config, tmp_path / "runs", hooks=hooks).path

    assert epoch_ends == [3, 6]  # 6 images, batches of 2
    ema = {k: v.clone() for k, v in weights[0].items()}
    by_epoch = []
    for step, w in enumerate(weights[1:], start=1):
        # timm's warmup: update k (from 0) decays by min(decay, 1 - (1 + k) ** -2/3)
        d = min(decay, 1 - step ** (-2 / 3)) if warmup else decay
        for k, v in w.items():
            ema[k] = d * ema[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        if step in epoch_ends:
            by_epoch.append({k: v.clone() for k, v in ema.items()})

    fold_dir = run_dir / "fold_0"
    final = load_checkpoint(fold_dir / "ema.ckpt")
    assert_close(final["model"], by_epoch[-1])
    last = load_checkpoint(fold_dir / "last.ckpt")
    assert_close(last["ema"], by_epoch[-1])
    assert_close(last["model"], weights[-1])  # the raw weights still train and resume
    assert any(not torch.allclose(last["model"][k], final["model"][k]) for k in final["model"])
    # validation scored the EMA: best.ckpt holds the EMA of its epoch, and rescoring it
    # reproduces the logged val mIoU
    best = load_checkpoint(fold_dir / "best.ckpt")
    assert_close(best["model"], by_epoch[best["epoch"] - 1])
    records = history(run_dir)
    assert best["miou"] == max(r["val_miou"] for r in records)
    assert final["miou"] == records[-1]["val_miou"] and final["epoch"] == 2
    result = json.loads((fold_dir / "result.json").read_text())
    assert result["miou"] == pytest.approx(best["miou"])


@pytest.mark.slow  # trains
def test_swa_averages_epoch_ends_and_recomputes_bn(tmp_path):
    swa = {"start_epoch": 2, "lr": 5e-4, "anneal_epochs": 1}
    config = holdout_config(tmp_path, epochs=4, batch_size=2, swa=swa)
    epoch_end_weights: list[dict] = []
    hooks = TrainHooks(
        on_epoch_end=lambda record, learner: epoch_end_weights.append(snapshot(learner.model))
    )
    run_dir = fit(config, tmp_path / "runs", hooks=hooks).path

    fold_dir = run_dir / "fold_0"
    averaged = load_checkpoint(fold_dir / "swa.ckpt")
    swa_model = averaged["model"]
    from_start = epoch_end_weights[1:]  # epochs 2, 3, 4
    params = [k for k in swa_model if not k.endswith(BN_STATS)]
    mean = {k: torch.stack([w[k] for w in from_start]).mean(0) for k in params}
    assert_close(swa_model, mean, params)

    # BN statistics come from one pass of the averaged weights over the training images
    # (3 batches; the model's own count 12), not from averaging the models' statistics.
    # encoder_depth 3 leaves the deeper BN layers unused.
    def batches(weights, key):
        return weights[key.replace("running_mean", "num_batches_tracked")]

    bn_means = [k for k in swa_model if k.endswith("running_mean") and batches(from_start[-1], k)]
    assert bn_means
    assert all(batches(swa_model, k) == 3 and batches(from_start[-1], k) == 12 for k in bn_means)
    plain = {k: torch.stack([w[k] for w in from_start]).mean(0) for k in bn_means}
    assert all(not torch.allclose(swa_model[k], plain[k]) for k in bn_means)

    # the base schedule holds during epoch 2, then SWALR reaches swa.lr after one epoch
    lrs = [r["lr"] for r in history(run_dir)]
    assert lrs[1] == lrs[0] and lrs[2:] == pytest.approx([5e-4, 5e-4])
    result = json.loads((fold_dir / "result.json").read_text())
    assert result["swa_miou"] == averaged["miou"]
    # ... and it is the mIoU of the confusion matrix of swa.ckpt's validation pass
    assert result["swa_miou"] == pytest.approx(miou_of(result["swa_confusion"])[0], abs=1e-12)
    assert averaged["epoch"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["swa_miou"] == pytest.approx(result["swa_miou"])
    assert summary["folds"][0]["swa_miou"] == result["swa_miou"]
    (member,) = load_members(EnsembleSpec((run_dir,), "swa"))
    assert member.name == str(fold_dir / "swa.ckpt")


@pytest.mark.slow  # trains
def test_killed_run_resumes_to_the_same_averages(tmp_path, monkeypatch):
    config = holdout_config(
        tmp_path,
        epochs=4,
        batch_size=2,
        ema={"decay": 0.8},
        save_top_k=2,
        swa={"start_epoch": 2, "lr": 5e-4, "anneal_epochs": 2, "anneal_strategy": "linear"},
    )
    straight = fit(config, tmp_path / "runs").path

    # Killed in epoch 3 after validation (top/ may already hold it) but before last.ckpt,
    # with SWALR half-way through its annealing.
    def killed_saving_epoch_three(record, learner):
        if record.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "runs2", hooks=TrainHooks(on_epoch_end=killed_saving_epoch_three))
    killed = next(p for p in (tmp_path / "runs2" / "tiny").iterdir() if p.is_dir())
    assert load_checkpoint(killed / "fold_0" / "last.ckpt")["state"]["epoch"] == 2

    # Killed again while recomputing the SWA batch-norm statistics.
    real_update_bn = averaging.update_bn

    def killed_in_bn_update(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(averaging, "update_bn", killed_in_bn_update)
    with pytest.raises(KeyboardInterrupt):
        resume(killed)
    monkeypatch.setattr(averaging, "update_bn", real_update_bn)
    assert not (killed / "fold_0" / "swa.ckpt").exists()

    resume(killed)
    assert [(r["epoch"], r["lr"], r["val_miou"]) for r in history(killed)] == [
        (r["epoch"], r["lr"], r["val_miou"]) for r in history(straight)
    ]
    a, b = straight / "fold_0", killed / "fold_0"
    names = ["swa.ckpt", "ema.ckpt", "best.ckpt"]
    names += [f"top/{p.name}" for p in sorted((a / "top").iterdir())]
    assert sorted(p.name for p in (b / "top").iterdir()) == sorted(
        p.name for p in (a / "top").iterdir()
    )
    for name in names:
        x, y = load_checkpoint(a / name), load_checkpoint(b / name)
        assert x["epoch"] == y["epoch"] and x["miou"] == y["miou"], name
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"]), name
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((killed / "summary.json").read_text())
    assert sa["swa_miou"] == sb["swa_miou"] and sa["miou"] == sb["miou"]


@pytest.mark.slow  # trains
def test_top_k_keeps_the_k_best_epochs_as_an_epoch_ensemble(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=8)
    raw = tiny_config(data, tmp_path / "runs", train={"epochs": 4, "save_top_k": 2})
    run_dir = fit(config_from_dict(raw), tmp_path / "runs", folds="all").path

    for fold in (0, 1):
        records = history(run_dir, fold)
        ranked = sorted(records, key=lambda r: (-r["val_miou"], r["epoch"]))[:2]
        files = sorted((run_dir / f"fold_{fold}" / "top").iterdir())
        assert sorted(p.name for p in files) == sorted(f"epoch_{r['epoch']}.ckpt" for r in ranked)
        for r in ranked:
            ckpt = load_checkpoint(run_dir / f"fold_{fold}" / "top" / f"epoch_{r['epoch']}.ckpt")
            assert ckpt["epoch"] == r["epoch"] and ckpt["miou"] == r["val_miou"]
        state = load_checkpoint(run_dir / f"fold_{fold}" / "last.ckpt")["state"]
        assert state["top"] == [[r["epoch"], r["val_miou"]] for r in ranked]

    found = fold_checkpoints(run_dir, "top")
    assert [fold for fold, _ in found] == [0, 0, 1, 1]
    members = load_members(EnsembleSpec((run_dir,), "top"))
    assert [m.name for m in members] == [str(path) for _, path in found]
    assert [m.weight for m in members] == pytest.approx([0.25] * 4)
    assert (
        len(load_members(EnsembleSpec((run_dir,), "last"))) == 2
    )  # last.ckpt loads as a model too

    with pytest.raises(UserError, match=r"fold_\*/swa\.ckpt.*train with train\.swa set"):
        fold_checkpoints(run_dir, "swa")
    with pytest.raises(UserError, match=r"train with train\.ema set"):
        load_members(EnsembleSpec((run_dir,), "ema"))
    with pytest.raises(UserError, match="expected one of " + ", ".join(CHECKPOINT_KINDS)):
        fold_checkpoints(run_dir, "newest")


@pytest.mark.slow  # trains
def test_save_top_k_one_writes_no_top_folder(tmp_path):
    config = holdout_config(tmp_path, epochs=2)
    run_dir = fit(config, tmp_path / "runs").path
    assert not (run_dir / "fold_0" / "top").exists()
    with pytest.raises(UserError, match=r"train\.save_top_k >= 2"):
        fold_checkpoints(run_dir, "top")


@pytest.mark.slow  # trains
def test_early_stop_before_swa_starts_leaves_no_swa_checkpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="segarena")  # the library logs; the CLI shows it
    data = make_mask_folder(tmp_path / "data", n=8)
    # frozen weights: val mIoU stops improving after epoch 1
    swa = {"start_epoch": 5}
    raw = frozen_config(data, tmp_path / "runs", epochs=10, early_stopping=2, swa=swa)
    run_dir = fit(config_from_dict(raw), tmp_path / "runs").path
    assert len(history(run_dir)) == 3
    assert "stopped at epoch 3, before swa.start_epoch=5; no swa.ckpt" in caplog.text
    assert not (run_dir / "fold_0" / "swa.ckpt").exists()
    assert "swa_miou" not in json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize(
    "train_section, message",
    [
        (
            {"epochs": 4, "swa": {"start_epoch": 5}},
            r"train\.swa\.start_epoch=5 .*1\.\.train\.epochs=4",
        ),
        ({"swa": {"start_epoch": 0}}, r"train\.swa\.start_epoch: .*greater than or equal to 1"),
        ({"swa": {"lr": 0.01}}, r"train\.swa\.start_epoch: Field required"),
        ({"swa": {"start_epoch": 1, "lr": 0}}, r"train\.swa\.lr: .*greater than 0"),
        ({"swa": {"start_epoch": 1, "anneal_epochs": -1}}, r"train\.swa\.anneal_epochs"),
        ({"swa": {"start_epoch": 1, "anneal_strategy": "exp"}}, r"train\.swa\.anneal_strategy"),
        ({"swa": {"start_epoch": 1, "anneal_epoch": 2}}, r"did you mean 'anneal_epochs'"),
        ({"ema": {"decay": 1.0}}, r"train\.ema\.decay: .*less than 1 \(found 1\.0\)"),
        ({"ema": {"decay": -0.1}}, r"train\.ema\.decay"),
        ({"save_top_k": 0}, r"train\.save_top_k: .*greater than or equal to 1"),
    ],
)
def test_bad_averaging_settings_name_the_key(tmp_path, train_section, message):
    with pytest.raises(UserError, match=message):
        config_from_dict(tiny_config(tmp_path, tmp_path / "runs", train=train_section))


def test_debug_keeps_swa_inside_its_two_epochs(tmp_path):
    raw = tiny_config(tmp_path, tmp_path / "runs", train={"epochs": 30, "swa": {"start_epoch": 20}})
    config = debug_config(config_from_dict(raw))
    assert config.train.epochs == 2 and config.train.swa.start_epoch == 2
