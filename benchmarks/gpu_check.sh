#!/usr/bin/env bash
# The GPU checks, in one script sized for a short lease (about 12 minutes on one H200; the first
# step compiles gsplat's CUDA kernels, which PyPI's gsplat does on first use, typically 3-6 min).
# Run from the repository root on a CUDA machine:   bash benchmarks/gpu_check.sh [OUT_DIR]
# Everything it measures goes to OUT_DIR (default ./gpu-check), one log per step; a failed step is
# reported and the script goes on, so one lease gives every answer it can.
#   1. the CUDA tests: gsplat against the CPU rasterizer, GPU paths of the model (pytest -m "not slow" -k cuda)
#   2. the paper's fit: 5,000 iterations at SH 0, 512 px, 36 views of a real mesh, on CUDA (goal: <= 30 s, >= 33 dB)
#   3. bf16 training on CUDA: clip-gs fit of the quick-start config on 200 synthetic objects, bf16-mixed
#   4. prepare on CUDA (teacher and gsplat rendering): objects/s of 1 and 2 workers, bf16 teacher, and
#      the same dataset twice on the same device (determinism)
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
mesh=${CLIP_GS_GPU_MESH:-../shared/data/real/trimesh-models/Duck.glb}
status=0
step() {  # step NAME COMMAND...: run, log, time; never stop the script
  local name=$1; shift
  local start=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then echo "ok   $name ($((SECONDS - start)) s)"; else echo "FAIL $name ($((SECONDS - start)) s): see $out/$name.log"; status=1; fi
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
step install pip install -e ".[test,cuda]"
step gsplat-compile python -c "import torch, gsplat; from clip_gs.render import orbit_cameras, rasterize; c = orbit_cameras(1, width=32, height=32); n = 64; print(rasterize(torch.randn(n, 3, device='cuda') * 0.3, torch.randn(n, 4, device='cuda'), torch.full((n, 3), 0.05, device='cuda'), torch.full((n,), 0.5, device='cuda'), torch.rand(n, 3, device='cuda'), c.viewmats.cuda(), c.Ks.cuda(), 32, 32).alpha.mean())"
step cuda-tests python -m pytest -q tests/test_render.py tests/test_model.py tests/test_fitting.py -k "cuda or gsplat" -p no:cacheprovider
step paper-fit python benchmarks/bench_fit.py "$mesh" --iterations 5000 --size 512 --views 36 --device cuda
step bf16-fit clip-gs fit --config examples/configs/quickstart.yaml --data.root synthetic:200 \
  --trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed --trainer.max_steps 50 \
  --trainer.default_root_dir "$out/run"
step prepare-cuda python benchmarks/bench_prepare.py --workers 1 2 --objects 400 --views 8 --device cuda
step prepare-bf16 bash -c "clip-gs prepare synthetic:64 --out $out/p1 --teacher synthetic-clip --device cuda \
  --precision bf16 --quiet && clip-gs prepare synthetic:64 --out $out/p2 --teacher synthetic-clip --device cuda \
  --precision bf16 --quiet && diff -r --exclude=.work $out/p1 $out/p2 && echo identical"
exit $status
