#!/usr/bin/env bash
# The CUDA path end to end and GPU throughput (docs/results.md, "GPU"): the project's pinned versions installed
# first (where a package index is reachable), AlexNet in fp32, bf16 and bf16 with torch.compile, VGG-16 in bf16,
# AlexNet with 2:4 masks, on generated images; then the export, the masked-training benchmark, the 2:4 export run
# on the sparse tensor cores, dense against 2:4 per fc layer and batch, the on-device JPEG decoding benchmark, and
# the test suite on the GPU (device=auto picks it).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (logs in OUT_DIR, default outputs/gpu_check; needs a CUDA GPU;
# SKIP_TESTS=1 leaves the test suite out)
set -u
out=${1:-outputs/gpu_check}
mkdir -p "$out"
python -m pip install --quiet -c constraints.txt -e ".[dev]" >"$out/install.log" 2>&1 ||
  echo "== install: failed (no package index?), running with what is installed; see $out/install.log"
python -c "import torch, torchvision; print('== torch', torch.__version__, 'torchvision', torchvision.__version__)"
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
step alexnet_2_4 $run experiment=alexnet_paper $images pruning.pattern=2:4 train.precision=bf16 retrain.precision=bf16 \
  hydra.run.dir="$out/a24"
step export_2_4 python -m pruning_cli.sparse.cli "$out/a24" --format semi_structured
step run_2_4 python -c "
import sys, torch
from pruning_cli.sparse.export import model_from_state
from pruning_cli.sparse.semi_structured import load_semi_structured, semi_structured_model, semi_structured_state
payload = load_semi_structured(sys.argv[1])
sparse = semi_structured_model(payload, 'cuda')
dense = model_from_state(payload['model'], semi_structured_state(payload)).to('cuda', torch.float16)
images = torch.randn(64, 3, 224, 224, device='cuda', dtype=torch.float16)
with torch.inference_mode():
    print('2:4 layers', list(payload['layers']), 'max abs diff', (sparse(images) - dense(images)).abs().max().item())
" "$out/a24/model_semi_structured.pt"
step bench_sparse python scripts/bench_sparse.py --device cuda --timing-only --repeats 50
step decode python scripts/bench_input.py --device cuda --images 512 --rounds 3 --batch-size 128
[[ ${SKIP_TESTS:-0} == 1 ]] || step tests python -m pytest -q
