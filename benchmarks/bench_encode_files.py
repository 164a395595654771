"""End-to-end embedding benchmark: ``CLIPGS.encode`` over many 3DGS files vs the encoder alone (CPU).

Writes ``count`` random objects of 10,000 to 100,000 Gaussians (SH degree 3, binary INRIA ``.ply``)
into a temporary folder, then times, interleaved over ``rounds``:

- ``encoder only``: ``fused(features)`` over the already preprocessed batches (no file access), with
  ``fused = model.fused()`` built once beforehand;
- ``encode, default``: ``model.encode(paths)`` (which builds its fused form per call) with its
  default ``num_workers`` (:func:`~clip_gs.model.inputs.default_num_workers`: 0, loading in process, when the torch
  threads already take every core);
- ``encode, workers=W``: loading, resampling to 10,000 and normalisation in ``W`` loader processes
  that overlap with the forward passes (shown when ``W`` differs from the default).

All with the default precision of ``encode`` (``"auto"``: bf16 where the CPU supports it) and the
full CLIP-GS (Gaussian branch on). Reports objects per second and the ratio to the encoder alone.

Run: ``python benchmarks/bench_encode_files.py [--count 24] [--threads 2] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clip_gs.gaussians import GaussianCloud, save_gaussians
from clip_gs.model import create_model, preprocess_cloud
from clip_gs.model.inputs import default_num_workers
from clip_gs.model.precision import resolve_precision


def write_objects(folder: Path, count: int, seed: int = 0, low: int = 10_000, high: int = 100_000) -> list[Path]:
    """``count`` random SH-degree-3 objects with sizes evenly spread over ``[low, high]``, as ``.ply``."""
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for i, n in enumerate(np.linspace(low, high, count).round().astype(int).tolist()):
        cloud = GaussianCloud(
            means=torch.randn(n, 3, generator=generator) * torch.rand(3, generator=generator) * 3,
            sh=torch.randn(n, 16, 3, generator=generator) * 0.3,
            opacity_logits=torch.randn(n, generator=generator),
            log_scales=torch.randn(n, 3, generator=generator) - 4,
            quats=torch.randn(n, 4, generator=generator),
        )
        paths.append(save_gaussians(cloud, folder / f"object_{i:03d}_{n}.ply"))
    return paths


def run(
    size: str = "clip-gs-base",
    count: int = 24,
    batch_size: int = 8,
    workers: int = 2,
    rounds: int = 1,
    seed: int = 0,
    overrides: dict | None = None,
) -> dict:
    """Return ``{"rows": [{"name", "seconds", "objects_per_s", "vs_encoder"}], "workload": str}``."""
    torch.manual_seed(seed)
    model = create_model(size, **(overrides or {})).eval()
    precision = "auto"
    dtype = resolve_precision(precision)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_objects(Path(tmp), count, seed)
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
        from clip_gs.gaussians import load_gaussians

        features = torch.stack([preprocess_cloud(load_gaussians(p), model.config, seed) for p in paths])
        batches = features.split(batch_size)

        fused = model.fused(precision)

        def encoder_only() -> torch.Tensor:
            return torch.cat([fused(b) for b in batches])

        default = default_num_workers(torch.device("cpu"), -(-count // batch_size))
        cases = {
            "encoder only": encoder_only,
            f"encode, default (workers={default})": lambda: model.encode(paths, batch_size, seed, False, precision),
        }
        if workers != default:
            cases[f"encode, workers={workers}"] = lambda: model.encode(
                paths, batch_size, seed, False, precision, num_workers=workers
            )
        fused(batches[0])  # warm-up
        times: dict[str, list[float]] = {name: [] for name in cases}
        outputs = {}
        for _ in range(rounds):
            for name, fn in cases.items():
                start = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - start)
    encoder_seconds = statistics.median(times["encoder only"])
    rows = [
        {
            "name": name,
            "seconds": statistics.median(t),
            "objects_per_s": count / statistics.median(t),
            "vs_encoder": encoder_seconds / statistics.median(t),
        }
        for name, t in times.items()
    ]
    same = all(torch.equal(outputs["encoder only"], out) for out in outputs.values())
    workload = (
        f"{size} (Gaussian branch on), {count} .ply files of 10K-100K Gaussians (SH degree 3, {megabytes:.0f} MB), "
        f"batch {batch_size}, precision=auto ({str(dtype).removeprefix('torch.')}), threads={torch.get_num_threads()}, "
        f"rounds={rounds}; identical embeddings on every row: {same}"
    )
    return {"rows": rows, "workload": workload, "same_embeddings": same}


def print_report(result: dict) -> None:
    print(result["workload"])
    for r in result["rows"]:
        print(
            f"{r['name']:30s} {r['seconds']:8.2f} s  {r['objects_per_s']:6.2f} obj/s  "
            f"{r['vs_encoder']:5.2f}x encoder-only"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="clip-gs-base")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads before timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_report(run(args.size, args.count, args.batch_size, args.workers, args.rounds))


if __name__ == "__main__":
    main()
