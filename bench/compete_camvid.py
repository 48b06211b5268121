"""`segarena compete` against the plain loop and the single recipe, on a sequence no arm sees.

Held out: CamVid sequence 0006R0 (101 frames of train/ + val/). No arm trains on it or
chooses anything on it; compete gets its images, unlabelled, as the "test" folder. Every
arm is scored on it at the end, at 360x480.
Labelled: the other 367 frames (sequences 0001TP and 0016E5). Only two sequences are left,
so compete's grouped folds split them by sequence and by 1000-frame block (group_regex
'^([^_]+_f?\\d\\d)': 0001TP, 0016E5_00, ..., 0016E5_08; 3 folds). Neighbouring blocks of
0016E5 share a little scenery at their boundary, so the OOF estimate may be optimistic.

Arms, run one after the other, each given `--budget-min` minutes of wall clock:
  compete  `segarena compete` of configs/camvid.yaml on the labelled frames; the budget
           covers everything up to the validated PNG submission, which is what is scored.
  recipe   configs/camvid.yaml trained on all 367 labelled frames with train.budget_min
           (split.method=predefined with the held-out frames as the val source, validated
           at the last epoch only, so nothing is chosen on them), scored with the recipe's
           hflip TTA; that prediction is not counted in its budget.
  plain    SMP's CamVid example loop (Unet, Adam 1e-3, cross-entropy, flips, batch 8,
           float32, images held as tensors at the recipe's 192x256) with the same packaged
           lite0 weights and their normalisation (mean = std = 0.5), all 367 frames,
           epochs until the budget is spent (scoring not counted).

Scores: per-image confusion matrices at mask resolution, mIoU of the pooled matrices, and
paired bootstrap 95% intervals over the 101 images for compete minus each peer. Then,
for each compete stage, its recorded OOF gain next to the held-out gain of the same
choice, to show whether the held-out ranking agrees. Last line: `gain: X.X`, compete
minus the plain loop in mIoU points.

    python bench/compete_camvid.py [--budget-min 30] [--arms compete recipe plain] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from camvid_budget import plain_loop
from PIL import Image

from segarena.compete.oof import choice_spec
from segarena.config import load_config
from segarena.infer.ensemble import Ensemble
from segarena.metrics import bootstrap_miou_diff_ci, confusion_matrix, scores
from segarena.train.run import fit

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "camvid.yaml"
CLASSES, IGNORE, HELD_OUT = 11, 11, "0006R0"
GROUPS = r"^([^_]+_f?\d\d)"
SIZE = (192, 256)


def lay_out(root: Path, work: Path) -> Path:
    """Symlink folders: labelled/{images,masks} (367 frames) and test/{images,masks}."""
    data = work / "data"
    if (data / "done").is_file():
        return data
    for sub in ("labelled/images", "labelled/masks", "test/images", "test/masks"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        for image in sorted((root / split).glob("*.png")):
            part = "test" if image.name.startswith(HELD_OUT) else "labelled"
            for kind, source in (("images", image), ("masks", root / f"{split}annot" / image.name)):
                link = data / part / kind / image.name
                if not link.exists():
                    link.symlink_to(source.resolve())
    (data / "done").write_text("")
    return data


def write_config(data: Path, work: Path, name: str, sources: list[dict], split: dict) -> Path:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["experiment"] = name
    raw["data"].update(root=str(data), sources=sources)
    raw["split"] = split
    raw["records"] = {"out": str(work / "runs"), "mlflow": False}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def held_out(data: Path) -> tuple[list[Path], list[np.ndarray]]:
    images = sorted((data / "test" / "images").glob("*.png"))
    masks = [np.asarray(Image.open(data / "test" / "masks" / p.name)) for p in images]
    return images, masks


def matrices_of(predict, images: list[Path], masks: list[np.ndarray]) -> np.ndarray:
    """Per-image confusion matrices of `predict(rgb uint8, (H, W)) -> class map`."""
    cms = []
    for path, mask in zip(images, masks):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        pred = torch.as_tensor(np.array(predict(rgb, mask.shape)), dtype=torch.int64)
        cms.append(confusion_matrix(pred, torch.from_numpy(mask.astype(np.int64)),
                                    CLASSES, IGNORE).numpy())  # fmt: skip
    return np.stack(cms).astype(np.int64)


def ensemble_predict(choice: dict):
    ensemble = Ensemble.from_spec(choice_spec(choice, "cpu"))
    return lambda rgb, size: ensemble.probs(rgb, size).argmax(0)


# the arms ----------------------------------------------------------------------------------
def compete_arm(data: Path, work: Path, budget: float, images, masks) -> tuple[np.ndarray, dict]:
    config = write_config(data, work, "camvid_compete", [{"images": "labelled/images",
                          "masks": "labelled/masks"}],
                          {"method": "group", "n_folds": 3, "group_regex": GROUPS})  # fmt: skip
    out = work / "compete"
    start = time.perf_counter()
    resume = ["--resume"] if (out / "compete.json").exists() else []
    command = [str(Path(sys.executable).parent / "segarena"), "compete", str(config),
               "--test-images", str(data / "test" / "images"), "--budget-min", f"{budget:g}",
               "--format", "png", "--out", str(out), *resume]  # fmt: skip
    subprocess.run(command, check=True)
    minutes = (time.perf_counter() - start) / 60
    record = json.loads((out / "compete.json").read_text())
    submission = Path(record["submission"])

    def read_submission(rgb, size, names=iter(p.stem for p in images)):
        return np.asarray(Image.open(submission / f"{next(names)}.png"))

    cms = matrices_of(read_submission, images, masks)
    row = {"arm": "segarena compete", "miou": scores(cms.sum(0))["miou"], "minutes": minutes,
           "oof": record["choice"]["miou"], "plan": record["plan"]}  # fmt: skip
    return cms, row


def recipe_arm(data: Path, work: Path, budget: float, images, masks) -> tuple[np.ndarray, dict]:
    sources = [{"images": "labelled/images", "masks": "labelled/masks"},
               {"images": "test/images", "masks": "test/masks", "role": "val"}]  # fmt: skip
    config = write_config(data, work, "camvid_recipe", sources, {"method": "predefined"})
    overrides = [f"train.budget_min={budget:g}", "train.val_every=1000"]
    start = time.perf_counter()
    run = fit(load_config(config, overrides), work / "runs", folds=[0])
    minutes = (time.perf_counter() - start) / 60
    choice = {"runs": [str(run.path)], "checkpoint": "best", "tta": {"tta": "hflip"}}
    cms = matrices_of(ensemble_predict(choice), images, masks)
    epochs = run.summary.model_dump().get("budget", {}).get("epochs")
    row = {"arm": "segarena recipe (1 model, hflip)", "miou": scores(cms.sum(0))["miou"],
           "minutes": minutes, "epochs": epochs, "run": str(run.path)}  # fmt: skip
    return cms, row


def plain_arm(data: Path, budget: float, images, masks) -> tuple[np.ndarray, dict]:
    """SMP's example loop; the 367 frames are decoded and resized before the clock starts."""
    paths = sorted((data / "labelled" / "images").glob("*.png"))
    h, w = SIZE
    x = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB").resize((w, h)))
                                   for p in paths])).permute(0, 3, 1, 2)  # fmt: skip
    y = torch.from_numpy(np.stack([np.asarray(Image.open(data / "labelled" / "masks" / p.name)
                                              .resize((w, h), Image.NEAREST))
                                   for p in paths]).astype(np.int64))  # fmt: skip
    # the same loop as bench/camvid_budget.py's (SMP's example, the lite weights' own
    # normalisation), which this directory puts on the import path
    model, epochs, seconds, _ = plain_loop("tu-efficientnet_lite0", True, x, y, budget * 60)
    minutes = seconds / 60
    model.eval()

    @torch.no_grad()
    def predict(rgb, size):
        t = torch.from_numpy(np.asarray(Image.fromarray(rgb).resize((w, h)))).permute(2, 0, 1)
        probs = model(((t[None].float() / 255) - 0.5) / 0.5).softmax(1)
        return F.interpolate(probs, size=size, mode="bilinear").argmax(1)[0]

    cms = matrices_of(predict, images, masks)
    row = {"arm": "plain SMP loop (lite0 imagenet)", "miou": scores(cms.sum(0))["miou"],
           "minutes": minutes, "epochs": epochs}  # fmt: skip
    return cms, row


# the per-stage check -----------------------------------------------------------------------
def stage_rows(work: Path, images, masks) -> list[dict]:
    """Each compete stage's OOF gain next to the held-out gain of the same comparison."""
    record = json.loads((work / "compete" / "compete.json").read_text())
    stages = record["stages"]
    current = {"runs": stages["folds"]["runs"], "checkpoint": "best", "tta": {},
               "weights": None}  # fmt: skip
    cache: dict[str, np.ndarray] = {}

    def held(choice: dict) -> np.ndarray:
        key = json.dumps(choice, sort_keys=True)
        if key not in cache:
            cache[key] = matrices_of(ensemble_predict(choice), images, masks)
        return cache[key]

    rows = []
    for name in ("tta", "pseudo", "ensemble", "swa"):
        stage = stages.get(name, {})
        if stage.get("status") not in ("kept", "dropped"):
            rows.append({"stage": name, "status": stage.get("status"), "arm": "-"})
            continue
        base, chosen = held(current), None
        for arm in stage["arms"]:
            candidate = candidate_of(arm["arm"], current, stages)
            gain = 100 * (scores(held(candidate).sum(0))["miou"] - scores(base.sum(0))["miou"])
            low, high = bootstrap_miou_diff_ci(base, held(candidate))
            rows.append({"stage": name, "status": stage["status"], "arm": arm["arm"],
                         "oof_gain": 100 * arm["gain"], "oof_ci": [100 * c for c in arm["ci"]],
                         "held_gain": gain, "held_ci": [100 * low, 100 * high]})  # fmt: skip
            if arm["kept"] and arm["arm"] == stage["arm"]:
                chosen = candidate
        current = chosen or current
    return rows


def candidate_of(label: str, current: dict, stages: dict) -> dict:
    """The choice compete scored as `label`, on top of the `current` one (stages.py)."""
    if label == "tta_hflip":
        return {**current, "tta": {"tta": "hflip"}}
    if label == "tta_hflip_scales":
        return {**current, "tta": {"tta": "hflip", "scales": [0.75, 1.0, 1.25]}}
    if label == "swa":
        return {**current, "checkpoint": "swa"}
    if label == "pseudo":
        return {**current, "runs": stages["pseudo"]["runs"]}
    both = [*stages["folds"]["runs"], *stages["pseudo"]["runs"]]
    weights = stages["ensemble"]["tune"]["weights"] if label == "ensemble_tuned" else None
    return {**current, "runs": both, "weights": weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("SEGARENA_DATA", "../shared/data/camvid"))
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--arms", nargs="+", default=["compete", "recipe", "plain"],
                        choices=["compete", "recipe", "plain"])  # fmt: skip
    parser.add_argument("--out", default="runs_bench/compete_camvid")
    args = parser.parse_args()
    work = Path(args.out).resolve()
    data = lay_out(Path(args.data), work)
    images, masks = held_out(data)
    print(f"budget {args.budget_min:g} min per arm, torch threads {torch.get_num_threads()}, "
          f"{len(images)} held-out frames of {HELD_OUT}", flush=True)  # fmt: skip
    results = {}
    for arm in args.arms:
        saved = work / f"{arm}_row.json"
        if saved.is_file():  # measured by an earlier invocation: a crash later loses nothing
            results[arm] = np.load(work / f"{arm}_matrices.npy"), json.loads(saved.read_text())
        elif arm == "compete":
            results[arm] = compete_arm(data, work, args.budget_min, images, masks)
        elif arm == "recipe":
            results[arm] = recipe_arm(data, work, args.budget_min, images, masks)
        else:
            results[arm] = plain_arm(data, args.budget_min, images, masks)
        cms, row = results[arm]
        np.save(work / f"{arm}_matrices.npy", cms)
        saved.write_text(json.dumps(row, indent=1, default=str))
        extra = (f"  {row['epochs']} epochs" if row.get("epochs") else "") + (
            f"  (OOF estimate {row['oof']:.4f})" if "oof" in row else ""
        )
        print(f"  {row['arm']:<34} held-out mIoU {row['miou']:.4f}  {row['minutes']:5.1f} min"
              + extra, flush=True)  # fmt: skip
    if "compete" not in results:
        return
    ours = results["compete"][0]
    for peer in [a for a in results if a != "compete"]:
        theirs = results[peer][0]
        gain = 100 * (scores(ours.sum(0))["miou"] - scores(theirs.sum(0))["miou"])
        low, high = bootstrap_miou_diff_ci(theirs, ours)
        interval = f"95% CI {100 * low:+.1f} to {100 * high:+.1f}"
        print(f"compete - {peer}: {gain:+.1f} points ({interval})")
    for row in stage_rows(work, images, masks):
        if "oof_gain" not in row:
            print(f"  stage {row['stage']:<8} {row['status']}")
            continue
        print(f"  stage {row['stage']:<8} {row['arm']:<17} {row['status']:<7} OOF "
              f"{row['oof_gain']:+.2f} [{row['oof_ci'][0]:+.2f}, {row['oof_ci'][1]:+.2f}]  "
              f"held-out {row['held_gain']:+.2f} [{row['held_ci'][0]:+.2f}, "
              f"{row['held_ci'][1]:+.2f}]")  # fmt: skip
    if "plain" in results:
        plain = results["plain"][0]
        print(f"gain: {100 * (scores(ours.sum(0))['miou'] - scores(plain.sum(0))['miou']):.1f}")


if __name__ == "__main__":
    main()
