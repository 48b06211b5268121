#!/usr/bin/env bash
# The CamVid ablation: configs/camvid.yaml against one change at a time (bench/camvid_arms.yaml),
# paired-bootstrap intervals over the held-out images (segarena ablate).
#   bash bench/camvid_ablation.sh [--fold K]   CPU: one grouped fold, 5 epochs per arm (about
#                                              45 minutes on 2 cores). The default, fold 1, holds
#                                              out sequence 0006R0, on which no recipe choice was
#                                              made; fold 0 (0001TP) is the one the recipe was
#                                              tuned on (docs/tuning.md)
#   bash bench/camvid_ablation.sh --full       GPU: all 3 grouped folds (out of fold), 60 epochs at
#                                              352x480, seeds 0 and 1
set -euo pipefail
cd "$(dirname "$0")/.."
export SEGARENA_DATA="${SEGARENA_DATA:-../shared/data/camvid}"
if [ "${1:-}" = "--full" ]; then
  segarena ablate configs/camvid.yaml --arms-file bench/camvid_arms.yaml --folds all \
    --seeds 0,1 --set train.epochs=60 --set 'data.image_size=[352,480]' --out runs_ablate_full
else
  fold=1
  if [ "${1:-}" = "--fold" ]; then fold="${2:?--fold needs a fold number}"; fi
  segarena ablate configs/camvid.yaml --arms-file bench/camvid_arms.yaml --folds "$fold" \
    --set train.epochs=5 --out "runs_ablate_fold$fold"
fi
