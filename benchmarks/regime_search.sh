#!/usr/bin/env bash
# Issue 6's regime search: does longer training or a higher LoRA rank make emergent misalignment
# appear on smollm2-135m, where the main benchmark (30 steps, r 16) found none?
#
#   bash benchmarks/regime_search.sh MAIN_WORK_DIR [SHARED_DATA]
#
# Two small grids through `traitwatch bench`, 2 seeds each, the emergent-risk set with the largest rise
# in the main benchmark (insecure_code) against a benign control (arithmetic), same basis, label and
# tau as the main benchmark; results under benchmarks/em_small/regime/<grid>/ (RESULTS.md, results.json).
#   long150: lr 1e-3, r 16, 150 steps (5x the main benchmark), label every 50 steps
#   rank64:  lr 1e-3, r 64 alpha 128, 30 steps, label every 15 steps
# The main benchmark's basis is reused so drift is comparable. Its base-model costs.json (the step-0
# label and one-off costs, measured once on the same model) and its semantic basis are copied into each
# grid's work folder so they are not measured again. With one calibration type the monitor is not
# calibrated here (too few checkpoints); the question is only whether the proxy rises.
set -euo pipefail
main=${1:?usage: bash benchmarks/regime_search.sh MAIN_WORK_DIR [SHARED_DATA]}
shared=${2:-../shared/data}
root=${REGIME_WORK:-$main-regime}
tw=${TRAITWATCH:-.venv/bin/traitwatch}

grid() {
  local name=$1; shift
  local work=$root/$name
  mkdir -p "$work"
  [ -f "$work/costs.json" ] || cp "$main/costs.json" "$work/"
  [ -d "$work/semantic_basis" ] || cp -r "$main/semantic_basis" "$work/"
  "$tw" bench --work-dir "$work" --results "benchmarks/em_small/regime/$name" --basis "$main/basis" \
    --shared-data "$shared" --seeds 2 --calibration insecure_code --heldout arithmetic --threads 2 "$@"
}

grid long150 --steps 150 --every 50
grid rank64 --steps 30 --every 15 --lora-r 64 --lora-alpha 128
