#!/usr/bin/env bash
# Reproduce the shipped compact checkpoint (checkpoints/compact) from scratch, with the
# held-out evaluation the README reports. Expects scripts/env.sh to be sourced. About an hour on
# 2 cores: 2000 training samples, 500 held-out samples from unseen seeds, ~15 min of training.
#   bash scripts/compact_checkpoint.sh [WORK_DIR]   (default ~/failrecov-compact)
# The held-out split: episode seeds never trained on (dataset seed 1), and one variation never
# trained on (target_color=purple is excluded from training and scored alone).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${1:-$HOME/failrecov-compact}
mkdir -p "$WORK"
failrecov datagen --out "$WORK/train" --samples 2000 --workers 2 --seed 0
failrecov datagen --out "$WORK/heldout" --samples 500 --workers 2 --seed 1
failrecov train --data "$WORK/train" --out "$WORK/model" --exclude target_color=purple \
  --epochs 30 --seed 0
failrecov eval dataset --model "$WORK/model" --data "$WORK/heldout" \
  --breakdown target_color=purple > "$WORK/model/heldout.json"
rm -rf "$ROOT/checkpoints/compact"
mkdir -p "$ROOT/checkpoints/compact"
cp "$WORK/model/config.json" "$WORK/model/model.safetensors" "$WORK/model/training.json" \
  "$WORK/model/heldout.json" "$ROOT/checkpoints/compact/"
cat "$WORK/model/heldout.json"
