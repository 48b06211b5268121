"""Every bad input and fault ends cleanly: the list of what segarena checks (issue 13).

`CASES` is one table: each row builds one bad input, runs `segarena ...` in-process and
expects its exit code and a fragment of its one message, no traceback, and nothing new
on disk (no run directory, no partial or temporary file). The faults that happen after a
run directory exists (a full disk mid-run, two trainings at once, a truncated image read
by a worker) have their own tests below the table.
"""

from __future__ import annotations

import csv
import errno
import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import only_run_dir, run_cli, write_config
from PIL import Image
from synthetic import make_coco, make_mask_folder, tiny_config

from segarena.data.jpeg import truncated_jpeg as truncated_jpeg_file
from segarena.data.readers import load_image
from segarena.errors import UserError, worker_free
from segarena.model import hub
from segarena.submission.check import validate_submission
from segarena.submission.codecs import read_submission
from segarena.submission.writer import SubmissionWriter
from segarena.util.files import atomic_output

pytestmark = pytest.mark.slow  # a module fixture trains a run; some rows train or predict


@dataclass
class Ctx:
    """What a row's setup may use: its own folder, a trained run to copy, monkeypatch."""

    tmp: Path
    trained: Path
    monkeypatch: pytest.MonkeyPatch

    def data(self, kind: str = "mask_folder") -> Path:
        make = make_mask_folder if kind == "mask_folder" else make_coco
        return make(self.tmp / "data", n=4, size=32)

    def config(self, kind: str = "mask_folder", **sections) -> dict:
        raw = tiny_config(self.data(kind), self.tmp / "runs", kind, **sections)
        raw["split"] = {"method": "holdout", "val_ratio": 0.25}
        return raw

    def train(self, edit: Callable[[dict], object] | None = None, *args, kind="mask_folder"):
        """`train CONFIG ARGS...` on a tiny config changed in place by `edit`."""
        raw = self.config(kind)
        if edit is not None:
            edit(raw)
        return ["train", write_config(self.tmp / "c.yaml", raw), *args]

    def run(self) -> Path:
        """A copy of the trained run under tmp/runs/tiny/ (safe to break)."""
        copy = self.tmp / "runs" / "tiny" / self.trained.name
        shutil.copytree(self.trained, copy)
        return copy

    def predict(self, out: str | Path, *args) -> list:
        images = self.tmp / "test"
        images.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
        return ["predict", self.run(), "--images", images, "--out", out, *args]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny finished run (one holdout fold, one epoch), copied by the rows that need it."""
    root = tmp_path_factory.mktemp("trained")
    raw = tiny_config(make_mask_folder(root / "data", n=4, size=32), root / "runs")
    raw["split"] = {"method": "holdout", "val_ratio": 0.25}
    raw["train"] = {**raw["train"], "epochs": 1, "batch_size": 2}
    result = run_cli("train", write_config(root / "c.yaml", raw))
    assert result.exit_code == 0, result.output
    return only_run_dir(root / "runs")


# --- setups of the rows: each returns the command line -----------------------------------


def set_key(path: str, value):
    """An `edit` that sets the dotted config key `path` to `value`."""

    def edit(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def config_file(ctx: Ctx, content: bytes | None) -> list:
    path = ctx.tmp / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return ["train", path]


def unlabelled_image(ctx: Ctx) -> list:
    args = ctx.train()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(ctx.tmp / "data/images/extra.png")
    return args


def break_first(ctx: Ctx, folder: str, write: Callable[[Path], object]) -> list:
    """A tiny training config whose first file in data/<folder> is rewritten by `write`."""
    args = ctx.train()
    write(sorted((ctx.tmp / "data" / folder).glob("*.png"))[0])
    return args


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the header stays


def truncated_jpeg(path: Path) -> None:
    """`path` replaced by a JPEG of the same stem cut in half: its header decodes."""
    jpeg = path.with_suffix(".jpg")
    Image.open(path).convert("RGB").save(jpeg, quality=95)
    path.unlink()
    truncate(jpeg)


def predict_truncated_jpeg(ctx: Ctx) -> list:
    args = ctx.predict(ctx.tmp / "s.csv")  # the default 2 loader workers meet the image
    noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)
    Image.fromarray(noise).save(ctx.tmp / "test/b.jpg")  # noise: the header is a small part
    truncate(ctx.tmp / "test/b.jpg")
    return args


def mask_value(value: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)

    return write


def coco_edit(ctx: Ctx, change: Callable[[dict], None]) -> list:
    args = ctx.train(kind="coco")
    path = ctx.tmp / "data" / "train.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return args


def first_polygon(points: list) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["annotations"][0]["segmentation"] = [points]

    return change


def unknown_category(data: dict) -> None:
    data["categories"][0]["name"] = "plankton"


def folds_mismatch(ctx: Ctx) -> list:
    args = ctx.train()
    assert run_cli("split", args[1]).exit_code == 0
    make_mask_folder(ctx.tmp / "data", n=6, size=32, seed=1)  # two more images appear
    return args


def a_file(ctx: Ctx) -> Path:
    (ctx.tmp / "afile").write_text("not a folder")
    return ctx.tmp / "afile"


class Payload:
    """Runs a command when unpickled without weights_only: a checkpoint must never be."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def break_checkpoint(ctx: Ctx, how: str) -> Path:
    run = ctx.run()
    ckpt = run / "fold_0" / "best.ckpt"
    if how == "pickle":
        torch.save({"model": {}, "payload": Payload(ctx.tmp / "pwned")}, ckpt)
    elif how == "truncate":
        truncate(ckpt)
    else:
        ckpt.write_bytes(pickle.dumps("just a string"))
    return run


def pseudo_from(ctx: Ctx, how: str) -> list:
    """`segarena pseudo` on a copy of the trained run whose best.ckpt is broken `how`."""
    images = ctx.tmp / "pool"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "u.png")
    return ["pseudo", break_checkpoint(ctx, how), "--images", images, "--out", ctx.tmp / "pl"]


def resume_broken_last(ctx: Ctx, how: str) -> list:
    """`train --resume` of a run killed after epoch 1 whose last.ckpt is broken `how`."""
    run = ctx.run()
    (run / "summary.json").unlink()
    (run / "fold_0" / "result.json").unlink()
    last = run / "fold_0" / "last.ckpt"
    if how == "pickle":
        torch.save({"model": {}, "payload": Payload(ctx.tmp / "pwned")}, last)
    else:
        truncate(last)
    return ["train", "--resume", run]


def dead_run(ctx: Ctx) -> Path:
    run = ctx.run()
    (run / "summary.json").unlink()
    return run


def offline_hub(ctx: Ctx) -> list:
    ctx.monkeypatch.setenv("HF_HUB_CACHE", str(ctx.tmp / "hf"))  # nothing cached
    ctx.monkeypatch.setattr(hub, "hub_reachable", lambda endpoint, timeout=2.0: False)
    return ctx.train(set_key("model.encoder_weights", "imagenet"))


def pickled_encoder_weights(ctx: Ctx) -> list:
    path = ctx.tmp / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload(ctx.tmp / "pwned")}, path)
    return ctx.train(set_key("model.encoder_weights", str(path)))


def small_disk(ctx: Ctx) -> list:
    usage = shutil.disk_usage(ctx.tmp)._replace(free=2**20)  # 1 MiB left
    ctx.monkeypatch.setattr("segarena.util.files.shutil.disk_usage", lambda path: usage)
    return ctx.train()


def submission(ctx: Ctx, header: str = "image_id,PredictionString", rows: int = 1) -> list:
    sample = ctx.tmp / "sample.csv"
    sample.write_text("image_id,PredictionString\na,\n")
    sub = ctx.tmp / "sub.csv"
    sub.write_text(header + "\n" + "a,0 1 2\n" * rows)
    return ["validate-submission", sub, "--sample", sample, "--size", "any", "--classes", "3"]


def not_utf8(c: Ctx, name: str, text: bytes = b"id,mask\n\xff\xfe,1\n") -> Path:
    """A CSV at tmp/NAME (by default with two bytes that are not UTF-8 in its first row)."""
    path = c.tmp / name
    path.write_bytes(text)
    return path


def row(setup: Callable[[Ctx], list], code: int, message: str, name: str):
    return pytest.param(setup, code, message, id=name)


CASES = [
    # config files and --set
    row(lambda c: c.train(set_key("train.epochz", 3)), 2, "did you mean 'epochs'", "unknown-key"),
    row(lambda c: c.train(None, "--set", "train.batch_size=lots"), 2, "train.batch_size",
        "wrong-type"),
    row(lambda c: c.train(None, "--set", "train.epochs"), 2, "key.sub=value", "set-without-value"),
    row(lambda c: c.train(None, "--set", "data.image_size=[64,"), 2,
        "--set 'data.image_size=[64,': the value is not valid YAML", "set-unparsable"),
    row(lambda c: config_file(c, None), 2, "is a folder; expected a YAML config", "config-folder"),
    row(lambda c: config_file(c, b"experiment: caf\xe9\n"), 2, "not UTF-8", "config-not-utf8"),
    row(lambda c: config_file(c, b"data: [1, 2\n"), 2, "not valid YAML", "config-not-yaml"),
    row(lambda c: config_file(c, b"- a list\n"), 2, "expected a mapping of sections",
        "config-a-list"),
    row(lambda c: ["train", c.tmp / "missing.yaml"], 2, "config file not found",
        "config-missing"),
    row(lambda c: c.train(set_key("data.image_size", [64])), 2,
        "data.image_size: expected two numbers [height, width]", "image-size-one-number"),
    row(lambda c: c.train(set_key("data.ignore_index", 2)), 2,
        "data.ignore_index=2 is the id of class 'green'", "ignore-index-is-a-class"),
    row(lambda c: c.train(set_key("data.tiles", {"size": 16, "margin": 8})), 2,
        "leaves no trainable centre", "tiles-margin"),
    row(lambda c: c.train(set_key("data.num_workers", -1)), 2, "data.num_workers",
        "negative-workers"),
    row(lambda c: c.train(set_key("split.method", "group")), 2,
        "needs split.group_regex or split.group_csv", "group-split-without-groups"),
    row(lambda c: c.train(set_key("split.group_regex", "(")), 2, "is not a regex", "bad-regex"),
    row(lambda c: c.train(set_key("data.cleanse", {"audit": "a", "action": "drop"})), 2,
        "expected drop_top", "cleanse-drop-without-count"),
    row(lambda c: c.train(set_key("data.sources", [{"images": "images"}])), 2,
        "exactly one of `masks`, `pairs` or `coco`", "source-without-kind"),
    row(lambda c: c.train(set_key("experiment", "a/b")), 2, "experiment", "experiment-name"),
    row(lambda c: c.train(set_key("data.classes", ["only"])), 2, "data.classes", "one-class"),
    row(lambda c: c.train(set_key("data.classes", ["a", "b", "a", "c"])), 2,
        "data.classes names ['a'] more than once", "duplicate-class-names"),
    # registry names and transform parameters: refused before any folder, folds.csv or
    # MLflow record exists (the table's snapshot checks that nothing new is on disk)
    row(lambda c: c.train(set_key("loss.terms", [{"name": "dicee"}])), 2,
        "loss.terms[0].name: unknown loss 'dicee'; did you mean 'dice'", "loss-name"),
    row(lambda c: c.train(set_key("optimizer.name", "adamq")), 2,
        "optimizer.name='adamq' is not a timm optimizer", "optimizer-name"),
    row(lambda c: c.train(set_key("augment.train", [{"name": "HorizontalFlipp"}])), 2,
        "augment.train[0].name: unknown Albumentations transform 'HorizontalFlipp'",
        "augment-name"),
    row(lambda c: c.train(set_key("augment.train",
                                  [{"name": "HorizontalFlip", "params": {"pp": 0.5}}])), 2,
        "augment.train[0].params: HorizontalFlip has no parameter(s) ['pp']",
        "augment-param"),  # fmt: skip
    row(lambda c: ["split", write_config(c.tmp / "c.yaml", {**c.config(), "split": {
        "method": "group", "n_folds": 5, "group_regex": "^(seq\\d)_"}})], 2,
        "split.n_folds=5 but the data has only 4 groups", "split-more-folds-than-groups"),
    # the command line
    row(lambda c: c.train(None, "--fold", 3), 2, "--fold 3: expected 0..0", "fold-out-of-range"),
    row(lambda c: c.train(None, "--folds", "some"), 2, "--folds 'some'", "folds-not-all"),
    row(lambda c: c.train(None, "--seeds", "3,x"), 2, "--seeds '3,x'", "seeds"),
    row(lambda c: ["train"], 2, "give a CONFIG file, or --resume", "train-nothing"),
    row(lambda c: ["train", "--resume", c.run(), "--set", "train.epochs=3"], 2,
        "--set cannot change a resumed run", "resume-with-set"),
    row(lambda c: ["train", "--resume", c.tmp / "notrun"], 2, "not a segarena run directory",
        "resume-not-a-run"),
    row(lambda c: ["evaluate", c.tmp / "notrun"], 2, "notrun: not a segarena run directory",
        "evaluate-not-a-run"),
    row(lambda c: ["evaluate", c.run(), "--split", "test"], 2, "--split 'test'", "split-name"),
    row(lambda c: ["report", c.tmp], 2, "not a segarena run directory", "report-not-a-run"),
    row(lambda c: ["validate-submission", not_utf8(c, "sub.csv"), "--sample",
                   not_utf8(c, "sample.csv", b"id,mask\na,1\n")], 2,
        "sub.csv: not UTF-8 text (byte 8); expected a submission CSV", "submission-not-utf8"),
    row(lambda c: ["validate-submission", not_utf8(c, "sub.csv", b"id,mask\na,1\n"),
                   "--sample", not_utf8(c, "sample.csv")], 2,
        "sample.csv: not UTF-8 text (byte 8); expected a sample submission CSV",
        "sample-not-utf8"),
    row(lambda c: ["report", dead_run(c)], 2, "not a finished run (no summary.json)",
        "report-dead-run"),
    # data
    row(lambda c: c.train(set_key("data.root", str(c.tmp / "nowhere"))), 2,
        "data.root: folder", "data-root-missing"),
    row(unlabelled_image, 2, "have no mask", "image-without-mask"),
    row(lambda c: break_first(c, "masks", mask_value(9)), 2, "label values 9 are outside 0..3",
        "mask-value-out-of-range"),
    row(lambda c: break_first(c, "masks", lambda p: Image.new("L", (8, 8)).save(p)), 2,
        "is 8x8 but image", "mask-size"),
    row(lambda c: break_first(c, "masks", lambda p: Image.new("RGB", (32, 32)).save(p)), 2,
        "mask has mode RGB", "mask-in-colour"),
    row(lambda c: break_first(c, "images", lambda p: p.write_bytes(b"not an image")), 2,
        "cannot read the image", "image-not-an-image"),
    row(lambda c: break_first(c, "images", truncate), 2, "Truncated File Read",
        "image-truncated"),
    row(lambda c: break_first(c, "images", truncated_jpeg), 2,
        "_0000.jpg: cannot read the image (truncated JPEG: no end-of-image marker)",
        "jpeg-truncated"),
    row(predict_truncated_jpeg, 2, "b.jpg: cannot read the image (truncated JPEG: no "
        "end-of-image marker)", "predict-jpeg-truncated"),
    row(folds_mismatch, 2, "folds.csv", "folds-csv-mismatch"),
    # COCO
    row(lambda c: coco_edit(c, first_polygon([300, 20])), 2,
        "annotation id 1 (image_id 1): polygon 0 [300, 20] has 1 point(s); a polygon needs at "
        "least 3 points", "coco-1-point"),
    row(lambda c: coco_edit(c, first_polygon([1, 2, 10, 12])), 2,
        "has 2 point(s); a polygon needs at least 3 points", "coco-2-points"),
    row(lambda c: coco_edit(c, first_polygon([1, 2, 10])), 2, "expected a flat list of x, y",
        "coco-odd-coordinates"),
    row(lambda c: coco_edit(c, unknown_category), 2, "category 'plankton'", "coco-category"),
    row(lambda c: coco_edit(c, lambda d: d["annotations"][0].update(image_id=99)), 2,
        "image_id 99 is not in images", "coco-image-id"),
    # models and checkpoints
    row(offline_hub, 2, "offline choices", "hub-offline"),
    row(pickled_encoder_weights, 2, "refused, it holds a pickled", "encoder-weights-pickle"),
    row(lambda c: ["evaluate", break_checkpoint(c, "pickle")], 2,
        "best.ckpt: refused, it holds a pickled", "checkpoint-pickle-payload"),
    row(lambda c: ["evaluate", break_checkpoint(c, "truncate")], 2,
        "best.ckpt: not a readable segarena checkpoint", "checkpoint-truncated"),
    row(lambda c: ["evaluate", break_checkpoint(c, "string")], 2, "best.ckpt:",
        "checkpoint-plain-pickle"),
    row(lambda c: pseudo_from(c, "pickle"), 2, "best.ckpt: refused, it holds a pickled",
        "pseudo-checkpoint-pickle-payload"),
    row(lambda c: pseudo_from(c, "truncate"), 2, "best.ckpt: not a readable segarena checkpoint",
        "pseudo-checkpoint-truncated"),
    row(lambda c: resume_broken_last(c, "truncate"), 2,
        "last.ckpt: not a readable segarena checkpoint", "resume-checkpoint-truncated"),
    row(lambda c: resume_broken_last(c, "pickle"), 2, "last.ckpt: refused, it holds a pickled",
        "resume-checkpoint-pickle-payload"),
    # output paths
    row(lambda c: c.train(None, "--out", a_file(c) / "x"), 2, "afile is a file",
        "train-out-under-a-file"),
    row(lambda c: c.train(None, "--out", "/proc/x"), 2, "--out /proc/x: cannot write in /proc",
        "train-out-proc"),
    row(small_disk, 2, "1.0 MiB free in", "train-disk-too-small"),
    row(lambda c: c.predict(a_file(c) / "x.csv"), 2, "afile is a file", "predict-out-under-file"),
    row(lambda c: c.predict("/proc/x.csv"), 2, "cannot write in /proc", "predict-out-proc"),
    row(lambda c: c.predict(c.tmp), 2, "is a folder; expected a csv file", "predict-out-folder"),
    row(lambda c: c.predict(c.tmp / "s.csv", "--format", "tiff"), 2, "--format 'tiff'",
        "predict-format"),
    # submissions
    row(lambda c: submission(c, header="id,mask"), 2, "header ['id', 'mask']",
        "submission-header"),
    row(lambda c: submission(c, rows=2), 2, "appears 2 times", "submission-duplicate-id"),
    row(lambda c: ["validate-submission", c.tmp / "none.csv", "--sample", c.tmp / "none.csv"],
        2, "--sample", "submission-sample-missing"),
]  # fmt: skip


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(("setup", "code", "message"), CASES)
def test_bad_input_ends_cleanly(setup, code, message, tmp_path, trained, monkeypatch):
    args = setup(Ctx(tmp_path, trained, monkeypatch))
    before = snapshot(tmp_path)
    result = run_cli(*args)
    assert result.exit_code == code, result.output
    assert message in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no uncaught error
    assert "Traceback" not in result.output and "\x1b[" not in result.output
    assert "weights_only" not in result.output  # torch's advice is never repeated
    assert len(result.output.strip().splitlines()) <= 4, result.output
    assert snapshot(tmp_path) == before  # no run directory, no partial or temporary file
    assert not (tmp_path / "pwned").exists()  # nothing was unpickled


def test_evaluate_on_a_folder_does_not_mention_resume(tmp_path):
    result = run_cli("evaluate", tmp_path)
    assert result.exit_code == 2 and "--resume" not in result.output


# --- submissions of 11+ classes: longer than csv's default field limit -------------------


def test_an_11_class_csv_round_trips(tmp_path):
    mask = np.zeros((256, 256), np.uint8)
    mask[0, 0] = 10  # one two-digit id: 131,073 characters, over csv's 131,072
    out = tmp_path / "sub.csv"
    with SubmissionWriter("csv", out, 11, size=(256, 256)) as writer:
        writer.add("a", mask)
    assert validate_submission(out, None, 11, (256, 256)) == 1
    np.testing.assert_array_equal(read_submission(out, "csv", 11, (256, 256))["a"], mask)
    sample = tmp_path / "sample.csv"
    sample.write_text("image_id,PredictionString\na,\n")
    result = run_cli("validate-submission", out, "--sample", sample, "--classes", 11)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.csv", "sub.csv"]


# --- full disk ---------------------------------------------------------------------------


def test_a_full_disk_names_the_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(OSError) as caught, atomic_output(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    ctx = Ctx(tmp_path, Path(), monkeypatch)
    args = ctx.train(set_key("train.epochs", 2))
    real_save, lasts = torch.save, []

    def full_disk_in_epoch_2(state, path, *rest, **kwargs):
        if Path(path).name == ".last.ckpt.tmp":
            lasts.append(path)
        if len(lasts) == 2:
            Path(path).write_bytes(b"partial")  # torch leaves what it wrote so far
            raise RuntimeError("[enforce fail at inline_container.cc:626] basic_ios::clear: "
                               "iostream error")  # fmt: skip
        real_save(state, path, *rest, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_in_epoch_2)
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    assert "last.ckpt: no space left on device" in result.output and "MiB free" in result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) <= 8
    run_dir = only_run_dir(tmp_path / "runs")
    assert not list(run_dir.rglob("*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    last = torch.load(run_dir / "fold_0" / "last.ckpt", weights_only=True)
    assert last["state"]["epoch"] == 1  # the previous checkpoint, whole
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "No space left on device" in info["reason"]
    resumed = run_cli("train", "--resume", run_dir)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    assert "status" not in json.loads((run_dir / "run.json").read_text())


def test_a_full_disk_while_writing_a_submission(tmp_path, trained, monkeypatch):
    ctx = Ctx(tmp_path, trained, monkeypatch)
    out = tmp_path / "sub.csv"
    args = ctx.predict(out, "--workers", 0)
    real_writer = csv.writer

    class FullDisk:
        def __init__(self, file):
            self.rows = real_writer(file)

        def writerow(self, values):
            if values[0] != "image_id":  # the header fits, the first mask does not
                raise OSError(errno.ENOSPC, "No space left on device")
            self.rows.writerow(values)

    monkeypatch.setattr("segarena.submission.writer.csv.writer", FullDisk)
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    assert f"{out}: no space left on device" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# --- a bad image met by a DataLoader worker ----------------------------------------------


class Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise UserError(
            f"images/{index}.png: cannot read the image (missing, corrupt or not an image)"
        )


def test_a_worker_error_keeps_its_own_message():
    loader = torch.utils.data.DataLoader(Unreadable(), num_workers=1)
    with pytest.raises(UserError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # how torch re-raises it in the main process
    assert worker_free(str(caught.value)) == (
        "images/0.png: cannot read the image (missing, corrupt or not an image)"
    )


# --- a JPEG cut short: OpenCV decodes it without an error, its end grey ------------------


def test_a_truncated_jpeg_is_told_from_a_whole_or_padded_one(tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(whole)
    padded, cut, png = tmp_path / "padded.jpg", tmp_path / "cut.jpg", tmp_path / "a.png"
    padded.write_bytes(whole.read_bytes() + b"\0" * 300)  # some writers pad after the marker
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    Image.open(whole).save(png)
    assert [truncated_jpeg_file(p) for p in (whole, padded, cut, png)] == [
        False, False, True, False
    ]  # fmt: skip
    assert load_image(padded).shape == (64, 64, 3)
    assert cv2.imread(str(cut)) is not None  # what load_image must not trust
    with pytest.raises(UserError, match=r"cut.jpg: cannot read the image \(truncated JPEG: no"):
        load_image(cut)


# --- two trainings into one fresh OUT ----------------------------------------------------


def test_two_trainings_started_together_both_record_in_mlflow(tmp_path):
    raw = tiny_config(make_mask_folder(tmp_path / "data", n=4, size=32), tmp_path / "runs")
    raw["split"] = {"method": "holdout", "val_ratio": 0.25}
    raw["train"] = {**raw["train"], "epochs": 1, "batch_size": 2}
    raw["records"]["mlflow"] = True
    path = write_config(tmp_path / "c.yaml", raw)
    command = [sys.executable, "-m", "segarena.cli", "train", str(path)]
    # two different experiments (seeds): the same one twice would be refused as a repeat
    procs = [subprocess.Popen([*command, "--set", f"train.seed={seed}"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for seed in range(2)]  # fmt: skip
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert len([p for p in (tmp_path / "runs" / "tiny").iterdir() if p.is_dir()]) == 2
