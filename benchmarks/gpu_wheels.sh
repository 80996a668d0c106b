#!/usr/bin/env bash
# Run HERE (with the registries), before benchmarks/gpu_check.sh runs on a lent GPU machine: the
# GPU image has torch (CUDA) but older transformers and no trl/datasets, and reaches nothing.
# Downloads the wheels the package needs beyond that image, for its Python 3.12, into .whl/
# (git-ignored; pass it to the device tool's `carry`). torch itself is never downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
  "transformers>=5.24,<6" "peft>=0.18" "trl>=1.10" "datasets>=4.7" "accelerate>=1.4" "huggingface_hub>=1.31" \
  "tokenizers>=0.23.1" dill multiprocess xxhash "fsspec>=2023.1" hf-xet httpx2 httpcore2 truststore typer
du -sh .whl
