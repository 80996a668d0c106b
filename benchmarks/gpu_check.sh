#!/usr/bin/env bash
# The GPU check, in one command for a lent machine (device tool), under 10 minutes:
#   1. install the package over the image's CUDA torch (wheels carried in .whl/, see gpu_wheels.sh);
#   2. the CUDA-marked tests: SDPA, flash-attn and flex backends in bf16/fp16 against the dense
#      reference (outputs and gradients), backend="auto" choosing flex without flash-attn, H2O
#      generation equal to DynamicCache (tests/test_cuda.py);
#   3. the benchmarks with --device cuda: SF-Attn through grouped SDPA, flex (and flash-attn when
#      installed) vs full causal SDPA -- which backend "auto" should prefer --, a whole LoRA+
#      training step, H2O prefill and H2O decoding.
# Results go to ${OUT:-benchmarks/results/gpu} (JSON + PNG + logs); the card is in nvidia-smi.txt.
#
#   device run: bash benchmarks/gpu_check.sh          (carry: [".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python=${PYTHON:-python3}
if [ -d .whl ]; then
  "$python" -m pip install -q --no-index --find-links .whl --no-deps .whl/*.whl > "$out/install.log" 2>&1
fi
"$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$out/install.log" 2>&1
"$python" -c "import torch, transformers, hf_sinklora; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())" \
  | tee "$out/versions.txt"

status=0
# timeouts are caps that keep the whole script under 10 minutes (a capped benchmark loses its JSON)
timeout 200 "$python" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.log" || status=1
timeout 150 "$python" benchmarks/bench_attention.py --device cuda --lengths 4096 8192 16384 32768 \
  --output-dir "$out" > "$out/bench_attention.log" 2>&1 || status=1
timeout 80 "$python" benchmarks/bench_training_step.py --device cuda \
  --output-dir "$out" > "$out/bench_training_step.log" 2>&1 || status=1
timeout 60 "$python" benchmarks/bench_h2o_prefill.py --device cuda --lengths 8192 16384 \
  --output-dir "$out" > "$out/bench_h2o_prefill.log" 2>&1 || status=1
timeout 70 "$python" benchmarks/bench_h2o.py --device cuda --lengths 8192 16384 32768 \
  --output-dir "$out" > "$out/bench_h2o.log" 2>&1 || status=1
tail -3 "$out"/bench_*.log
exit $status
