"""Models: every SMP arch builds and runs, names are checked, local weights load safely."""

from __future__ import annotations

import re

import pytest
import segmentation_models_pytorch as smp
import torch
from safetensors.torch import save_file

from segarena.config import ModelConfig
from segarena.errors import UserError
from segarena.model.build import build_model, forward_logits, model_divisor
from segarena.model.weights import load_encoder_weights

CLASSES = 3

# Per-arch settings that differ from the resnet18 default at 64x64 (why in each comment).
ARCH_CASES = {
    # PAN's feature pyramid attention halves stride-16 features three times: needs >= 128 px
    "PAN": {"size": 128},
    # DPT takes only timm ViT encoders; img_size makes the position embedding fit 64 px
    "DPT": {"encoder": "tu-vit_tiny_patch16_224", "kwargs": {"img_size": 64}},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _r18(arch: str = "Unet", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, encoder="resnet18", kwargs=kwargs), CLASSES).eval()


@pytest.mark.parametrize("arch", [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()])
def test_every_smp_arch_builds_and_keeps_input_size(arch):
    case = ARCH_CASES.get(arch, {})
    size = case.get("size", 64)
    cfg = ModelConfig(
        arch=arch, encoder=case.get("encoder", "resnet18"), kwargs=case.get("kwargs", {})
    )
    # eval: PSPNet/UPerNet pool to 1x1, where train-mode BatchNorm needs batch > 1
    model = build_model(cfg, CLASSES).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, CLASSES, size, size)


def test_default_config_is_unet_efficientnet_b0():
    model = build_model(ModelConfig(), num_classes=5, in_channels=4).eval()
    assert type(model).__name__ == "Unet"
    assert model.encoder._blocks is not None  # SMP's efficientnet encoder
    with torch.no_grad():
        assert model(torch.randn(1, 4, 64, 64)).shape == (1, 5, 64, 64)


def test_arch_names_are_case_insensitive():
    assert type(build_model(ModelConfig(arch="unetplusplus", encoder="resnet18"), 2)) is (
        smp.UnetPlusPlus
    )


def test_unet_with_hrnet_encoder():
    model = build_model(ModelConfig(arch="Unet", encoder="tu-hrnet_w18"), CLASSES).eval()
    assert model_divisor(model) == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, CLASSES, 64, 64)


def test_hrnet_cannot_dilate_for_deeplabv3plus():
    with pytest.raises(UserError, match="DeepLabV3Plus.*tu-hrnet_w18.*output stride 32"):
        build_model(ModelConfig(arch="DeepLabV3Plus", encoder="tu-hrnet_w18"), CLASSES)


@pytest.mark.parametrize(
    ("encoder", "weights", "passed"),
    [
        ("resnet18", "imagenet", "imagenet"),
        ("resnet18", "ssl", "ssl"),
        ("tu-resnet18", "imagenet", True),
    ],
)
def test_named_weights_go_to_smp(monkeypatch, encoder, weights, passed):
    """Named weight sets reach SMP (which downloads them); nothing is downloaded here."""
    seen = {}

    def create_model(arch, **kwargs):
        seen.update(kwargs)
        return torch.nn.Identity()

    monkeypatch.setattr(smp, "create_model", create_model)
    build_model(ModelConfig(encoder=encoder, encoder_weights=weights), CLASSES)
    assert seen["encoder_weights"] == passed


def test_unknown_weight_name_for_timm_encoder_explains_tags():
    with pytest.raises(
        UserError, match="'ssl'.*no such file.*known: imagenet.*tu-resnet50.a1_in1k"
    ):
        build_model(ModelConfig(encoder="tu-resnet18", encoder_weights="ssl"), CLASSES)


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("arch", "Unett", "'Unet'"),
        ("arch", "deeplabv3+", "'DeepLabV3Plus'"),
        ("encoder", "resnet-18", "'resnet18'"),
        ("encoder", "efficientnet_b0", "'efficientnet-b0'"),
        ("encoder", "tu-hrnet_w81", "'tu-hrnet_w18'"),
    ],
)
def test_unknown_names_suggest_close_matches(field, value, hint):
    with pytest.raises(UserError, match=re.escape(f"model.{field}={value!r}")) as info:
        build_model(ModelConfig(**{field: value}), CLASSES)
    suggestions = str(info.value).split("did you mean ")[1].split("?")[0]
    assert hint in suggestions


def test_bad_kwargs_are_user_errors():
    # SMP would silently drop this typo for its own encoders
    with pytest.raises(UserError, match="decoder_chanels.*did you mean 'decoder_channels'"):
        build_model(ModelConfig(encoder="resnet18", kwargs={"decoder_chanels": [8]}), CLASSES)
    with pytest.raises(UserError, match="kwargs.classes: set it with data.classes"):
        build_model(ModelConfig(encoder="resnet18", kwargs={"classes": 4}), CLASSES)
    # extras reach timm for tu- encoders, and timm's refusal becomes a UserError
    with pytest.raises(UserError, match="tu-resnet18.*no_such_option"):
        build_model(ModelConfig(encoder="tu-resnet18", kwargs={"no_such_option": 1}), CLASSES)


def _assert_encoder_equals(model, state):
    loaded = model.encoder.state_dict()
    assert set(state) == set(loaded)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.fixture(scope="module")
def source():
    """A resnet18 Unet whose encoder tensors differ from a fresh seed-0 model's."""
    torch.manual_seed(123)
    model = build_model(ModelConfig(encoder="resnet18"), CLASSES)
    with torch.no_grad():
        for buffer in model.encoder.buffers():
            buffer.add_(1)  # running stats too, not only learned weights
    return model


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "full_model", "lightning"])
def test_local_weights_load_into_encoder(tmp_path, source, fmt):
    encoder_state = {k: v.clone() for k, v in source.encoder.state_dict().items()}
    path = tmp_path / f"weights.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file(encoder_state, str(path))
    elif fmt == "pth":
        torch.save(encoder_state, path)
    elif fmt == "full_model":
        torch.save(source.state_dict(), path)
    else:  # a Lightning checkpoint of a module that holds the model as `self.model`
        torch.save(
            {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}},
            path,
        )
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), CLASSES)
    _assert_encoder_equals(model, encoder_state)
    # the decoder is not touched: it keeps its own random init
    assert not torch.equal(model.segmentation_head[0].weight, source.segmentation_head[0].weight)
    assert load_encoder_weights(model, path) == len(encoder_state)


def test_timm_checkpoint_loads_into_tu_encoder(tmp_path):
    torch.manual_seed(1)
    source = build_model(ModelConfig(encoder="tu-resnet18"), CLASSES)
    # a timm-style checkpoint: {"model": state dict without SMP's `model.` wrapper}
    timm_state = {k.removeprefix("model."): v for k, v in source.encoder.state_dict().items()}
    path = tmp_path / "timm.pth"
    torch.save({"model": timm_state}, path)
    torch.manual_seed(2)
    model = build_model(ModelConfig(encoder="tu-resnet18", encoder_weights=str(path)), CLASSES)
    _assert_encoder_equals(model, source.encoder.state_dict())


class Payload:
    """Not a tensor: weights_only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(UserError, match="evil.pth.*refused"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), CLASSES)


def test_weights_of_another_model_are_refused(tmp_path, source):
    path = tmp_path / "other.safetensors"
    save_file({"head.fc.weight": torch.zeros(4, 4), "blocks.0.w": torch.zeros(2)}, str(path))
    with pytest.raises(UserError, match=r"other.safetensors: only 0 of .*head.fc.weight"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), CLASSES)
    # right names, wrong shapes: an RGB encoder loaded into a 1-channel model
    path = tmp_path / "rgb.pth"
    torch.save(source.encoder.state_dict(), path)
    cfg = ModelConfig(encoder="resnet18", encoder_weights=str(path))
    with pytest.raises(UserError, match=r"rgb.pth: 1 encoder tensors have the wrong shape.*conv1"):
        build_model(cfg, CLASSES, in_channels=1)


def test_missing_weights_file_or_unknown_weight_name(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(UserError, match="nope.safetensors.*no such file.*imagenet"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=missing), CLASSES)
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(UserError, match="weights.txt.*found suffix '.txt'"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(text)), CLASSES)


def test_model_divisor_follows_encoder_stride_through_wrappers():
    assert model_divisor(_r18("Unet")) == 32
    assert model_divisor(_r18("DeepLabV3Plus")) == 16
    assert model_divisor(torch.compile(_r18("FPN"))) == 32  # compile is lazy: nothing runs


def test_predict_logits_pads_crops_and_resizes():
    model = _r18("FPN")  # FPN itself refuses sizes not divisible by 32
    x = torch.randn(2, 3, 70, 90)
    with pytest.raises(RuntimeError, match="divisible by 32"):
        model(x)
    with torch.no_grad():
        assert forward_logits(model, x).shape == (2, CLASSES, 70, 90)
        assert forward_logits(model, x, out_size=(140, 180)).shape == (2, CLASSES, 140, 180)
        # a pad larger than the image cannot reflect: zeros instead
        assert forward_logits(model, torch.randn(1, 3, 10, 20)).shape == (1, CLASSES, 10, 20)


def test_predict_logits_is_the_model_on_divisible_input():
    model = _r18("Unet")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(forward_logits(model, x), model(x))
        assert torch.equal(forward_logits(model, x, out_size=(64, 96)), model(x))


def test_bn_momentum_reaches_every_batchnorm():

    default = build_model(ModelConfig(encoder="efficientnet-b0"), 3)
    momenta = {m.momentum for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert any(abs(m - 0.01) < 1e-9 for m in momenta)  # SMP's efficientnet: TF's 0.99
    tuned = build_model(ModelConfig(encoder="efficientnet-b0", bn_momentum=0.1), 3)
    momenta = {m.momentum for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}
