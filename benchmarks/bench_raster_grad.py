"""Rasterizer forward + backward, the inner step of fitting, side by side with another checkout.

Scene: a real mesh (default ``trimesh-models/Duck.glb`` of the shared data) converted by
``mesh_to_gaussians`` to N surface Gaussians (the start of a fit), rendered from one
:func:`~clip_gs.render.orbit_cameras` view at S x S px; the loss is ``rgb.sum() + alpha.sum()``
and its backward reaches means, quats, scales, opacities and colours. The scene is built once
by this checkout and saved, so every worker renders the same tensors.

Each row runs in a fresh subprocess with ``PYTHONPATH`` set to the ``src`` folder of the
checkout under test (``--baseline SRC`` adds a second checkout, e.g. a ``git worktree`` of
57e1b1b: ``git worktree add /tmp/base57 57e1b1b``); the backend is each checkout's default for
CPU tensors (``backend="auto"``) unless ``--backends`` names some. Time: the best of
``--repeats`` forward and backward passes after two warm-ups (numba compiles on the first).

Usage::

    python benchmarks/bench_raster_grad.py --baseline /tmp/base57/src
    python benchmarks/bench_raster_grad.py --backends numba torch --sizes 2000 10000 --pixels 64 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MESH = HERE.parent.parent / "shared" / "data" / "real" / "trimesh-models" / "Duck.glb"


def build_scene(mesh: Path, num_gaussians: int, path: Path) -> None:
    import torch

    from clip_gs.gaussians.mesh import mesh_to_gaussians

    cloud = mesh_to_gaussians(mesh, num_gaussians=num_gaussians, seed=0)
    tensors = {"means": cloud.means, "quats": cloud.rotations, "scales": cloud.scales,
               "opacities": cloud.opacity, "colors": cloud.sh}  # fmt: skip
    torch.save({k: v.contiguous() for k, v in tensors.items()}, path)


def measure(scene: Path, pixels: int, backend: str, repeats: int, threads: int) -> dict:
    import torch

    from clip_gs.render import orbit_cameras, rasterize

    torch.set_num_threads(threads)
    tensors = torch.load(scene, weights_only=True)
    cams = orbit_cameras(1, width=pixels, height=pixels)
    forward, backward = [], []
    for step in range(repeats + 2):
        params = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
        start = time.perf_counter()
        out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
                        cams.viewmats, cams.Ks, pixels, pixels, backend=backend)  # fmt: skip
        middle = time.perf_counter()
        (out.rgb.sum() + out.alpha.sum()).backward()
        end = time.perf_counter()
        if step >= 2:
            forward.append(middle - start)
            backward.append(end - middle)
    return {"forward_ms": 1e3 * min(forward), "backward_ms": 1e3 * min(backward),
            "mean_alpha": float(out.alpha.mean())}  # fmt: skip


def _worker(src: Path, scene: Path, pixels: int, backend: str, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(scene), "--pixels", str(pixels), "--backends", backend,
           "--repeats", str(repeats), "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src)}
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"worker ({src}, {backend}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000], help="numbers of Gaussians")
    parser.add_argument("--pixels", type=int, nargs="+", default=[64, 128], help="image sides")
    parser.add_argument("--baseline", type=Path, help="src folder of the checkout to compare with")
    parser.add_argument("--backends", nargs="+", default=["auto"], help="backends of this checkout")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.pixels[0], args.backends[0], args.repeats, args.threads)))
        return
    import platform

    import torch

    print(f"{platform.processor() or platform.machine()}; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads; scene {args.mesh.name}")  # fmt: skip
    here = HERE.parent / "src"
    runs = [(here, backend, f"this checkout ({backend})") for backend in args.backends]
    if args.baseline:
        runs.insert(0, (args.baseline, "auto", f"baseline {args.baseline} (auto)"))
    header = f"{'N':>7} {'px':>4}  {'checkout':<44} {'fwd ms':>8} {'bwd ms':>8} {'total':>8} {'x base':>7}"
    print(header + "\n" + "-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            scene = Path(tmp) / f"scene_{n}.pt"
            build_scene(args.mesh, n, scene)
            for pixels in args.pixels:
                base = None
                for src, backend, label in runs:
                    row = _worker(src, scene, pixels, backend, args.repeats, args.threads)
                    total = row["forward_ms"] + row["backward_ms"]
                    base = total if base is None else base
                    print(f"{n:>7,} {pixels:>4}  {label:<44} {row['forward_ms']:>8.1f} {row['backward_ms']:>8.1f} "
                          f"{total:>8.1f} {base / total:>6.1f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
