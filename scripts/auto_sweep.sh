#!/usr/bin/env bash
# pruning=auto's levers, one run per setting (README, "Budgeted pruning"): retraining by fine-tuning (the paper
# recipes') or by learning-rate rewinding (the dense phase's rate and weight decay), 5 or 10 epochs, and the layer
# budget, on Fashion-MNIST. Decisions read val_top1 only. JOBS runs at once (on one GPU they share it; on a CPU keep
# JOBS=1). Extra arguments are overrides for every run (e.g. seed=1).
# Usage: DEVICE=cuda JOBS=16 bash scripts/auto_sweep.sh OUT_DIR [overrides...]
set -u
out=${1:?usage: scripts/auto_sweep.sh OUT_DIR [overrides...]}
shift
mkdir -p "$out"
common=(dataset=fashion_mnist "device=${DEVICE:-auto}" pruning=auto pruning.iterations=40 "$@")
rewind300=(retrain.lr=0.1 retrain.weight_decay=1e-3)
rewind5=(retrain.lr=0.05 retrain.weight_decay=5e-4)

sweep() {  # name, overrides...: one run into OUT_DIR/name, its output in OUT_DIR/name.out; exits with its status
  local name=$1
  shift
  python -m pruning_cli.cli "${common[@]}" "$@" "hydra.run.dir=$out/$name" >"$out/$name.out" 2>&1
  local status=$?
  echo "$name: exit $status"
  return "$status"
}

failed=0
pids=()
launch() {
  sweep "$@" &
  pids+=($!)
  if ((${#pids[@]} >= ${JOBS:-1})); then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
}
for budget in 0.5 1 2; do
  lenet300=(experiment=lenet300_training "pruning.layer_budget=$budget")
  launch "l300_lb${budget}_ft" "${lenet300[@]}"
  launch "l300_lb${budget}_ft10" "${lenet300[@]}" retrain.epochs=10
  launch "l300_lb${budget}_rw" "${lenet300[@]}" "${rewind300[@]}"
  launch "l300_lb${budget}_rw10" "${lenet300[@]}" "${rewind300[@]}" retrain.epochs=10
done
for budget in 1 2; do
  lenet5=(experiment=lenet5_training "pruning.layer_budget=$budget")
  launch "l5_lb${budget}_ft" "${lenet5[@]}"
  launch "l5_lb${budget}_rw" "${lenet5[@]}" "${rewind5[@]}"
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
