"""Time and peak memory of the pure-PyTorch rasterizers for one 224x224 view of N Gaussians,
the batched ``torch`` backend side by side with the per-tile ``reference`` in one run.

Scene: N random Gaussians uniform inside the unit sphere, scales ``0.01 * exp(0.3 * normal)``
(mean ~0.01, like a trained object normalised to the unit sphere), random rotations, opacities
uniform in [0.1, 0.9], SH degree 3 colours; one :func:`~clip_gs.render.orbit_cameras` view
(radius 3, vertical fov 45 degrees), rendered under ``torch.no_grad()`` with each backend
(``--backends``, default both); the ``x ref`` column is the reference's time over the backend's.

Memory method: ``tracemalloc`` does not see torch's allocations, so every size runs in fresh
subprocesses. The memory worker (1) builds the scene and renders once, (2) resets the kernel's
peak-RSS counter of the process (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0),
(3) renders again, (4) reads ``VmHWM`` (peak resident set) from ``/proc/self/status``. The
reported peak is ``VmHWM - VmRSS`` before that render: the extra resident memory the render
needs on top of its inputs. It runs with glibc's ``MALLOC_MMAP_THRESHOLD_=131072`` (and
``MALLOC_TRIM_THRESHOLD_``) so that large tensors are always mmapped and handed back to the
kernel when freed; otherwise glibc's adaptive threshold keeps the first render's freed buffers
resident and the peak comes out too small. Those settings slow rendering down several times
(page faults), so time is measured in a separate worker with the default allocator: the best
wall clock of ``--repeats`` renders after one warm-up render. Where ``clear_refs`` is
unavailable the memory worker falls back to ``resource.getrusage`` ``ru_maxrss`` deltas, which
can under-report; the ``method`` column says which one was used.

Usage::

    python benchmarks/bench_render.py                    # 10K, 100K, 1M Gaussians
    python benchmarks/bench_render.py --sizes 10000 100000 --threads 2
    python benchmarks/bench_render.py --sizes 2048 --size 64 --repeats 5   # a prepare view
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _scene(num_gaussians: int, size: int, seed: int):
    import torch

    from clip_gs.render import orbit_cameras

    gen = torch.Generator().manual_seed(seed)
    n = num_gaussians
    direction = torch.randn(n, 3, generator=gen)
    means = direction / direction.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=gen) ** (1 / 3)
    scales = 0.01 * torch.exp(0.3 * torch.randn(n, 3, generator=gen))
    quats = torch.randn(n, 4, generator=gen)
    opacities = 0.1 + 0.8 * torch.rand(n, generator=gen)
    sh = 0.2 * torch.randn(n, 16, 3, generator=gen)
    cams = orbit_cameras(1, width=size, height=size)
    return means, quats, scales, opacities, sh, cams.viewmats, cams.Ks, size, size


def measure(num_gaussians: int, mode: str, size: int = 224, repeats: int = 1, threads: int = 1,
            seed: int = 0, backend: str = "torch") -> dict:  # fmt: skip
    """Build the scene and render it in this process.

    ``mode="time"``: best wall clock of ``repeats`` renders after a warm-up. ``mode="memory"``:
    peak extra resident memory of one render after a warm-up (run it with the malloc settings of
    :func:`run`).
    """
    import torch

    from clip_gs.render import rasterize

    torch.set_num_threads(threads)
    args = _scene(num_gaussians, size, seed)
    row: dict = {"gaussians": num_gaussians, "size": size, "threads": threads, "backend": backend}
    with torch.no_grad():
        out = rasterize(*args, backend=backend)  # warm-up (allocator, kernels)
        if mode == "time":
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                rasterize(*args, backend=backend)
                times.append(time.perf_counter() - start)
            row["seconds"] = min(times)
        else:
            exact = _reset_peak_rss() and _status_kib("VmHWM") is not None
            before_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            base_rss = _status_kib("VmRSS")
            rasterize(*args, backend=backend)
            if exact:
                row["peak_mib"], row["method"] = (_status_kib("VmHWM") - base_rss) / 1024, "VmHWM-VmRSS"
            else:
                row["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_maxrss) / 1024
                row["method"] = "ru_maxrss delta"
    row["inputs_mib"] = sum(t.numel() * t.element_size() for t in args[:5]) / 2**20
    row["mean_alpha"] = float(out.alpha.mean())
    return row


def _worker(n: int, mode: str, size: int, repeats: int, threads: int, backend: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(n), "--mode", mode, "--size", str(size),
           "--repeats", str(repeats), "--threads", str(threads), "--backends", backend]  # fmt: skip
    env = dict(os.environ)
    if mode == "memory":
        env.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker for N={n} ({mode}) failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(sizes=DEFAULT_SIZES, size: int = 224, repeats: int = 1, threads: int = 1,
        backends: tuple[str, ...] = ("reference", "torch")) -> list[dict]:  # fmt: skip
    """Measure every N and backend in fresh subprocesses (one for time, one for memory); returns the rows."""
    rows = []
    for n in sizes:
        reference = None
        for backend in backends:
            row = _worker(n, "time", size, repeats, threads, backend)
            memory = _worker(n, "memory", size, 1, threads, backend)
            row.update({k: v for k, v in memory.items() if k in ("peak_mib", "method")})
            reference = row["seconds"] if backend == "reference" else reference
            row["speedup"] = reference / row["seconds"] if reference else None
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'N':>10} {'image':>8} {'threads':>7} {'backend':>9} {'time s':>8} {'x ref':>6} {'us/G':>6} "
              f"{'peak MiB':>9} {'inputs MiB':>10}  method")  # fmt: skip
    lines = [header, "-" * len(header)]
    for r in rows:
        speedup = f"{r['speedup']:>6.2f}" if r.get("speedup") else f"{'-':>6}"
        lines.append(
            f"{r['gaussians']:>10,} {r['size']:>4}x{r['size']:<3} {r['threads']:>7} {r['backend']:>9} "
            f"{r['seconds']:>8.3f} {speedup} {1e6 * r['seconds'] / r['gaussians']:>6.2f} {r['peak_mib']:>9.1f} "
            f"{r['inputs_mib']:>10.1f}  {r['method']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="numbers of Gaussians")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=1, help="timed renders per size (best is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--backends", nargs="+", default=["reference", "torch"], help="rasterize backends, reference first"
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(args.worker, args.mode, args.size, args.repeats, args.threads,
                                 backend=args.backends[0])))  # fmt: skip
        return
    import platform

    import torch

    print(f"{platform.processor() or platform.machine()}; torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print(format_table(run(args.sizes, args.size, args.repeats, args.threads, tuple(args.backends))))


if __name__ == "__main__":
    main()
