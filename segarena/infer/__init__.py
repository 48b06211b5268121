"""Inference: TTA views (tta), sliding windows (sliding) and model ensembles (ensemble)."""

from segarena.infer.sliding import infer_probs, sliding_probs
from segarena.infer.tta import tta_probs

__all__ = ["infer_probs", "sliding_probs", "tta_probs"]
