#!/usr/bin/env bash
# The GPU check of clip-gs, one command for a bare, offline H200 (the device machine), about 570 s:
#
#   bash benchmarks/gpu_check.sh [OUT] [--dry-run] [--wheels DIR] [--inputs DIR]
#
# Run from anywhere (paths are the checkout's). OUT (default ./gpu-check, must be empty or new) gets at
# most five files: preflight.json, results.jsonl (one line per step: step, status, seconds, numbers,
# reason; each line is also printed), logs.tar.gz (rebuilt after every step) and, when small enough,
# the compiled gsplat_cuda.so. Steps, timeouts, the deadline and every rule: benchmarks/gpu_check.py.
#
# What travels beside the tree (both git-ignored; carry them):
#   .gpu-wheels/  the wheels the image lacks:        python benchmarks/gpu_bundle.py
#   .gpu-inputs/  the paper fit's views + reference:  python benchmarks/gpu_inputs.py MESH
# .gpu-cache/ (compiled extensions) stays on a warm machine between runs; carry it only if it exists here.
#
# The interpreter is the image's python3 (CLIP_GS_GPU_PYTHON overrides it): no virtual environment,
# no network; the bundle goes in with pip install --no-index --no-deps --target.
# --dry-run rehearses the whole sequence on a CPU machine: the bundle into a temporary target, the
# preflight, and every CUDA step skipped with its reason.
set -euo pipefail
exec "${CLIP_GS_GPU_PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
