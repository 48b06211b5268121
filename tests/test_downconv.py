"""model.downconv: space-to-depth stem and sub-pixel head around an SMP model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import miou_of
from synthetic import make_mask_folder, tiny_config

from segarena.config import ModelConfig, config_from_dict
from segarena.data.readers import load_image, load_mask, read_samples
from segarena.errors import UserError
from segarena.model.build import build_model, forward_logits, model_divisor
from segarena.model.downconv import DownconvNet
from segarena.run_dir.checkpoints import load_checkpoint, save_atomic
from segarena.train.run import fit

CLASSES = 3
TINY = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}


pytestmark = pytest.mark.usefixtures("one_thread")


def r18(downconv: int, arch: str = "Unet", seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = TINY if arch == "Unet" else {}
    config = ModelConfig(arch=arch, encoder="resnet18", kwargs=kwargs, downconv=downconv, **cfg)
    return build_model(config, CLASSES)


def test_logits_have_the_input_size():
    model = r18(2).eval()
    assert isinstance(model, DownconvNet)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, CLASSES, 64, 64)
        # forward_logits pads 50x70 to the doubled divisor and crops back
        assert forward_logits(model, torch.randn(1, 3, 50, 70)).shape == (1, CLASSES, 50, 70)


def test_model_divisor_doubles_for_k2():
    assert model_divisor(r18(1)) == 8 and model_divisor(r18(2)) == 16  # encoder_depth 3
    assert model_divisor(r18(2, "DeepLabV3Plus")) == 32  # output stride 16, times 2
    assert model_divisor(torch.compile(r18(2, "FPN"))) == 64


def test_folded_channels_hold_colour_i_mod_3():
    """The order pretrained RGB stems are repeated in by SMP and timm."""
    seen = []
    net = torch.nn.Conv2d(12, 4 * CLASSES, 1)
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image = torch.rand(1, 3, 8, 8)
    DownconvNet(net, 2)(image)
    folded = seen[0]
    for channel in range(12):
        colour, sub_pixel = channel % 3, channel // 3
        expected = image[0, colour, sub_pixel // 2 :: 2, sub_pixel % 2 :: 2]
        assert torch.equal(folded[0, channel], expected), channel


def test_downconv_model_trains():
    model = r18(2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.rand(4, 3, 64, 64)
    target = (images[:, 0] > 0.5).long()  # learnable from the pixel itself: a sharp mask
    stem = model.net.encoder.conv1.weight.detach().clone()
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(model.net.encoder.conv1.weight, stem)


def test_checkpoint_round_trip_keeps_keys_and_outputs(tmp_path):
    model = r18(2).eval()
    assert all(key.startswith("net.") for key in model.state_dict())
    assert not any(key.startswith("net.") for key in r18(1).state_dict())  # k=1: no wrapper
    save_atomic({"model": model.state_dict()}, tmp_path / "best.ckpt")
    fresh = r18(2, seed=1).eval()
    fresh.load_state_dict(load_checkpoint(tmp_path / "best.ckpt")["model"])  # strict
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


def test_rgb_encoder_weights_load_into_the_folded_stem(tmp_path):
    """A k=2 model on a 2x-upsampled image starts out where the RGB model is on the original."""
    source = r18(1, seed=5).eval()
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pth")
    model = r18(2, encoder_weights=str(tmp_path / "encoder.pth")).eval()
    small = torch.rand(1, 3, 32, 32)
    big = F.interpolate(small, scale_factor=2, mode="nearest")  # constant 2x2 blocks
    seen = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        model(big)
        ours, theirs = model.net.encoder(seen[0]), source.encoder(small)
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_downconv_must_be_positive():
    with pytest.raises(UserError, match=r"model.downconv: Input should be greater than or equal"):
        config_from_dict({"data": {"sources": [{"images": "i", "masks": "m"}],
                                   "classes": ["a", "b"]}, "model": {"downconv": 0}})  # fmt: skip


@pytest.mark.slow  # trains
def test_fit_trains_downconv_on_tiles_with_class_balanced_sampling(tmp_path):
    """The whole path: tiles padded to the doubled divisor (FPN checks it), weighted draws,
    validation on whole images, best.ckpt loading into a freshly built model."""
    data = make_mask_folder(tmp_path / "data", n=8, size=96)
    raw = tiny_config(
        data,
        tmp_path / "runs",
        data={"tiles": {"size": 80, "margin": 8, "mode": "random", "background_keep_p": 0.0}},
        model={"arch": "FPN", "encoder": "resnet18", "kwargs": {}, "downconv": 2},
        train={"epochs": 1, "batch_size": 4, "seed": 0, "sampler": {"name": "class_balanced"}},
    )
    config = config_from_dict(raw)
    run_dir = fit(config, tmp_path / "runs").path
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0]
    model = build_model(config.model, config.data.num_classes)
    model.load_state_dict(load_checkpoint(run_dir / "fold_0" / "best.ckpt")["model"])
    # the run's score is best.ckpt's on fold 0's whole 96x96 validation images (not on
    # tiles), worked out again from the checkpoint alone
    with open(run_dir / "folds.csv", newline="") as f:
        val_ids = {row["id"] for row in csv.DictReader(f) if row["fold"] == "0"}
    val = [s for s in read_samples(config.data, config.split) if s.id in val_ids]
    pixels = torch.stack([torch.from_numpy(load_image(s.image_path)).permute(2, 0, 1) for s in val])
    mean = torch.tensor(config.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = forward_logits(model.eval(), (pixels.float() / 255.0 - mean) / std)
    assert logits.shape == (len(val), 4, 96, 96)  # padded to the divisor 64, cropped back
    pred = logits.softmax(1).argmax(1).numpy().ravel()
    target = np.stack([load_mask(s) for s in val]).astype(np.int64).ravel()
    matrix = np.bincount(target * 4 + pred, minlength=16).reshape(4, 4)
    assert summary["miou"] == pytest.approx(miou_of(matrix)[0], abs=1e-9)
