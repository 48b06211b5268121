"""The stage functions of `segarena compete` and the bookkeeping around them: each stage
runs once (a finished one is not repeated on --resume), optional stages are skipped with a
reason when the plan or the time left rules them out, and `decide` applies the keep rule
to a stage's candidates against the current choice."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segarena.ablate.runner import ensure_run
from segarena.compete import oof
from segarena.compete.record import FINISHED, Competition
from segarena.config import Config, config_from_dict
from segarena.data.pseudo_source import MANIFEST
from segarena.infer.submit import write_submission
from segarena.infer.tune_weights import tune_weights
from segarena.labels.pseudo import write_pseudo_labels

OPTIONAL = ("tta", "pseudo", "ensemble", "swa")
SUBMISSION_NAMES = {"csv": "submission.csv", "rle": "submission_rle.csv", "png": "submission"}


def time_left(comp: Competition, budget_s: float) -> float:
    """Seconds of the budget not yet spent (tests replace it to run out of time)."""
    return budget_s - comp.spent_s()


class Stages:
    """The stage functions and the bookkeeping around them."""

    def __init__(self, comp, config, plan, test_folder, budget_s, submit, hooks, device,
                 n_boot, echo) -> None:  # fmt: skip
        self.comp, self.config, self.plan = comp, config, plan
        self.test_folder, self.budget_s, self.options = test_folder, budget_s, submit
        self.hooks, self.device, self.n_boot, self.echo = hooks, device, n_boot, echo

    # bookkeeping ---------------------------------------------------------------------------
    def run_all(self) -> None:
        for name in ("folds", *OPTIONAL, "submit"):
            self.run_stage(name, getattr(self, name))

    def run_stage(self, name: str, body: Callable[[dict], None]) -> None:
        stage = self.comp.stage(name)
        if stage["status"] in FINISHED:
            self.echo(f"{name}: {stage['status']} earlier")
            return
        if name in OPTIONAL and stage["status"] == "pending":
            why = self.skip_reason(name)
            if why is not None:
                stage.update(status="skipped", reason=why, seconds=0.0)
                self.echo(f"{name}: skipped ({why})")
                self.comp.save()
                return
        stage["status"] = "running"
        stage.setdefault("seconds", 0.0)
        self.echo(f"{name}: {'resuming' if stage.get('started') else 'running'}")
        stage["started"] = True
        self.comp.save()
        began = time.monotonic()
        try:
            body(stage)
        finally:
            stage["seconds"] = round(stage["seconds"] + time.monotonic() - began, 2)
            self.comp.save()
        line = f"{name}: {stage['status']} ({stage['seconds'] / 60:.1f} min)"
        if stage.get("reason"):
            line += f": {stage['reason']}"
        self.echo(line)

    def skip_reason(self, name: str) -> str | None:
        planned = self.plan.estimates.get(name, 0.0)
        if name == "pseudo" and not self.plan.pseudo:
            return "the plan has no time for a pseudo-label round (see the plan's reasons)"
        if name == "swa" and self.plan.swa_start is None:
            return "the plan has no time for SWA (see the plan's reasons)"
        if name == "ensemble" and self.comp.run_path("pseudo") is None:
            return "one run only: no second run to ensemble or weigh"
        pace = self.pace()
        need = (planned + self.plan.estimates["submit"]) * pace
        left = time_left(self.comp, self.budget_s)
        if need > left:
            return (
                f"needs about {need / 60:.1f} min with the submission (planned "
                f"{planned / 60:.1f} min x {pace:.2f}, the fold run's measured/planned time), "
                f"{max(left, 0) / 60:.1f} min left"
            )
        return None

    def pace(self) -> float:
        """How much longer the fold run took than planned (at least 0.5)."""
        folds = self.comp.stage("folds")
        planned = self.plan.estimates["folds"]
        if folds.get("status") != "done" or not planned:
            return 1.0
        return max(0.5, folds["seconds"] / planned)

    @property
    def choice(self) -> dict[str, Any]:
        return self.comp.record["choice"]

    def matrices_path(self, label: str) -> Path:
        return self.comp.root / "oof" / f"{label}.npz"

    def stage_config(self, pseudo: str | None = None) -> Config:
        """The config's runs train with the plan: input size, epochs, SWA, pseudo folder."""
        raw = self.config.model_dump(mode="json")
        train = raw["train"]
        budgets = self.plan.run_budget_s
        if budgets:  # time-bound: the run fits its epochs to its planned minutes
            seconds = budgets["pseudo" if pseudo is not None else "folds"]
            train.update(epochs=None, budget_min=round(seconds / 60, 3))
        else:
            train.update(epochs=self.plan.epochs, budget_min=None)
        if self.plan.swa_start is not None:
            swa = train.get("swa") or {}
            train["swa"] = {**swa, "start_epoch": min(swa.get("start_epoch", 10**9),
                                                      self.plan.swa_start)}  # fmt: skip
        if self.config.data.tiles is None:
            raw["data"]["image_size"] = list(self.plan.image_size)
        if pseudo is not None:
            raw["data"]["pseudo"] = [*raw["data"].get("pseudo", []), pseudo]
        return config_from_dict(raw, source="segarena compete")

    def train(self, arm: str, config: Config) -> Path:
        return Path(ensure_run(self.comp, arm, "0", config, folds=self.plan.folds,
                               hooks=self.hooks))  # fmt: skip

    def decide(self, stage: dict, candidates: list[tuple[str, dict]]) -> None:
        """Score each candidate choice on OOF against the current one; keep the largest
        point gain whose interval lies above 0, else drop the stage."""
        base = oof.cached_matrices(self.matrices_path(self.choice["label"]), self.choice,
                                   self.device)  # fmt: skip
        arms, best = [], None
        for label, candidate in candidates:
            matrices = oof.cached_matrices(self.matrices_path(label), candidate, self.device)
            result = {"arm": label, **oof.gain_of(base, matrices, label, self.n_boot)}
            result["kept"] = oof.keeps(result)
            arms.append(result)
            if result["kept"] and (best is None or result["gain"] > best[0]["gain"]):
                best = (result, candidate)
        stage["arms"] = arms
        shown = max(arms, key=lambda a: a["gain"]) if best is None else best[0]
        stage.update(miou=shown["miou"], miou_before=shown["miou_before"],
                     gain=shown["gain"], ci=shown["ci"], arm=shown["arm"])  # fmt: skip
        interval = f"[{shown['ci'][0]:+.4f}, {shown['ci'][1]:+.4f}]"
        if best is None:
            stage["status"] = "dropped"
            stage["reason"] = (
                f"no candidate's interval lies above 0 (best: {shown['arm']} "
                f"{shown['gain']:+.4f}, 95% CI {interval} over {shown['images']} OOF images)"
            )
            return
        stage["status"] = "kept"
        stage["reason"] = (
            f"{shown['arm']}: OOF mIoU {shown['miou_before']:.4f} -> {shown['miou']:.4f}, "
            f"gain {shown['gain']:+.4f}, 95% CI {interval} above 0"
        )
        self.comp.record["choice"] = {**best[1], "miou": shown["miou"]}

    # the stages ----------------------------------------------------------------------------
    def folds(self, stage: dict) -> None:
        run = self.train("folds", self.stage_config())
        choice = {"label": "folds", "runs": [str(run)], "checkpoint": "best", "tta": {},
                  "weights": None, "fold_weights": None}  # fmt: skip
        matrices = oof.cached_matrices(self.matrices_path("folds"), choice, self.device)
        miou = oof.pooled_miou(matrices.cms)
        self.comp.record["choice"] = {**choice, "miou": miou}
        stage.update(status="done", runs=[str(run)], miou=miou,
                     reason=f"the baseline: {len(matrices.ids)} OOF images")  # fmt: skip

    def tta(self, stage: dict) -> None:
        arms = [("tta_hflip", {"tta": "hflip"})]
        if self.plan.multiscale:
            arms.append(("tta_hflip_scales", {"tta": "hflip", "scales": [0.75, 1.0, 1.25]}))
        self.decide(stage, [(label, {**self.choice, "label": label, "tta": options})
                            for label, options in arms])  # fmt: skip

    def pseudo(self, stage: dict) -> None:
        base = Path(self.comp.run_path("folds"))
        if "threshold" not in stage:
            stage["threshold"] = oof.choose_threshold(base)
            self.comp.save()
        threshold = stage["threshold"]["threshold"]
        folder = self.comp.root / "pseudo"
        if not (folder / MANIFEST).is_file():  # written whole or not at all
            spec = oof.choice_spec(self.choice, self.device)
            manifest = write_pseudo_labels(spec, self.test_folder, folder, threshold=threshold)
            stage["kept_share"] = manifest["kept_share"]
        stage["folder"] = str(folder)
        self.comp.save()
        run = self.train("pseudo", self.stage_config(pseudo=str(folder.resolve())))
        stage["runs"] = [str(run)]
        runs = [str(run) if r == str(base) else r for r in self.choice["runs"]]
        candidate = {**self.choice, "label": "pseudo", "runs": runs}
        self.decide(stage, [("pseudo", candidate)])

    def ensemble(self, stage: dict) -> None:
        runs = [str(self.comp.run_path("folds")), str(self.comp.run_path("pseudo"))]
        tuned = tune_weights([Path(r) for r in runs])
        kept = ("weights", "miou_tuned", "miou_mean", "miou_crossfit", "crossfit_fold_weights")
        stage["tune"] = {k: tuned[k] for k in kept}
        common = {**self.choice, "runs": runs, "weights": None, "fold_weights": None}
        candidates = [("ensemble_mean", {**common, "label": "ensemble_mean"})]
        if tuned["weights"] != [0.5, 0.5]:
            candidates.append(("ensemble_tuned", {
                **common, "label": "ensemble_tuned", "weights": tuned["weights"],
                "fold_weights": tuned["crossfit_fold_weights"],
            }))  # fmt: skip
        self.decide(stage, candidates)

    def swa(self, stage: dict) -> None:
        self.decide(stage, [("swa", {**self.choice, "label": "swa", "checkpoint": "swa"})])

    def submit(self, stage: dict) -> None:
        options = self.options
        path = self.comp.root / SUBMISSION_NAMES[options.fmt]
        spec = oof.choice_spec(self.choice, self.device)
        count = write_submission(spec, self.test_folder, path, fmt=options.fmt,
                                 sample=options.sample, size=options.size)  # fmt: skip
        self.comp.record["submission"] = str(path)
        choice = self.choice
        stage.update(
            status="done", path=str(path), images=count, miou=choice["miou"],
            reason=f"{count} images from {len(choice['runs'])} run(s), checkpoint "
            f"{choice['checkpoint']}, options {choice['tta'] or 'plain'}, weights "
            f"{choice['weights'] or 'equal'}; validated",
        )  # fmt: skip
