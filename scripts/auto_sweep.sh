#!/usr/bin/env bash
# The budgeted presets on Fashion-MNIST, one run per network and seed (docs/results.md, "Budgeted pruning"):
# experiment=<net>_auto for NETS (default "lenet300 lenet5") and SEEDS (default "0 1 2"). Extra arguments are
# overrides for every run: a lever is measured by running the script again into another OUT_DIR with them (e.g.
# pruning.ratio=1.5). JOBS runs at once (on one GPU they share it; on a CPU keep JOBS=1). A run whose model.pt
# exists is skipped, so the script can be started again after a stop. Then: prune-report OUT_DIR.
# Usage: [DEVICE=cuda JOBS=8] bash scripts/auto_sweep.sh OUT_DIR [overrides...]
set -u
out=${1:?usage: scripts/auto_sweep.sh OUT_DIR [overrides...]}
shift
mkdir -p "$out"
read -r -a nets <<<"${NETS:-lenet300 lenet5}"
read -r -a seeds <<<"${SEEDS:-0 1 2}"

run() {  # net, seed: one run into OUT_DIR/net/seed_S, its output beside it; exits with its status
  local dir=$out/$1/seed_$2
  [[ -f $dir/model.pt ]] && return 0
  mkdir -p "$out/$1"
  python -m pruning_cli.cli "experiment=$1_auto" dataset=fashion_mnist "seed=$2" "device=${DEVICE:-auto}" "${@:3}" \
    "hydra.run.dir=$dir" >"$dir.out" 2>&1
  local status=$?
  echo "$(date +%T) $dir: exit $status"
  return "$status"
}

failed=0
pids=()
for net in "${nets[@]}"; do
  for seed in "${seeds[@]}"; do
    run "$net" "$seed" "$@" &
    pids+=($!)
    if ((${#pids[@]} >= ${JOBS:-1})); then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
    fi
  done
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
