"""Grouping benchmark: FPS + kNN patches, naive references vs the shipped fast paths (CPU).

Default workload: 8 clouds x 10,000 points -> 512 groups x 64 neighbours (Uni3D-sized), float32.
Each timing is the median of ``repeats`` runs after one warm-up run. The naive references are slow
(seconds), so they run ``ref_repeats`` times (default 1, after no warm-up: their cost is not dominated
by first-call effects). When the optional ``fpsample`` package is installed, its vanilla FPS (one call
per cloud, then the torch kNN) is timed too, and its indices are compared with ours.

Run: ``python benchmarks/bench_grouping.py [--repeats 5] [--threads 1]``. Import by path from another
script: ``importlib.util.spec_from_file_location("bench_grouping", path)``, then ``module.run(...)``,
which returns one dict per measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from clip_gs.ops import (
    farthest_point_sample,
    farthest_point_sample_reference,
    gather,
    group,
    group_reference,
    knn,
    knn_reference,
)


def _median_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fpsample_group(points: torch.Tensor, num_groups: int, group_size: int) -> torch.Tensor:
    import fpsample  # optional, CPU only

    centres = torch.stack(
        [
            torch.from_numpy(fpsample.fps_sampling(cloud.numpy(), num_groups, start_idx=0).astype("int64"))
            for cloud in points
        ]
    )
    knn(gather(points, centres), points, group_size)
    return centres


def run(
    repeats: int = 5,
    ref_repeats: int = 1,
    batch: int = 8,
    num_points: int = 10_000,
    num_groups: int = 512,
    group_size: int = 64,
    seed: int = 0,
) -> list[dict]:
    """Time the references and the fast paths; return ``[{"name", "seconds", "speedup", ...}, ...]``."""
    points = torch.rand(batch, num_points, 3, generator=torch.Generator().manual_seed(seed))
    centres = farthest_point_sample(points, num_groups)
    queries = gather(points, centres)
    workload = f"B={batch} N={num_points} G={num_groups} K={group_size} float32 cpu threads={torch.get_num_threads()}"

    timings = {
        "fps_reference": _median_time(
            lambda: farthest_point_sample_reference(points, num_groups), ref_repeats, warmup=False
        ),
        "fps_fast": _median_time(lambda: farthest_point_sample(points, num_groups), repeats),
        "knn_reference": _median_time(lambda: knn_reference(queries, points, group_size), ref_repeats, warmup=False),
        "knn_fast": _median_time(lambda: knn(queries, points, group_size), repeats),
        "group_reference": _median_time(
            lambda: group_reference(points, num_groups, group_size), ref_repeats, warmup=False
        ),
        "group_fast": _median_time(lambda: group(points, num_groups, group_size), repeats),
    }
    results = []
    for op in ("fps", "knn", "group"):
        ref, fast = timings[f"{op}_reference"], timings[f"{op}_fast"]
        results.append({"name": f"{op}_reference", "seconds": ref, "speedup": 1.0, "workload": workload})
        results.append({"name": f"{op}_fast", "seconds": fast, "speedup": ref / fast, "workload": workload})

    try:
        import fpsample  # noqa: F401
    except ImportError:
        pass
    else:
        same = torch.equal(_fpsample_group(points, num_groups, group_size), centres)
        seconds = _median_time(lambda: _fpsample_group(points, num_groups, group_size), repeats)
        results.append(
            {
                "name": "group_fpsample_vanilla+torch_knn",
                "seconds": seconds,
                "speedup": timings["group_reference"] / seconds,
                "workload": workload,
                "same_centres_as_reference": same,
            }
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each fast path (median reported)")
    parser.add_argument("--ref-repeats", type=int, default=1, help="timed runs of each naive reference")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before timing")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run(repeats=args.repeats, ref_repeats=args.ref_repeats)
    print(results[0]["workload"])
    for row in results:
        extra = "" if "same_centres_as_reference" not in row else f"  same centres: {row['same_centres_as_reference']}"
        print(f"{row['name']:36s} {row['seconds'] * 1e3:10.1f} ms   x{row['speedup']:6.1f} vs reference{extra}")


if __name__ == "__main__":
    main()
