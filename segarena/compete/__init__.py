"""`segarena compete`: the competition playbook end to end within a wall-clock budget.

plan (speed probe -> folds, input size, epochs) -> K-fold models -> TTA chosen on OOF ->
one pseudo-label round -> ensemble weights -> SWA -> a validated submission, with
compete.json (resumable) and compete.html. Every choice is made on out-of-fold (OOF)
predictions and kept only when its paired bootstrap interval lies above 0.

Modules: `probe` (measured speed), `plan` (the planner), `checks` (bad input before any
file is written), `record` (compete.json), `oof` (per-image OOF scoring, the keep rule,
the pseudo threshold), `runner` (the stages), `page` (compete.html).
"""
