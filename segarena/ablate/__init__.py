"""`segarena ablate`: a baseline and one run per arm (one change each), on the same folds,
scored against the baseline image by image with a paired bootstrap.

`arms` parses the arms and `plan` checks them before anything trains; `runner` trains (or
reuses, or resumes) the runs and keeps the bookkeeping; `infer_arms` scores inference-time
arms on the baseline's checkpoints; `stats` pairs images and bootstraps the gain; `table`
prints and writes the result.
"""
