"""``clip-gs prepare`` stage by stage: objects/s of load/convert, render, teacher and write (CPU).

Runs the stages of :func:`~clip_gs.data.prepare.prepare_dataset` one after the other over the
same objects, timing each: ``load`` (synthetic object built, or mesh converted to 10,000
Gaussians, or 3DGS file read), ``render`` (V orbit views at the teacher's image size),
``teacher`` (caption and view embeddings, one call per object as prepare makes them) and
``write`` (records packed and LitData shards written). The slowest stage bounds the pipeline.

Run: ``python benchmarks/bench_prepare.py [--objects 24] [--views 8] [--meshes DIR] [--teacher synthetic-clip]``.

With ``--workers 1 2`` it instead runs the whole ``prepare_dataset`` once per worker count on
the same objects (``--objects`` synthetic ones, and with ``--meshes`` that folder's meshes,
repeated through symbolic links in a temporary folder until there are ``--objects``) and
prints, per run: wall time, start-up (until the first record is finished: process spawn,
imports, teacher load), the steady rate (records finished after every worker had finished one,
over the time they took; from the records' modification times), the end-to-end rate, and both
rates against the first worker count. It also checks that every run wrote the same dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from clip_gs.data.prepare import PrepareSettings, list_sources, load_source, render_views
from clip_gs.data.shards import write_split
from clip_gs.data.triplets import TripletSample


def run(source: str, views: int, teacher_spec: str | None, limit: int) -> dict:
    from clip_gs.teachers import OFFLINE_TEACHER, load_teacher

    teacher = load_teacher(teacher_spec or OFFLINE_TEACHER)
    settings = PrepareSettings(views=views)
    items = list_sources(source, settings)[:limit]
    times = {"load": 0.0, "render": 0.0, "teacher": 0.0, "write": 0.0}
    records = []
    for item in items:
        start = time.perf_counter()
        cloud, captions, up = load_source(item, settings)
        times["load"] += time.perf_counter() - start
        start = time.perf_counter()
        images, cameras = render_views(cloud, settings, int(teacher.image_size), up)
        times["render"] += time.perf_counter() - start
        start = time.perf_counter()
        text = teacher.encode_text(list(captions)) if captions else torch.zeros(0, teacher.embed_dim)
        image = teacher.encode_images(images)
        times["teacher"] += time.perf_counter() - start
        start = time.perf_counter()
        sample = TripletSample(item.id, item.source, cloud.to(dtype=torch.float32), tuple(captions), item.label,
                               text, image, cameras.viewmats, cameras.Ks)  # fmt: skip
        records.append(sample.to_record())
        times["write"] += time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_split(records, Path(tmp) / "train")
        times["write"] += time.perf_counter() - start
    return {"objects": len(items), "times": times, "teacher": str(teacher.identity), "image_size": teacher.image_size}


def repeated_meshes(folder: str, count: int, into: Path) -> str:
    """``count`` mesh entries under ``into``: symbolic links to ``folder``'s meshes, cycled."""
    from clip_gs.gaussians.assets import MESH_EXTENSIONS, find_asset_files

    meshes = [p for p in find_asset_files(Path(folder)) if p.suffix.lower() in MESH_EXTENSIONS]
    for i in range(count):
        mesh = meshes[i % len(meshes)]
        link = into / f"copy{i // len(meshes):03d}" / mesh.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(mesh.resolve())
        for extra in mesh.parent.glob(mesh.stem + "*"):  # .mtl and textures beside an OBJ
            if extra != mesh and not (link.parent / extra.name).exists():
                (link.parent / extra.name).symlink_to(extra.resolve())
    return str(into)


def run_workers(source: str, views: int, teacher_spec: str, workers: int, out: Path, device: str) -> dict:
    from clip_gs.data.prepare import prepare_dataset

    start = time.time()
    summary = prepare_dataset(source, out, teacher=teacher_spec, settings=PrepareSettings(views=views),
                              progress=False, workers=workers, device=device)  # fmt: skip
    wall = time.time() - start
    done = sorted(p.stat().st_mtime for p in (out / ".work").glob("*.json") if p.name != "settings.json"
                  and not p.name.endswith(".failed.json") and p.name != "written.json")  # fmt: skip
    first, steady_from = done[0], done[min(workers, len(done)) - 1]
    steady = (len(done) - workers) / (done[-1] - steady_from) if done[-1] > steady_from else float("nan")
    digest = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.is_file() and ".work" not in path.parts:
            digest.update(path.relative_to(out).as_posix().encode() + path.read_bytes())
    return {
        "wall": wall,
        "startup": first - start,
        "steady": steady,
        "rate": summary.succeeded / wall,
        "objects": summary.succeeded,
        "failed": summary.failed,
        "digest": digest.hexdigest(),
    }


def workers_table(args) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.processor() or platform.machine()}; {cores} cores; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; teacher {args.teacher or 'synthetic-clip'}; {args.views} views; device {args.device}")  # fmt: skip
    print("| source | workers | objects | wall s | start-up s | steady obj/s | end-to-end obj/s | steady vs 1 | "
          "end-to-end vs 1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        sources = [f"synthetic:{args.objects}"]
        if args.meshes:
            sources.append(repeated_meshes(args.meshes, args.objects, Path(tmp) / "meshes"))
        for k, source in enumerate(sources):
            rows = [run_workers(source, args.views, args.teacher or "synthetic-clip", w, Path(tmp) / f"out{k}-{i}-{w}",
                                args.device)
                    for i, w in enumerate(args.workers)]  # fmt: skip
            name = source if source.startswith("synthetic:") else f"{args.meshes} (repeated)"
            for w, row in zip(args.workers, rows):
                print(f"| {name} | {w} | {row['objects']} ({row['failed']} failed) | {row['wall']:.1f} | "
                      f"{row['startup']:.1f} | {row['steady']:.2f} | {row['rate']:.2f} | "
                      f"{row['steady'] / rows[0]['steady']:.2f}x | {row['rate'] / rows[0]['rate']:.2f}x |", flush=True)  # fmt: skip
            same = len({row["digest"] for row in rows}) == 1
            print(f"<!-- {name}: the same dataset from every worker count: {same} -->")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument(
        "--meshes", default=None, help="also time a folder of meshes (e.g. ../shared/data/real/trimesh-models)"
    )
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="with --workers: cpu or cuda")
    parser.add_argument("--workers", type=int, nargs="*", default=None, help="compare whole runs: e.g. 1 2")
    args = parser.parse_args(argv)
    if args.workers:
        workers_table(args)
        return
    torch.set_num_threads(args.threads)
    sources = [f"synthetic:{args.objects}"] + ([args.meshes] if args.meshes else [])
    for source in sources:
        result = run(source, args.views, args.teacher, args.objects)
        n = result["objects"]
        print(f"{source}: {n} objects, {args.views} views at {result['image_size']} px, teacher {result['teacher']}, "
              f"threads={torch.get_num_threads()}")  # fmt: skip
        slowest = max(result["times"], key=result["times"].get)
        for stage, seconds in result["times"].items():
            mark = "  <- bounds the pipeline" if stage == slowest else ""
            print(f"  {stage:8s} {seconds:7.2f} s  {n / seconds:8.2f} objects/s{mark}")
        total = sum(result["times"].values())
        print(f"  {'total':8s} {total:7.2f} s  {n / total:8.2f} objects/s")


if __name__ == "__main__":
    main()
