#!/usr/bin/env bash
# pruning=auto's levers, one run per setting, all started at once (README, "Budgeted pruning"): retraining by
# fine-tuning (the paper recipes') or by learning-rate rewinding, 5 or 10 epochs, and the layer budget. Decisions
# read val_top1 only. On one GPU the runs share it; on a CPU run one at a time (JOBS=1).
# Usage: DEVICE=cuda JOBS=16 bash scripts/auto_sweep.sh [OUT_DIR] [extra overrides...]
set -u
out=${1:-outputs/auto_sweep}
shift || true
mkdir -p "$out"
run="python -m pruning_cli.cli dataset=fashion_mnist device=${DEVICE:-auto} pruning.iterations=40 $*"
rewind300="retrain.lr=0.1 retrain.weight_decay=1e-3"
rewind5="retrain.lr=0.05 retrain.weight_decay=5e-4"
{
  for budget in 0.5 1 2; do
    echo "l300_lb${budget}_ft experiment=lenet300_paper pruning=auto pruning.kept=null pruning.layer_budget=$budget"
    echo "l300_lb${budget}_ft10 experiment=lenet300_paper pruning=auto pruning.kept=null pruning.layer_budget=$budget retrain.epochs=10"
    echo "l300_lb${budget}_rw experiment=lenet300_paper pruning=auto pruning.kept=null pruning.layer_budget=$budget $rewind300"
    echo "l300_lb${budget}_rw10 experiment=lenet300_paper pruning=auto pruning.kept=null pruning.layer_budget=$budget $rewind300 retrain.epochs=10"
  done
  for budget in 1 2; do
    echo "l5_lb${budget}_ft experiment=lenet5_paper pruning=auto pruning.kept=null pruning.layer_budget=$budget"
    echo "l5_lb${budget}_rw experiment=lenet5_paper pruning=auto pruning.kept=null pruning.layer_budget=$budget $rewind5"
  done
} | xargs -P "${JOBS:-1}" -L 1 bash -c "$run \${@:1} hydra.run.dir=$out/\$0 > $out/\$0.out 2>&1; echo \"\$0 exit \$?\""
