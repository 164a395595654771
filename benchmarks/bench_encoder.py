"""Encoder benchmark: the plain reference forward vs the fused CLIP-GS encoder, fp32 and bf16 (CPU).

Workload (default): Uni3D-Base size (``clip-gs-base``), a batch of 8 objects of 10,000 Gaussians,
512 groups x 64, eval mode, end to end from the padded feature tensor ``[B, N, 19]`` (grouping
included). Rows:

- ``reference fp32``: :class:`tests.uni3d_reference.Uni3DPointEncoderReference` (naive grouping,
  Conv1d mini-PointNet, timm EVA blocks called as Uni3D calls them), float32;
- ``P&C fp32`` / ``P&C bf16``: ``CLIPGS`` with ``gaussian_branch=False`` and the reference's weights
  (the like-for-like comparison), its fused inference form (``model.fused(precision)``) in each precision;
- ``full bf16`` / ``full fp32``: ``CLIPGS`` with the Gaussian branch on.

The share of the peak is computed from the FLOPs each row executes (``gflop``), so the fused
form's algorithmic savings (see :func:`encoder_flops`) do not inflate it; ``nominal_gflop`` is
the count of the plain forward for reference.

Measurements are interleaved round by round (reference, then each optimised row, then the 2048 x
2048 matmul peaks) so that load from other processes hits every row alike; each figure is the
median over rounds, after one warm-up call of each model. FLOPs are counted analytically
(:func:`encoder_flops`; a multiply-add is 2 FLOPs) and divided by the median time and the median
measured peak of the same run.

Run: ``python benchmarks/bench_encoder.py [--rounds 3] [--threads 2] [--size clip-gs-base]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_gs.model import CLIPGS, FEATURE_LAYOUT, CLIPGSConfig, get_model_config
from clip_gs.model.uni3d import load_uni3d

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: the reference lives with the tests
from tests.uni3d_reference import Uni3DPointEncoderReference


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a ``size x size`` matrix product in ``dtype`` (after 2 warm-up products)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def encoder_flops(config: CLIPGSConfig, batch: int, gaussian_branch: bool, inference_path: bool) -> float:
    """Analytic FLOPs of one forward of ``batch`` objects (matrix products only; 2 per multiply-add).

    Counts the transformer blocks (q/k/v, scores, attention x values, output projection, MLP), the
    mini-PointNet, the point-to-token projection, the positional MLP, the head and, when
    ``gaussian_branch``, the Gaussian branch (stem, convolutions for every serialization order,
    output projection). ``inference_path`` counts what the inference path executes: the
    mini-PointNet's second 512-wide product applies its pooled (global) half once per patch
    instead of once per point, and the last block computes queries, output projection and MLP
    for the cls token only (keys and values for every token).
    """
    g, k, d = config.num_groups, config.group_size, config.width
    tokens = g + 1
    hidden = int(d * config.mlp_ratio)
    mlp_per_token = 2 * d * hidden * (3 if config.swiglu_mlp else 2)

    def block(queries: int) -> int:
        kv = 2 * tokens * d * 2 * d
        q_out = 2 * queries * d * d * 2  # queries and output projection
        attention = 2 * 2 * queries * tokens * d
        return kv + q_out + attention + queries * mlp_per_token

    transformer = (config.depth - 1) * block(tokens) + block(1 if inference_path else tokens)
    c = config.point_encoder_dim
    per_point = 6 * 128 + 128 * 256 + (256 if inference_path else 512) * 512 + 512 * c
    pointnet = 2 * g * k * per_point + (2 * g * 256 * 512 if inference_path else 0)
    rest = 2 * g * c * d + 2 * g * (3 * 128 + 128 * d) + 2 * d * config.embed_dim
    gaussian = 0
    if gaussian_branch:
        e = config.gaussian_embed_dim
        convs, length, in_ch = 0, k, e
        for out_ch, stride in zip(config.gaussian_channels, (1, 1, 2, 2)):
            length = (length - 1) // stride + 1
            convs += 2 * length * in_ch * 3 * out_ch
            in_ch = out_ch
        gaussian = g * (2 * k * FEATURE_LAYOUT.num_channels * e + len(config.serialization) * convs + 2 * in_ch * d)
    return float(batch * (transformer + pointnet + rest + gaussian))


def _randomize_batchnorm(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)


def build_models(config: CLIPGSConfig, seed: int = 0) -> tuple[Uni3DPointEncoderReference, CLIPGS, CLIPGS]:
    """``(reference, pc, full)`` sharing the reference's weights; the full model's Gaussian branch
    gets a non-zero output map so that it contributes."""
    torch.manual_seed(seed)
    reference = Uni3DPointEncoderReference(config).eval()
    _randomize_batchnorm(reference, seed)
    state = reference.uni3d_state_dict()
    overrides = {f: getattr(config, f) for f in ("num_gaussians", "num_groups", "group_size")}
    size = config.name.removeprefix("clip-gs-")
    pc = load_uni3d(state, size=size, gaussian_branch=False, **overrides).eval()
    full = load_uni3d(state, size=size, gaussian_branch=True, **overrides).eval()
    _randomize_batchnorm(full.encoder.tokenizer.gaussian_encoder, seed + 1)
    with torch.no_grad():
        for p in full.encoder.tokenizer.gaussian_encoder.proj.parameters():
            p.normal_(std=0.02)
    return reference, pc, full


def make_features(config: CLIPGSConfig, batch: int, seed: int = 0) -> torch.Tensor:
    """``[batch, num_gaussians, 19]`` encoder inputs of random normalised objects."""
    from clip_gs.gaussians import GaussianCloud
    from clip_gs.model import preprocess_cloud

    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = config.num_gaussians
        cloud = GaussianCloud(
            means=torch.randn(n, 3, generator=generator) * torch.rand(3, generator=generator) * 3,
            sh=torch.randn(n, 1, 3, generator=generator),
            opacity_logits=torch.randn(n, generator=generator),
            log_scales=torch.randn(n, 3, generator=generator) - 4,
            quats=torch.randn(n, 4, generator=generator),
        )
        out.append(preprocess_cloud(cloud, config))
    return torch.stack(out)


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run(
    size: str = "clip-gs-base",
    batch: int = 8,
    rounds: int = 3,
    include_full_fp32: bool = True,
    seed: int = 0,
    overrides: dict | None = None,
) -> dict:
    """Time every row; return ``{"rows": [...], "peaks": {...}, "checks": {...}, "workload": str}``.

    Each row: ``name``, ``seconds`` (median per batch), ``objects_per_s``, ``speedup`` (vs the
    reference), ``gflop`` (analytic, per batch), ``pct_fp32_peak``, ``pct_bf16_peak``.
    """
    config = get_model_config(size, **(overrides or {}))
    reference, pc, full = build_models(config, seed)
    features = make_features(config, batch, seed)
    xyz, rgb = features[..., FEATURE_LAYOUT["xyz"]], features[..., FEATURE_LAYOUT["rgb"]]
    fused = {(name, p): model.fused(p) for name, model in (("P&C", pc), ("full", full)) for p in ("fp32", "bf16")}
    cases: dict[str, Callable[[], torch.Tensor]] = {
        "reference fp32 (P&C)": lambda: reference(xyz, rgb),
        "P&C fp32": lambda: fused["P&C", "fp32"](features),
        "P&C bf16": lambda: fused["P&C", "bf16"](features),
        "full bf16": lambda: fused["full", "bf16"](features),
    }
    if include_full_fp32:
        cases["full fp32"] = lambda: fused["full", "fp32"](features)
    times: dict[str, list[float]] = {name: [] for name in cases}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for name, fn in cases.items():
            fn()  # warm-up
        for _ in range(rounds):
            for name, fn in cases.items():
                seconds, outputs[name] = _timed(fn)
                times[name].append(seconds)
            peaks["fp32"].append(matmul_gflops(torch.float32))
            peaks["bf16"].append(matmul_gflops(torch.bfloat16))
    peak = {k: statistics.median(v) for k, v in peaks.items()}
    ref_seconds = statistics.median(times["reference fp32 (P&C)"])
    rows = []
    for name in cases:
        seconds = statistics.median(times[name])
        full_branch = name.startswith("full")
        inference = not name.startswith("reference")
        gflop = encoder_flops(config, batch, gaussian_branch=full_branch, inference_path=inference) / 1e9
        nominal = encoder_flops(config, batch, gaussian_branch=full_branch, inference_path=False) / 1e9
        rows.append(
            {
                "name": name,
                "seconds": seconds,
                "all_seconds": times[name],
                "objects_per_s": batch / seconds,
                "speedup": ref_seconds / seconds,
                "gflop": gflop,
                "nominal_gflop": nominal,
                "pct_fp32_peak": 100 * gflop / seconds / peak["fp32"],
                "pct_bf16_peak": 100 * gflop / seconds / peak["bf16"],
            }
        )
    ref_out = outputs["reference fp32 (P&C)"]

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(F.cosine_similarity(a.double(), b.double(), dim=-1).min())

    checks = {
        "P&C fp32 max |diff| vs reference": float((outputs["P&C fp32"] - ref_out).abs().max()),
        "P&C bf16 vs fp32 min cosine": cos(outputs["P&C bf16"], outputs["P&C fp32"]),
    }
    if include_full_fp32:
        checks["full bf16 vs fp32 min cosine"] = cos(outputs["full bf16"], outputs["full fp32"])
    nominal = encoder_flops(config, 1, gaussian_branch=False, inference_path=False) / 1e9
    workload = (
        f"{size}: B={batch} N={config.num_gaussians} G={config.num_groups} K={config.group_size}, eval, "
        f"{nominal:.0f} GFLOP/object nominal (P&C), threads={torch.get_num_threads()}, rounds={rounds}"
    )
    return {"rows": rows, "peaks": peak, "checks": checks, "workload": workload}


def print_report(result: dict) -> None:
    print(result["workload"])
    print(f"matmul 2048^2 peak: fp32 {result['peaks']['fp32']:.0f} GFLOP/s, bf16 {result['peaks']['bf16']:.0f} GFLOP/s")
    print(f"{'row':24s} {'s/batch':>8s} {'obj/s':>7s} {'vs ref':>7s} {'GFLOP':>7s} {'%fp32pk':>8s} {'%bf16pk':>8s}")
    for r in result["rows"]:
        print(
            f"{r['name']:24s} {r['seconds']:8.2f} {r['objects_per_s']:7.2f} {r['speedup']:6.2f}x "
            f"{r['gflop']:7.0f} {r['pct_fp32_peak']:7.0f}% {r['pct_bf16_peak']:7.0f}%"
        )
    for name, value in result["checks"].items():
        print(f"  {name}: {value:.6g}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="clip-gs-base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads before timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_report(run(size=args.size, batch=args.batch, rounds=args.rounds))


if __name__ == "__main__":
    main()
