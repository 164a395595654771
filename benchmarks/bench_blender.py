"""Blender in ``prepare``: what the resident process saves, and how many Cycles samples a fit needs.

``launch`` mode (the default) renders ``--objects`` meshes of ``--views`` views at ``--size`` px twice:
with a new Blender process per object (how a renderer without a resident process works: start,
``import bpy``, the scene, then the object) and with one resident process
(:class:`~clip_gs.render.blender.BlenderRenderer`). It prints the launch, import and per-view seconds
and the whole time of each way.

``samples`` mode chooses the sample count by measurement: for each count in ``--samples``, every mesh
is rendered at that count (``--views`` training views at ``--size`` px, as ``prepare`` renders them),
fitted for ``--iterations`` (seed 0), and scored by PSNR on held-out views rendered at 64 samples (the
reference, not the count under test). The answer is the fewest samples whose mean held-out PSNR is
within ``--tolerance`` dB (0.3) of 64 samples', with the render time each count costs.

Run: ``python benchmarks/bench_blender.py [--objects 4 --views 36 --size 128]`` or
``python benchmarks/bench_blender.py --mode samples [--samples 8 16 32 64 --iterations 1000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def meshes(folder: Path, count: int) -> list[Path]:
    import trimesh

    makers = (trimesh.creation.box, lambda: trimesh.creation.icosphere(subdivisions=3),
              lambda: trimesh.creation.cylinder(radius=0.4, height=1.2, sections=48),
              lambda: trimesh.creation.capsule(height=0.8, radius=0.35))  # fmt: skip
    paths = []
    for i in range(count):
        mesh = makers[i % len(makers)]()
        colors = (mesh.vertices - mesh.vertices.min(0)) / (np.ptp(mesh.vertices, axis=0) + 1e-9)  # a gradient to fit
        mesh.visual.vertex_colors = (colors * 200 + 40).astype("uint8")
        paths.append(folder / f"object{i}.glb")
        mesh.export(paths[-1])
    return paths


def launch_mode(args, paths: list[Path]) -> None:
    from clip_gs.gaussians.mesh import mesh_unit_transform
    from clip_gs.render.blender import BlenderRenderer
    from clip_gs.render.cameras import sphere_cameras

    cameras = sphere_cameras(args.views, width=args.size, height=args.size)
    worlds = [mesh_unit_transform(p) for p in paths]
    fresh = {"launch": 0.0, "import": 0.0, "render": 0.0}
    start = time.perf_counter()
    for path, world in zip(paths, worlds):
        with BlenderRenderer() as renderer:
            renderer.render(path, cameras, world, samples=args.render_samples, threads=args.threads)
            fresh["launch"] += renderer.launch_s
            fresh["import"] += renderer.last["import_s"]
            fresh["render"] += renderer.last["render_s"]
    fresh_total = time.perf_counter() - start
    resident = {"launch": 0.0, "import": 0.0, "render": 0.0}
    start = time.perf_counter()
    with BlenderRenderer() as renderer:
        for path, world in zip(paths, worlds):
            renderer.render(path, cameras, world, samples=args.render_samples, threads=args.threads)
            resident["import"] += renderer.last["import_s"]
            resident["render"] += renderer.last["render_s"]
        resident["launch"] = renderer.launch_s
    resident_total = time.perf_counter() - start
    n, views = len(paths), len(paths) * args.views
    print(f"{n} objects x {args.views} views at {args.size} px, {args.render_samples} samples, {args.threads} thread(s)")
    print("| Blender | starts | launch s (all) | import s / object | render s / view | total s | s / object |")
    print("|---|---|---|---|---|---|---|")
    for name, row, total, starts in (("a process per object", fresh, fresh_total, n),
                                     ("one resident process", resident, resident_total, 1)):  # fmt: skip
        print(f"| {name} | {starts} | {row['launch']:.2f} | {row['import'] / n:.3f} | {row['render'] / views:.3f} | "
              f"{total:.2f} | {total / n:.2f} |")  # fmt: skip


def samples_mode(args, paths: list[Path]) -> None:
    from clip_gs.data.fitted import fit_mesh_views, render_mesh_views
    from clip_gs.fitting import FitConfig, evaluate_views

    config = FitConfig(iterations=args.iterations, max_gaussians=args.gaussians, seed=0)
    references = [render_mesh_views(p, views=args.views, size=args.size, samples=64)[1:] for p in paths]
    print(f"{len(paths)} objects; fit {args.iterations} iterations on {args.views} views at {args.size} px; "
          "held-out views rendered at 64 samples")  # fmt: skip
    print("| samples | render s / object | held-out PSNR dB (mean) | vs 64 dB |")
    print("|---|---|---|---|")
    rows = {}
    for samples in sorted(args.samples):
        psnrs, seconds = [], 0.0
        for path, (test, world) in zip(paths, references):
            start = time.perf_counter()
            train, _, _ = render_mesh_views(path, views=args.views, size=args.size, samples=samples)
            seconds += time.perf_counter() - start
            result = fit_mesh_views(path, train, None, world, config)
            psnrs.append(evaluate_views(result.cloud, test, config.background)[0])
        rows[samples] = (seconds / len(paths), sum(psnrs) / len(psnrs))
    best = rows[max(rows)][1]
    for samples, (seconds, psnr) in rows.items():
        print(f"| {samples} | {seconds:.2f} | {psnr:.2f} | {psnr - best:+.2f} |")
    enough = min(s for s, (_, psnr) in rows.items() if psnr >= best - args.tolerance)
    print(f"fewest samples within {args.tolerance} dB of {max(rows)}: {enough}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("launch", "samples"), default="launch")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--views", type=int, default=36)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render-samples", type=int, default=64, help="launch mode: Cycles samples")
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 16, 32, 64], help="samples mode: the counts")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--gaussians", type=int, default=10_000)
    parser.add_argument("--tolerance", type=float, default=0.3)
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.processor() or platform.machine()}; {cores} cores; torch {torch.__version__}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-blender-") as tmp:
        paths = meshes(Path(tmp), args.objects)
        (launch_mode if args.mode == "launch" else samples_mode)(args, paths)


if __name__ == "__main__":
    main()
