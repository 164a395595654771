"""Fitted Gaussians: time and held-out quality of :func:`clip_gs.data.fitted.fit_mesh` on shared real meshes.

For each mesh: Blender (Cycles) renders ``--views`` training views and 4 held-out views at
``--size`` px (timed: "render s"), the fit starts from half the cap of surface samples and runs
``--iterations`` (timed: "fit s"), and PSNR / SSIM are measured on the 4 held-out views over
white (torchmetrics). Rows print as Markdown, ready for the README.

Usage::

    python benchmarks/bench_fit.py                                 # the README's CPU table
    python benchmarks/bench_fit.py --iterations 5000 --size 512 --device cuda   # the paper's schedule
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real"
DEFAULT_MESHES = ("trimesh-models/Duck.glb", "kaolin-samples/avocado.gltf", "trimesh-models/fuze.obj",
                  "kaolin-samples/armchair.obj")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("meshes", nargs="*", type=Path, help=f"default: {', '.join(DEFAULT_MESHES)} under {REAL}")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--max-gaussians", type=int, default=10_000)
    parser.add_argument("--sh-degree", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from clip_gs.data.fitted import init_from_mesh, render_mesh_views
    from clip_gs.fitting import FitConfig, fit_gaussians

    torch.set_num_threads(args.threads)
    meshes = args.meshes or [REAL / m for m in DEFAULT_MESHES]
    print(f"{platform.processor() or platform.machine()}; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, device {args.device}")  # fmt: skip
    print("| mesh | iterations | size | views | Gaussians | render s | fit s | PSNR dB | SSIM |")
    print("|---|---|---|---|---|---|---|---|---|")
    config = FitConfig(iterations=args.iterations, sh_degree=args.sh_degree, max_gaussians=args.max_gaussians)
    for mesh in meshes:
        start = time.perf_counter()
        train, test, world = render_mesh_views(mesh, args.views, 4, args.size)
        rendered = time.perf_counter() - start
        init = init_from_mesh(mesh, args.max_gaussians // 2, world)
        result = fit_gaussians(train, init, config, held_out=test, device=args.device)
        print(f"| {mesh.name} | {args.iterations} | {args.size} | {args.views} | {result.cloud.num_gaussians:,} | "
              f"{rendered:.1f} | {result.seconds:.1f} | {result.psnr:.2f} | {result.ssim:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
