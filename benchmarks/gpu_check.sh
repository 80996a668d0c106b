#!/usr/bin/env bash
# The GPU check, in one command for a lent machine (device tool), under 10 minutes:
#   1. the package and the wheels carried in .whl/ (see gpu_wheels.sh) on the image's CUDA torch;
#   2. the CUDA-marked tests: SDPA, flash-attn and flex backends in bf16/fp16 against the dense
#      reference (outputs and gradients), backend="auto" taking grouped SDPA without flash-attn, H2O
#      generation equal to DynamicCache, H2O's log-sum-exp scores (fused attention + the Triton
#      key-mass kernel) against float64 eager attention (tests/test_cuda.py);
#   3. H2O prefill against SDPA (one-shot and chunked, and SDPA chunked alike), on the small model of
#      the earlier runs and on a Llama-3-8B-shaped slice (4 layers, hidden 4096, 32 / 8 heads);
#   4. the whole LoRA+ training step at real sizes (SmolLM2-135M's 30 layers, the 8B slice), bf16,
#      SF-Attn against SDPA at 16k and 32k;
#   5. summary.json: the headline ratios (gpu_summary.py).
# Named steps not run by default: bench_attention (attention alone), bench_training_step (the 2-layer
# toy shapes), bench_h2o (decoding), measured in runs 1-2 (docs/results.md); profile_gpu (kernel tables
# of the H2O prefill and the SmolLM2-shape training step).
# Results (JSON + PNG + logs; the card in nvidia-smi.txt) go to $GPU_RESULTS (default
# benchmarks/results/gpu). Under the device tool, which returns at most 8 files from $OUT, they are
# packed into $OUT/gpu_results.tar.gz after every step, so a step stopped by its cap loses nothing
# that finished before it; the benchmarks themselves rewrite their JSON after every length.
#
#   device run: bash benchmarks/gpu_check.sh          (carry: [".whl"])
#   a subset:   bash benchmarks/gpu_check.sh cuda_tests bench_attention   (ATTENTION_LENGTHS="16384 32768",
#               TRAINING_LENGTHS="8192 16384", REAL_LENGTHS="16384 32768" set the lengths)
set -uo pipefail
cd "$(dirname "$0")/.."
results=${GPU_RESULTS:-benchmarks/results/gpu}
mkdir -p "$results"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

pack() {
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu_results.tar.gz" -C "$(dirname "$results")" "$(basename "$results")"; fi
}

nvidia-smi > "$results/nvidia-smi.txt" 2>&1
if [ -d .whl ]; then  # into a side folder that shadows the image's older versions, as the tool's notes advise
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$results/install.log" 2>&1 || { echo "wheel install failed"; cat "$results/install.log"; pack; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import torch, transformers, peft, hf_sinklora; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$results/versions.txt"
pack

status=0
wanted=("$@")
step() {  # step NAME CAP_SECONDS COMMAND...: runs one capped step, logs it, packs the results
  local name=$1 cap=$2
  shift 2
  if [ ${#wanted[@]} -gt 0 ] && [[ " ${wanted[*]} " != *" $name "* ]]; then return; fi
  local started=$SECONDS
  timeout "$cap" "$@" > "$results/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -ne 0 ]; then status=1; echo "$name: exit $rc$([ "$rc" -eq 124 ] && echo ", stopped by its ${cap} s cap")"; fi
  echo "$name: $((SECONDS - started)) s"
  tail -4 "$results/$name.log"
  pack
}
named_step() {  # as step, but only when asked for by name
  if [[ " ${wanted[*]:-} " == *" $1 "* ]]; then step "$@"; fi
}

per_test_cap=()
if "$python" -c "import pytest_timeout" 2>/dev/null; then per_test_cap=(--timeout 60); fi
real_lengths=${REAL_LENGTHS:-16384 32768}
# caps keep the whole script under 10 minutes
step cuda_tests 130 "$python" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -rfEs "${per_test_cap[@]}"
# shellcheck disable=SC2086  # the lengths are meant to split
step bench_h2o_prefill 60 "$python" benchmarks/bench_h2o_prefill.py --device cuda --lengths 8192 $real_lengths \
  --output-dir "$results"
# shellcheck disable=SC2086
step bench_h2o_prefill_8b_slice 90 "$python" benchmarks/bench_h2o_prefill.py --device cuda --shape llama3-8b-slice \
  --lengths $real_lengths --output-dir "$results"
# shellcheck disable=SC2086
step bench_training_step_real 200 "$python" benchmarks/bench_training_step.py --device cuda --shapes real \
  --lengths $real_lengths --output-dir "$results"
step summary 30 "$python" benchmarks/gpu_summary.py "$results"
# shellcheck disable=SC2086
named_step bench_attention 170 "$python" benchmarks/bench_attention.py --device cuda --lengths ${ATTENTION_LENGTHS:-8192 16384 32768} \
  --timeout 60 --output-dir "$results"
# shellcheck disable=SC2086
named_step bench_training_step 110 "$python" benchmarks/bench_training_step.py --device cuda --extra-backends flex \
  --lengths ${TRAINING_LENGTHS:-4096 8192 16384} --output-dir "$results"
named_step profile_gpu 90 "$python" benchmarks/profile_gpu.py --output-dir "$results"
named_step bench_h2o 50 "$python" benchmarks/bench_h2o.py --device cuda --lengths 8192 16384 --output-dir "$results"
echo "total: $SECONDS s"
pack
exit $status
