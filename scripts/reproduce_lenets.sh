#!/usr/bin/env bash
# Table 1's LeNet rows end to end on Fashion-MNIST: for LeNet-300-100 and LeNet-5, the paper recipe (train, then
# iterative prune -> retrain to the paper's per-layer kept fractions) and a layer sensitivity analysis (Fig. 6) on a
# held-out validation split, then prune-report's tables and plots. About 12 minutes on 2 CPU cores.
#
#   scripts/reproduce_lenets.sh [OUT_DIR] [extra prune-run overrides, e.g. device=cuda seed=1]
#
# Writes OUT_DIR/<model>/pruned, OUT_DIR/<model>/sensitivity and OUT_DIR/report (table1.md, layers_*.md, *.png).
set -euo pipefail
out=${1:-outputs/reproduce_lenets}
shift || true

for model in lenet300 lenet5; do
    prune-run experiment="${model}_paper" dataset=fashion_mnist "$@" hydra.run.dir="$out/$model/pruned"
    # The recipe's dense training, on 55,000 training images: the other 5,000 are the analysis's validation split.
    prune-run experiment="${model}_paper" task=sensitivity dataset=fashion_mnist "$@" \
        hydra.run.dir="$out/$model/sensitivity"
done
prune-report "$out" --out "$out/report"
