"""train.precision: auto: the rule, the real CPU probe, and the choice written into the run."""

from __future__ import annotations

import json

import pytest
from synthetic import make_mask_folder, tiny_config

from segarena.config import config_from_dict
from segarena.train import precision as precision_module
from segarena.train.precision import choose_precision, probe_cpu, resolve_precision
from segarena.train.run import Run, resume


def auto_config(tmp_path, **train):
    raw = tiny_config(tmp_path / "data", tmp_path / "runs", train={"precision": "auto", **train})
    raw["data"]["image_size"] = [32, 32]
    return config_from_dict(raw)


def stub_probe(monkeypatch, fp32: float, bf16: float) -> list:
    calls = []

    def probe(config, batch=1):
        calls.append(config.train.precision)
        return {"32-true": fp32, "bf16-mixed": bf16}

    monkeypatch.setattr(precision_module, "probe_cpu", probe)
    monkeypatch.setattr(precision_module.torch.cuda, "is_available", lambda: False)
    return calls


@pytest.mark.parametrize(
    "fp32, bf16, chosen",
    [(5.0, 12.0, "bf16-mixed"), (5.0, 5.5, "32-true"), (5.5, 0.23, "32-true")],
)
def test_on_a_cpu_bf16_is_chosen_only_when_clearly_faster(tmp_path, monkeypatch, fp32, bf16,
                                                          chosen):  # fmt: skip
    stub_probe(monkeypatch, fp32, bf16)
    got, record = choose_precision(auto_config(tmp_path))
    assert got == chosen and record["images_per_s"] == {"32-true": fp32, "bf16-mixed": bf16}


def test_several_processes_and_gpus_choose_without_a_probe(tmp_path, monkeypatch):
    calls = stub_probe(monkeypatch, 1.0, 10.0)
    assert choose_precision(auto_config(tmp_path, devices=2))[0] == "32-true"
    monkeypatch.setattr(precision_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision_module.torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_precision(auto_config(tmp_path))[0] == "16-mixed"
    assert calls == []  # neither rule timed anything


def test_a_named_precision_is_kept_as_it_is(tmp_path, monkeypatch):
    calls = stub_probe(monkeypatch, 1.0, 10.0)
    raw = tiny_config(tmp_path, tmp_path / "runs", train={"precision": "32-true"})
    config, record = resolve_precision(config_from_dict(raw))
    assert config.train.precision == "32-true" and record is None and calls == []


def test_the_real_probe_times_both_precisions(tmp_path):
    speeds = probe_cpu(auto_config(tmp_path))
    assert set(speeds) == {"32-true", "bf16-mixed"} and min(speeds.values()) > 0


@pytest.mark.slow
def test_the_choice_is_written_into_the_run_and_a_resume_does_not_probe_again(
    tmp_path, monkeypatch
):
    make_mask_folder(tmp_path / "data", n=8)
    calls = stub_probe(monkeypatch, 5.0, 12.0)
    run = Run.create(auto_config(tmp_path, epochs=1), tmp_path / "runs")
    assert calls == ["auto"]
    assert run.config.train.precision == "bf16-mixed"  # config.yaml holds the choice
    run.fit()
    env = json.loads((run.path / "env.json").read_text())
    assert env["precision_probe"]["chosen"] == "bf16-mixed"
    assert env["precision_probe"]["images_per_s"]["bf16-mixed"] == 12.0
    (run.path / "summary.json").unlink()  # as if killed before the summary
    resume(run.path)
    assert calls == ["auto"]  # the resumed run read its choice from config.yaml
