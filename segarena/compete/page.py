"""compete.html: the plan, each stage with its OOF mIoU, gain and interval, time, and
whether it was kept, dropped or skipped and why; self-contained (segarena.report.html)."""

from __future__ import annotations

from segarena.report.html import note, page, section, table
from segarena.util.files import write_text_atomic

PAGE = "compete.html"


def write_page(comp) -> None:
    """Write compete.html beside compete.json (nothing when no plan was made)."""
    record = comp.record
    plan = record.get("plan")
    if plan is None or not comp.root.is_dir():
        return
    h, w = plan["image_size"]
    plan_rows = [
        ["folds", ", ".join(map(str, plan["folds"]))],
        ["input size", f"{w}x{h} (scale {plan['scale']:g})"],
        ["epochs", plan["epochs"]],
        ["pseudo-label round", "planned" if plan["pseudo"] else "not planned"],
        ["SWA", f"from epoch {plan['swa_start']}" if plan["swa_start"] else "not planned"],
        ["multi-scale TTA", "planned" if plan["multiscale"] else "not planned"],
        ["device", plan["speed"]["device"]],
    ]
    plan_part = table(["setting", "value"], plan_rows) + "".join(note(r) for r in plan["reasons"])
    rows = []
    for name, stage in record["stages"].items():
        ci = stage.get("ci")
        rows.append([
            name,
            stage["status"],
            stage.get("miou"),
            stage.get("gain"),
            "" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]",
            round(stage.get("seconds", 0.0) / 60, 2),
            round(plan["estimates"].get(name, 0.0) / 60, 2),
            stage.get("reason", ""),
        ])  # fmt: skip
    stages_part = table(
        ["stage", "status", "OOF mIoU", "gain", "95% CI", "minutes", "planned min", "why"], rows
    )
    arm_rows = [
        [name, a["arm"], a["miou_before"], a["miou"], a["gain"],
         f"[{a['ci'][0]:+.4f}, {a['ci'][1]:+.4f}]", a["images"], "kept" if a["kept"] else "no"]
        for name, stage in record["stages"].items()
        for a in stage.get("arms", [])
    ]  # fmt: skip
    arms_part = table(
        ["stage", "candidate", "mIoU before", "mIoU", "gain", "95% CI", "images", "kept"],
        arm_rows,
    )
    threshold = record["stages"]["pseudo"].get("threshold")
    parts = [
        section("plan", "Plan", plan_part),
        section(
            "stages",
            "Stages",
            note(
                "Each stage is scored on out-of-fold images, paired image by image with the "
                "choice before it; it is kept when its 95% paired-bootstrap interval lies "
                f"above 0. Spent {record.get('spent_s', 0) / 60:.1f} of "
                f"{record['budget_min']:g} min."
            ),
            stages_part,
        ),
        section("candidates", "Candidates", arms_part),
    ]
    if threshold:
        rows = [[r["threshold"], r["kept_share"], r["kept_accuracy"]] for r in threshold["table"]]
        parts.append(section(
            "threshold", "Pseudo-label threshold",
            note(f"chosen {threshold['threshold']}: {threshold['rule']}"),
            table(["threshold", "kept share", "kept accuracy"], rows),
        ))  # fmt: skip
    choice = record.get("choice")
    if choice:
        rows = [[k, str(choice.get(k))] for k in ("runs", "checkpoint", "tta", "weights", "miou")]
        rows.append(["submission", record.get("submission", "(not written yet)")])
        parts.append(section("choice", "Submission", table(["what", "value"], rows)))
    write_text_atomic(comp.root / PAGE, page("segarena compete", parts))
