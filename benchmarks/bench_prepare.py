"""``clip-gs prepare`` stage by stage: objects/s of load/convert, render, teacher and write (CPU).

Runs the stages of :func:`~clip_gs.data.prepare.prepare_dataset` one after the other over the
same objects, timing each: ``load`` (synthetic object built, or mesh converted to 10,000
Gaussians, or 3DGS file read), ``render`` (V orbit views at the teacher's image size),
``teacher`` (caption and view embeddings, one call per object as prepare makes them) and
``write`` (records packed and LitData shards written). The slowest stage bounds the pipeline.

Run: ``python benchmarks/bench_prepare.py [--objects 24] [--views 8] [--meshes DIR] [--teacher synthetic-clip]``.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--meshes", default=None, help="also time a folder of meshes (e.g. ../shared/data/real/trimesh-models)")
    parser.add_argument("--teacher", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
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
