#!/usr/bin/env bash
# One-GPU check of the CUDA path in <= 10 minutes (see bench/gpu_check.py): the smoke pipeline on
# CUDA, with vLLM generating the simulator's messages when `vllm` is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
exec .venv/bin/python bench/gpu_check.py "$@"
