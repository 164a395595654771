"""The cost model of ``clip-gs prepare``: CPU core-seconds and GPU-seconds per object for each stage.

Runs the per-object stages of :class:`~clip_gs.data.object_work.ObjectPreparer` one after the other
over ``--objects`` meshes, with the options of a prepare config (``--config``; any prepare flag given
after it overrides it, exactly as on ``clip-gs prepare``), and times each stage:

- ``render``: Blender's pass over the mesh (fitted objects: the fit's views and the held-out ones),
  or reading the object and sampling its surface (surface objects), plus the orbit render;
- ``fit``: the 3DGS fit to the renders (fitted objects only);
- ``teacher``: caption and view embeddings, one call per object as prepare makes them;
- ``write``: the record serialised, and the LitData shards of all records written.

CPU core-seconds are the CPU time of this process and of its Blender process (``/proc``); on CUDA,
GPU-seconds are the stage's wall time with the device synchronised (the GPU is taken to be busy
throughout). Blender's one start per worker is reported on its own line, not spread over objects.
It then projects the whole Objaverse set (``--project 240000`` objects) onto ``--gpus`` GPUs and
``--cores`` CPU cores, and gives the storage the records and shards take.

Run: ``python benchmarks/bench_prepare.py --config examples/configs/prepare-paper.yaml --objects 4
[--meshes DIR] [--fit-iterations 200 ...] [--gpus 8 --cores 64]``. Without ``--meshes`` it makes
three coloured meshes (a box, a sphere, a cylinder) and cycles through them.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

STAGES = ("render", "fit", "teacher", "write")


def blender_cpu_seconds() -> float:
    """CPU seconds of this process's resident Blender so far (0 before it starts)."""
    from clip_gs.render import blender

    renderer = blender._DEFAULT
    process = getattr(renderer, "process", None)
    if process is None:
        return 0.0
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clock:
    """CPU core-seconds (this process and Blender) and wall (device-synchronised) seconds of a stage."""

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.cpu = {stage: 0.0 for stage in STAGES}
        self.wall = {stage: 0.0 for stage in STAGES}

    def __call__(self, stage: str, work):
        if self.cuda:
            torch.cuda.synchronize()
        cpu, blender, wall = time.process_time(), blender_cpu_seconds(), time.perf_counter()
        result = work()
        if self.cuda:
            torch.cuda.synchronize()
        self.wall[stage] += time.perf_counter() - wall
        self.cpu[stage] += time.process_time() - cpu + blender_cpu_seconds() - blender
        return result


def make_meshes(folder: Path, count: int) -> Path:
    """``count`` meshes (a box, a sphere and a cylinder, coloured, cycled) as GLB files in ``folder``."""
    import trimesh

    makers = (trimesh.creation.box, lambda: trimesh.creation.icosphere(subdivisions=3),
              lambda: trimesh.creation.cylinder(radius=0.4, height=1.2, sections=48))  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mesh = makers[i % len(makers)]()
        mesh.visual.vertex_colors = [60 + 60 * (i % 3), 200 - 50 * (i % 4), 90, 255]
        mesh.export(folder / f"object{i:04d}.glb")
    return folder


def linked_meshes(source: Path, count: int, into: Path) -> Path:
    """``count`` entries under ``into``: symbolic links to ``source``'s meshes, cycled."""
    from clip_gs.gaussians.assets import MESH_EXTENSIONS, find_asset_files

    meshes = [p for p in find_asset_files(source) if p.suffix.lower() in MESH_EXTENSIONS]
    for i in range(count):
        mesh = meshes[i % len(meshes)]
        link = into / f"copy{i // len(meshes):03d}" / mesh.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(mesh.resolve())
    return into


def measure(source: str, prepare_argv: list[str], objects: int) -> dict:
    from clip_gs.cli import build_parser, subcommand
    from clip_gs.data.object_work import ObjectPreparer, ObjectResult, one_thread_on_cpu
    from clip_gs.data.prepare import default_teacher
    from clip_gs.data.prepare_config import expand_config, settings_from_args
    from clip_gs.data.shards import write_split
    from clip_gs.data.sources import list_sources
    from clip_gs.model.precision import resolve_device, teacher_precision
    from clip_gs.render import blender
    from clip_gs.teachers import load_teacher

    parser = subcommand(build_parser(), "prepare")
    args = parser.parse_args(expand_config([source, "--out", "unused", *prepare_argv], parser))
    settings = settings_from_args(args)
    device = str(resolve_device(args.device))
    precision = teacher_precision(args.precision, device)
    teacher = (load_teacher(args.teacher, device=device, precision=precision) if args.teacher
               else default_teacher(source, device=device, precision=precision))  # fmt: skip
    preparer = ObjectPreparer(teacher, settings, settings.image_size or int(teacher.image_size), device, precision)
    items = list_sources(source, settings)[:objects]
    clock, records, failed = Clock(device), [], []
    launch = None
    if settings.gaussians == "fitted":  # started before the clock: once per worker, not per object
        blender.default_renderer().start()
        launch = blender.default_renderer().launch_s
    for item in items:
        with one_thread_on_cpu(device):
            loaded = clock("render", lambda: preparer.load(item))
            if isinstance(loaded, ObjectResult):
                failed.append(loaded.failure)
                continue
            stage = "fit" if loaded.rendered is not None else "render"
            cloud, images, cameras, fit, resampled = clock(stage, lambda: preparer.views(item, loaded))
            text, image = clock("teacher", lambda: preparer.embed(item, loaded, images))
            result = clock("write", lambda: preparer.record(item, cloud, loaded.captions, cameras, fit, resampled,
                                                            text, image))  # fmt: skip
        records.append({"id": result.id, "sha256": result.meta["sha256"], "blob": result.blob})
    with tempfile.TemporaryDirectory() as tmp:
        clock("write", lambda: write_split(records, Path(tmp) / "train"))
        shard_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    return {"objects": len(records), "failed": failed, "cpu": clock.cpu, "wall": clock.wall, "cuda": clock.cuda,
            "launch": launch, "record_bytes": sum(len(r["blob"]) for r in records), "shard_bytes": shard_bytes,
            "settings": settings, "teacher": str(teacher.identity), "device": device, "precision": precision}  # fmt: skip


def report(result: dict, project: int, gpus: int, cores: int) -> None:
    n = max(1, result["objects"])
    s = result["settings"]
    cores_here = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.processor() or platform.machine()}; {cores_here} cores; torch {torch.__version__} "
          f"(CPU capability {torch.backends.cpu.get_cpu_capability()}); device {result['device']} in "
          f"{result['precision']}; teacher {result['teacher']}")  # fmt: skip
    print(f"{result['objects']} objects ({len(result['failed'])} failed); gaussians={s.gaussians}, "
          f"fit {s.fit_iterations} iterations on {s.fit_views} views at {s.fit_size} px, cap {s.mesh_gaussians}")  # fmt: skip
    if result["launch"] is not None:
        print(f"Blender start (once per worker): {result['launch']:.2f} s")
    gpu = result["cuda"]
    print("| stage | CPU core-s / object | " + ("GPU-s / object | " if gpu else "") + "wall s / object |")
    print("|---|---|" + ("---|" if gpu else "") + "---|")
    for stage in STAGES:
        gpu_cell = f" {result['wall'][stage] / n:.2f} |" if gpu and stage in ("fit", "teacher") else (
            " - |" if gpu else "")  # fmt: skip
        print(f"| {stage} | {result['cpu'][stage] / n:.2f} |{gpu_cell} {result['wall'][stage] / n:.2f} |")
    cpu_total = sum(result["cpu"].values()) / n
    print(f"| total | {cpu_total:.2f} |" + (f" {(result['wall']['fit'] + result['wall']['teacher']) / n:.2f} |"
                                           if gpu else "") + f" {sum(result['wall'].values()) / n:.2f} |")  # fmt: skip
    # Projection: the pipeline runs as fast as its slowest resource allows.
    if gpu:
        cpu_s = (result["cpu"]["render"] + result["cpu"]["write"]) / n
        gpu_s = (result["wall"]["fit"] + result["wall"]["teacher"]) / n
        hours = max(project * cpu_s / cores, project * gpu_s / gpus) / 3600
        bound = "GPUs" if project * gpu_s / gpus >= project * cpu_s / cores else "CPU cores"
        print(f"projection: {project:,} objects on {gpus} GPUs + {cores} cores: {hours:,.1f} h ({hours / 24:.1f} days), "
              f"bound by the {bound} ({cpu_s:.1f} core-s and {gpu_s:.1f} GPU-s per object)")  # fmt: skip
    else:
        hours = project * cpu_total / cores / 3600
        print(f"projection: {project:,} objects on {cores} CPU cores: {hours:,.1f} h ({hours / 24:.1f} days) at "
              f"{cpu_total:.1f} core-s per object")  # fmt: skip
    record = result["record_bytes"] / n
    print(f"storage: {record / 1e6:.2f} MB per record; {project:,} objects: {project * record / 1e9:,.0f} GB of work "
          f"folder and about {project * result['shard_bytes'] / n / 1e9:,.0f} GB of shards")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/configs/prepare-paper.yaml")
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--meshes", default=None, help="a folder of meshes to cycle through (default: made here)")
    parser.add_argument("--project", type=int, default=240_000, help="objects to project the cost onto")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--cores", type=int, default=64)
    args, prepare_argv = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        if args.meshes:
            source = linked_meshes(Path(args.meshes), args.objects, Path(tmp) / "meshes")
        else:
            source = make_meshes(Path(tmp) / "meshes", args.objects)
        result = measure(str(source), ["--config", args.config, *prepare_argv], args.objects)
    report(result, args.project, args.gpus, args.cores)


if __name__ == "__main__":
    main()
