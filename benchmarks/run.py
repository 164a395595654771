"""All speed benchmarks in one table: encoder (reference vs optimised, fp32 / bf16), grouping, encode over files.

Prints the date, CPU model (``lscpu``), torch version and thread count, then one table:

1. encoder forward, Uni3D-Base, batch 8 x 10,000 Gaussians (``bench_encoder.py``): time per batch,
   objects/s, ratio vs the reference forward, share of the measured fp32 / bf16 matmul peaks;
2. grouping, 8 x 10,000 -> 512 x 64 (``bench_grouping.py``, owned by the ops module): naive
   references vs fast paths;
3. ``CLIPGS.encode`` over 10K-100K-Gaussian ``.ply`` files vs the encoder alone
   (``bench_encode_files.py``).

Run: ``python benchmarks/run.py [--quick] [--threads 2]`` (about 4 minutes on 2 cores; ``--quick``
about 2: fewer rounds and files, no full-model fp32 row).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown").strip()
    cpus = fields.get("CPU(s)", "?").strip()
    return f"{model}, {cpus} CPU(s)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and files")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for every timing")
    parser.add_argument("--skip-grouping", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from clip_gs.model.precision import bf16_supported

    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"cpu: {cpu_model()}; native bf16: {bf16_supported('cpu')}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, threads={torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"cuda: {torch.cuda.get_device_name()} (not used by these CPU benchmarks)")

    encoder = _load("bench_encoder").run(rounds=2 if args.quick else 3, include_full_fp32=not args.quick)
    grouping = None if args.skip_grouping else _load("bench_grouping").run(repeats=3 if args.quick else 5)
    files = _load("bench_encode_files").run(count=16 if args.quick else 32)

    peaks = encoder["peaks"]
    print(
        f"matmul 2048x2048 peak (median of the run): fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    header = (
        f"| {'benchmark':44s} | {'time':>10s} | {'objects/s':>9s} | {'ratio':>8s} "
        f"| {'% fp32 peak':>11s} | {'% bf16 peak':>11s} |"
    )
    rule = "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"
    print(header)
    print(rule)

    def row(name: str, time: str, objects: str = "", ratio: str = "", p32: str = "", p16: str = "") -> None:
        print(f"| {name:44s} | {time:>10s} | {objects:>9s} | {ratio:>8s} | {p32:>11s} | {p16:>11s} |")

    for r in encoder["rows"]:
        row(
            f"1. encoder {r['name']}",
            f"{r['seconds']:.2f} s",
            f"{r['objects_per_s']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['pct_fp32_peak']:.0f}%",
            f"{r['pct_bf16_peak']:.0f}%",
        )
    if grouping is not None:
        for r in grouping:
            row(f"2. grouping {r['name']}", f"{r['seconds'] * 1e3:.0f} ms", "", f"{r['speedup']:.1f}x")
    for r in files["rows"]:
        row(f"3. {r['name']}", f"{r['seconds']:.1f} s", f"{r['objects_per_s']:.2f}", f"{r['vs_encoder']:.2f}x")
    print()
    print(f"1. {encoder['workload']}; ratio = vs reference fp32")
    executed = ", ".join(f"{r['name']} {r['gflop']:.0f} (nominal {r['nominal_gflop']:.0f})" for r in encoder["rows"])
    print(f"   GFLOP per batch, analytic, executed (% of peak uses these): {executed}")
    for name, value in encoder["checks"].items():
        print(f"   {name}: {value:.6g}")
    if grouping is not None:
        print(f"2. {grouping[0]['workload']}; ratio = vs the naive reference of the same op")
    print(f"3. {files['workload']}; ratio = throughput vs encoder only")


if __name__ == "__main__":
    main()
