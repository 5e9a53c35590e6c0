#!/usr/bin/env bash
# The CUDA path end to end and GPU throughput (docs/results.md, "GPU"): AlexNet in fp32, bf16 and bf16 with
# torch.compile, VGG-16 in bf16, on generated images, then the export and the masked-training benchmark.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (logs in OUT_DIR, default outputs/gpu_check; needs a CUDA GPU)
set -u
out=${1:-outputs/gpu_check}
mkdir -p "$out"
run="python -m pruning_cli.cli"
images="dataset=synthetic_imagenet dataset.num_train=1024 dataset.num_test=256 dataset.eval_batch_size=128
  model.weights=null device=cuda train.epochs=2 retrain.epochs=1 pruning.iterations=2 train.batch_size=64
  retrain.batch_size=64"
step() {
  local name=$1 start=$SECONDS
  shift
  "$@" >"$out/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - start)) s"
  tail -n 4 "$out/$name.log"
}
step alexnet_fp32 $run experiment=alexnet_paper $images train.precision=fp32 retrain.precision=fp32 hydra.run.dir="$out/a32"
step alexnet_bf16 $run experiment=alexnet_paper $images train.precision=bf16 retrain.precision=bf16 hydra.run.dir="$out/a16"
step alexnet_bf16_compile $run experiment=alexnet_paper $images train.precision=bf16 retrain.precision=bf16 \
  compile=true hydra.run.dir="$out/a16c"
step vgg16_bf16 $run experiment=vgg16_paper $images train.precision=bf16 retrain.precision=bf16 hydra.run.dir="$out/v16"
step export python -m pruning_cli.sparse.cli "$out/a16" --format all
step bench_masked python scripts/bench_masked_training.py --device cuda --precision bf16 --batch-size 128 --steps 20 \
  --rounds 3
