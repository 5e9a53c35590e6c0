#!/usr/bin/env bash
# The pruning-method study (docs/results.md, "Pruning methods side by side"), on Fashion-MNIST: the paper's rule
# (its per-layer fractions scaled to each target, scripts/paper_kept.py), global magnitude, LAMP and gradual
# magnitude pruning, at 12x, 24x and 48x on LeNet-300-100 and at 48x on LeNet-5, then the best of them at 48x (by
# mean validation top-1) with distillation from the dense model. One dense model per network and seed, shared by
# every method (a paired comparison); every method then gets the same retraining budget and the budgeted presets'
# learning-rate rewinding:
#   LeNet-300-100: 20 dense epochs; 5 iterations x 6 epochs (gradual: one 30-epoch phase, pruning until epoch 20)
#   LeNet-5:       15 dense epochs; 4 iterations x 5 epochs (gradual: one 20-epoch phase, pruning until epoch 13)
# Runs one job at a time; a run whose model.pt exists is skipped, so the script can be started again after a stop.
# Usage: bash scripts/compare_methods.sh [OUT_DIR]   (default outputs/study; SEEDS="0 1 2", TARGETS="12 24 48")
set -euo pipefail
out=${1:-outputs/study}
read -r -a seeds <<<"${SEEDS:-0 1 2}"
read -r -a targets <<<"${TARGETS:-12 24 48}"
mkdir -p "$out"
start=$SECONDS

prune() {  # dir, overrides...: one prune-run into dir unless it finished before
  local dir=$1
  shift
  [[ -f $dir/model.pt ]] && return 0
  mkdir -p "$(dirname "$dir")"
  echo "$(date +%T) $dir"
  python -m pruning_cli.cli dataset=fashion_mnist dataset.val_split=5000 "$@" "hydra.run.dir=$dir" >"$dir.out" 2>&1 ||
    { echo "failed: $dir (see $dir.out)"; return 1; }
}

study() {  # net, target, method, overrides...: the method at the target on every seed, from the shared dense models
  local net=$1 target=$2 method=$3
  shift 3
  local iterative=() gradual=() rewind=()
  case $net in
    lenet300) iterative=(pruning.iterations=5 retrain.epochs=6) gradual=(retrain.epochs=30 pruning.end=20)
      rewind=(retrain.lr=0.1 retrain.weight_decay=1e-3) ;;
    lenet5) iterative=(pruning.iterations=4 retrain.epochs=5) gradual=(retrain.epochs=20 pruning.end=13)
      rewind=(retrain.lr=0.05 retrain.weight_decay=5e-4) ;;
  esac
  local settings=()
  case $method in
    paper*) settings=(pruning=iterative "pruning.kept=$(python scripts/paper_kept.py "$net" "$target")" "${iterative[@]}") ;;
    global* | lamp*) settings=("pruning=${method%%_*}" "pruning.target=$target" "${iterative[@]}") ;;
    gradual*) settings=(pruning=gradual "pruning.target=$target" "${gradual[@]}") ;;
  esac
  for seed in "${seeds[@]}"; do
    local dense=$out/dense/$net/seed_$seed
    prune "$dense" "experiment=${net}_training" pruning.iterations=0 "seed=$seed"
    prune "$out/$net/$method/x$target/seed_$seed" "experiment=${net}_training" "${rewind[@]}" "${settings[@]}" \
      "train.checkpoint=$dense/model.pt" "seed=$seed" "$@"
  done
}

best_at() {  # net, target: the method with the highest mean validation top-1 at the target (never the test set)
  python - "$out/$1" "x$2" <<'PY'
import sys
from pathlib import Path
import pandas as pd
root, target = Path(sys.argv[1]), sys.argv[2]
scores = {
    method.name: pd.Series([pd.read_csv(run / "metrics.csv").val_top1.iloc[-1] for run in (method / target).glob("seed_*") if run.is_dir()]).mean()
    for method in root.iterdir() if (method / target).is_dir() and "_distill" not in method.name
}
print(max(scores, key=scores.get))
PY
}

for target in "${targets[@]}"; do
  for method in paper global lamp gradual; do study lenet300 "$target" "$method"; done
done
for method in paper global lamp gradual; do study lenet5 48 "$method"; done
for net in lenet300 lenet5; do
  best=$(best_at "$net" 48)
  echo "best at 48x on $net (validation): $best"
  study "$net" 48 "${best}_distill" retrain.distill.weight=0.5 retrain.distill.temperature=4
done
python -m pruning_cli.report.cli "$out/lenet300" "$out/lenet5" --out "$out/report"
echo "wall time: $(((SECONDS - start) / 60)) min $(((SECONDS - start) % 60)) s"
