"""One training step of CLIP-GS (CPU, or CUDA with ``--device cuda``): objects/s, share of the matmul peak, data wait.

Three measurements:

1. **matmul peak**: the best GFLOP/s of square ``torch.mm`` products (sizes ``--peak-sizes``,
   ``--peak-repeats`` timed products each after one warm-up) on ``--device`` in the dtype of
   ``--precision`` (fp32, or bf16 for ``bf16``), with the same thread count, measured before and
   after the training steps; the highest is the peak.
2. **Training step at the paper's token budget** (default ``clip-gs-base``, 10,000 Gaussians,
   512 groups x 64, embed_dim 1024, random init, train mode) on ``--device``: a batch of ``--batch``
   synthetic objects (:func:`~clip_gs.data.synthetic.make_object`, one per class in turn) turned
   into a :class:`~clip_gs.lightning.TripletBatch` by the data module's own per-sample code
   (:class:`~clip_gs.data.batches.SampleProcessor`, i.e. ``preprocess``, then
   :func:`~clip_gs.data.batches.collate_triplets`) with random unit teacher embeddings
   (one caption, 8 views at cosine ~0.3 to it, K = 5 sampled), so the module's real
   ``compute_loss`` runs. ``--precision bf16`` runs forward and loss under ``torch.autocast`` in
   bfloat16, as Lightning's ``bf16-mixed`` does (weights, gradients and the optimiser stay fp32);
   ``fp32`` runs without autocast. One step = forward + loss + backward + gradient clipping (by global
   norm, ``--clip``, the quick-start's 5.0) + AdamW step (``configure_optimizers``: layer-wise lr
   decay groups) + scheduler step. One warm-up step, then ``--steps`` timed steps (median
   reported), with the time split into forward (grouping, tokenizer, transformer), loss,
   backward and optimiser. FLOPs are counted on one more, untimed step with
   ``torch.utils.flop_counter.FlopCounterMode`` (forward + loss, and backward, separately); the
   achieved rate is counted FLOPs / median step time, its share is against the measured peak. On
   CUDA every phase boundary synchronises the device (so the phases are the GPU's times), and the
   peak memory allocated over the timed steps (``torch.cuda.max_memory_allocated``) is reported.
   FlopCounterMode counts matrix products, convolutions and attention only; the CPU attention
   kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward) is missing
   from its table in torch 2.x, so this script maps it to torch's own SDPA formulas. Not
   counted: FPS / kNN grouping, serialization sorts, norms, activations, softmax, elementwise
   ops and the optimiser (elementwise, ~10 FLOPs per parameter). A forward check against the
   analytic count of ``bench_encoder.encoder_flops`` is printed. With ``--profile-steps 1``
   (default) one more step runs under ``torch.profiler`` and the top ops by self CPU time are listed
   (CPU only: on CUDA the profile is left out, and the report says so).
3. **Data wait in the quick-start configuration** (``examples/configs/quickstart.yaml``): its
   model and data module on ``--data`` (default: the config's ``data.root``, built with the
   offline teacher on first use), a Lightning ``Trainer`` for ``--data-steps`` steps (the
   config's gradient clipping, no logger, no validation, no checkpoints) per value of
   ``--workers`` (default: the configured ``num_workers``, then 0 and 2), on ``--device`` (GPU
   accelerator for cuda) in ``--precision`` (``32``, or ``bf16-mixed`` for bf16). A callback of this
   script (:class:`StepClock`) records each step's wait (end of the previous step to the start of
   this one: the loader) and cycle (start of the previous step to the start of this one), so the
   share is mean(wait) / mean(cycle) over the steps after the first ``--skip-steps`` (worker
   start-up). Epoch boundaries (loader workers restart) stay in.

Run: ``python benchmarks/bench_train_step.py [--batch 2] [--steps 3] [--threads 2] [--json out.json]``
(about 15 minutes on 2 busy cores: most of it the 3 x 30 quick-start steps). Smoke (under a minute on
an idle 2-core machine): ``--model clip-gs-tiny --num-gaussians 1024 --groups 64 --group-size 32
--embed-dim 256 --steps 1 --data-steps 5 --workers 1 --peak-sizes 1024``. On a GPU (the GPU check's
``train-throughput`` step calls :func:`run_train_step` the same way): ``--device cuda --precision bf16
--batch 16 --steps 10 --profile-steps 0 --data-steps 0 --peak-sizes 8192``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

HERE = Path(__file__).resolve().parent
QUICKSTART = HERE.parent / "examples" / "configs" / "quickstart.yaml"
PEAK_SIZES = (1024, 2048, 3072, 4096)
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""``--precision``: the matmul peak's dtype; ``bf16`` also means autocast in bfloat16 for forward and loss."""
LIGHTNING_PRECISION = {"fp32": "32", "bf16": "bf16-mixed"}
"""``--precision`` -> Lightning's ``Trainer(precision=...)`` for the data wait."""
OPTIONAL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def _sibling(name: str):
    """``benchmarks/<name>.py`` (the benchmarks are scripts, not a package), by ``run.py``'s loader."""
    if name not in sys.modules:
        sys.modules[name] = _run_module()._load(name) if name != "run" else _run_module()
    return sys.modules[name]


def _run_module():
    import run  # benchmarks/run.py: this folder is on sys.path when a benchmark runs as a script

    return run


# ---------------------------------------------------------------------------- machine
def machine_facts(device: str = "cpu") -> dict:
    """CPU model, the SIMD / bf16 flags that matter for fp32 and bf16 products, torch's kernel level, versions,
    and on CUDA the GPU's name and torch's CUDA version."""
    from clip_gs.model.precision import bf16_supported, cpu_flags

    flags = cpu_flags()
    gpu = {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda} if _is_cuda(device) else {}
    return {
        **gpu,
        "cpu": _sibling("run").cpu_model(),
        "flags": {f: f in flags for f in OPTIONAL_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bf16_supported("cpu"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "loadavg": list(os.getloadavg()),
    }


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)


def matmul_peak(sizes: tuple[int, ...] = PEAK_SIZES, repeats: int = 3, seed: int = 0, device: str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict:  # fmt: skip
    """Best GFLOP/s of ``torch.mm`` of square ``size x size`` matrices of ``dtype`` on ``device`` (one warm-up
    product per size; on CUDA each product is timed between synchronisations).

    Returns:
        ``{"gflops": best over sizes and repeats, "by_size": {size: best GFLOP/s}}``.
    """
    generator = torch.Generator().manual_seed(seed)
    by_size = {}
    for size in sizes:
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        best = 0.0
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            _sync(device)
            best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
        by_size[size] = best
    return {"gflops": max(by_size.values()), "by_size": by_size}


# ---------------------------------------------------------------------------- the training step
def make_batch(config, batch: int, views_per_step: int = 5, views: int = 8, seed: int = 0):
    """A :class:`~clip_gs.lightning.TripletBatch` of ``batch`` synthetic objects at ``config.num_gaussians``.

    Objects: :func:`~clip_gs.data.synthetic.make_object` of the classes in turn (seeds ``seed + i``);
    teacher embeddings: one random unit caption embedding ``[1, E]`` and ``views`` view embeddings
    ``[V, E]`` at cosine ~0.3 to it (CLIP text-image cosines are ~0.2-0.4); then the data module's
    per-sample processing (no augmentation) and collation.
    """
    from clip_gs.data.batches import SampleProcessor, collate_triplets
    from clip_gs.data.synthetic import SHAPE_CLASSES, make_object
    from clip_gs.data.triplets import TripletSample

    e = config.embed_dim
    labels = tuple(sorted(SHAPE_CLASSES))
    processor = SampleProcessor(config.num_gaussians, config.scale_activation, views_per_step, labels, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(batch):
        obj = make_object(SHAPE_CLASSES[i % len(SHAPE_CLASSES)], seed + i, num_gaussians=config.num_gaussians)
        text = torch.nn.functional.normalize(torch.randn(1, e, generator=generator), dim=-1)
        noise = torch.nn.functional.normalize(torch.randn(views, e, generator=generator), dim=-1)
        images = torch.nn.functional.normalize(0.31 * text + noise, dim=-1)
        sample = TripletSample(f"bench/{i}", obj.cloud.source, obj.cloud, (obj.caption,), obj.label, text, images,
                               torch.eye(4).expand(views, 4, 4), torch.eye(3).expand(views, 3, 3))  # fmt: skip
        samples.append(processor(sample, i, 0))
    return collate_triplets(samples)


class _PhaseTimer:
    """Forward hooks timing the tokenizer and the transformer blocks of a ``CLIPGS`` (seconds of the last forward;
    on CUDA each hook synchronises the device first)."""

    def __init__(self, model, device: str = "cpu") -> None:
        encoder = model.encoder
        self.device = device
        self.times: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self.handles = [
            encoder.tokenizer.register_forward_pre_hook(lambda m, a: self._begin("tokenizer")),
            encoder.tokenizer.register_forward_hook(lambda m, a, o: self._end("tokenizer")),
            encoder.blocks[0].register_forward_pre_hook(lambda m, a: self._begin("transformer")),
            encoder.blocks[-1].register_forward_hook(lambda m, a, o: self._end("transformer")),
        ]

    def _begin(self, name: str) -> None:
        _sync(self.device)
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        _sync(self.device)
        self.times[name] = time.perf_counter() - self._start[name]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _autocast(device: str, precision: str):
    """``torch.autocast`` in bfloat16 for ``bf16`` (Lightning's bf16-mixed), nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _step(module, optimizer, scheduler, batch, clip: float, device: str = "cpu", precision: str = "fp32") -> dict:
    """One optimisation step; returns its phase times in seconds (``forward``, ``loss``, ``backward``, ``optimizer``)."""
    _sync(device)
    t0 = time.perf_counter()
    with _autocast(device, precision):
        embeddings = module(batch.features)
        _sync(device)
        t1 = time.perf_counter()
        loss = module.compute_loss(batch, embeddings).loss
        _sync(device)
    t2 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _sync(device)
    t3 = time.perf_counter()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    scheduler.step()
    _sync(device)
    t4 = time.perf_counter()
    return {"forward": t1 - t0, "loss": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "step": t4 - t0}


def _flop_mapping() -> dict:
    """FlopCounterMode formulas for the CPU attention kernels its table lacks (torch's SDPA formulas)."""
    from torch.utils import flop_counter

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    mapping = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", forward),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", backward),
    ):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            mapping[op] = formula
    return mapping


def count_flops(module, optimizer, batch, device: str = "cpu", precision: str = "fp32") -> dict:
    """Executed FLOPs of one forward + loss and one backward (FlopCounterMode + :func:`_flop_mapping`), in the
    step's precision.

    Returns:
        ``forward``, ``backward``, ``total`` FLOPs; ``forward_tokenizer`` / ``forward_transformer``
        (the tokenizer's and the blocks' forward shares); ``attention_added`` (FLOPs from the
        added CPU attention formulas, forward + backward); ``by_op`` (total per op name).
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = _flop_mapping()
    forward = FlopCounterMode(display=False, custom_mapping=mapping)
    backward = FlopCounterMode(display=False, custom_mapping=mapping)
    with forward, _autocast(device, precision):
        loss = module.compute_loss(batch, module(batch.features)).loss
    optimizer.zero_grad(set_to_none=True)
    with backward:
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    per_module = forward.get_flop_counts()
    tokenizer = sum(sum(ops.values()) for name, ops in per_module.items() if name.endswith("encoder.tokenizer"))
    transformer = sum(sum(ops.values()) for name, ops in per_module.items() if _is_block(name))
    by_op: dict[str, int] = {}
    for counter in (forward, backward):
        for op, flops in counter.get_flop_counts()["Global"].items():
            by_op[str(op)] = by_op.get(str(op), 0) + int(flops)
    added = sum(v for k, v in by_op.items() if "flash_attention_for_cpu" in k)
    f, b = forward.get_total_flops(), backward.get_total_flops()
    return {"forward": f, "backward": b, "total": f + b, "forward_tokenizer": tokenizer,
            "forward_transformer": transformer, "attention_added": added, "by_op": by_op}  # fmt: skip


def _is_block(name: str) -> bool:
    """``...encoder.blocks.<i>`` exactly (not its submodules)."""
    head, _, last = name.rpartition(".")
    return last.isdigit() and head.endswith("encoder.blocks")


def profile_step(module, optimizer, scheduler, batch, clip: float, top: int = 12, precision: str = "fp32") -> dict:
    """One step under ``torch.profiler`` (CPU): the ``top`` ops by self CPU time and the step's wall time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        phases = _step(module, optimizer, scheduler, batch, clip, "cpu", precision)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    rows = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in events[:top]]
    return {"step_s": phases["step"], "self_total_s": total, "top": rows}


def run_train_step(
    model: str = "clip-gs-base",
    num_gaussians: int = 10_000,
    num_groups: int = 512,
    group_size: int = 64,
    embed_dim: int = 1024,
    batch: int = 2,
    steps: int = 3,
    clip: float = 5.0,
    profile_steps: int = 1,
    seed: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
    between_size: int = 2048,
) -> dict:
    """Warm-up step, ``steps`` timed steps, one FLOP-counted step, ``profile_steps`` profiled steps (CPU only),
    on ``device`` in ``precision`` (see the module docstring). After each timed step a ``between_size`` square
    matmul in ``precision`` measures the machine's peak again (a shared machine's load shows there)."""
    from clip_gs.lightning import CLIPGSModule
    from clip_gs.model.tokenizer import make_patches

    torch.manual_seed(seed)
    module = CLIPGSModule(model=model, config={"num_gaussians": num_gaussians, "num_groups": num_groups,
                          "group_size": group_size, "embed_dim": embed_dim}, total_steps=1_000_000)  # fmt: skip
    module.to(device)
    module.train()
    config = module.model.config
    optim = module.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    data = make_batch(config, batch, seed=seed).to(device)
    timer = _PhaseTimer(module.model, device)
    _step(module, optimizer, scheduler, data, clip, device, precision)  # warm-up
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
    timed, between = [], []
    for _ in tqdm_range(steps, "timed steps"):
        phases = _step(module, optimizer, scheduler, data, clip, device, precision)
        phases.update(timer.times)
        timed.append(phases)
        # the peak right after each step (shared machines)
        between.append(matmul_peak((between_size,), 2, seed, device, PRECISIONS[precision])["gflops"])
    peak_memory = torch.cuda.max_memory_allocated(device) if _is_cuda(device) else None
    timer.remove()
    with torch.no_grad():
        grouping = []
        for _ in range(3):
            _sync(device)
            start = time.perf_counter()
            make_patches(data.features, config.num_groups, config.group_size, config.fps_start)
            _sync(device)
            grouping.append(time.perf_counter() - start)
    flops = count_flops(module, optimizer, data, device, precision)
    profiled = [profile_step(module, optimizer, scheduler, data, clip, precision=precision)
                for _ in range(profile_steps) if not _is_cuda(device)]  # fmt: skip
    median = {k: statistics.median(t[k] for t in timed) for k in timed[0]}
    median["grouping"] = statistics.median(grouping)
    analytic = _sibling("bench_encoder").encoder_flops(config, batch, gaussian_branch=config.gaussian_branch,
                                                        inference_path=False)  # fmt: skip
    params = sum(p.numel() for p in module.parameters())
    return {
        "workload": {"model": model, "batch": batch, "device": str(device), "precision": precision,
                     "num_gaussians": config.num_gaussians,
                     "num_groups": config.num_groups, "group_size": config.group_size, "embed_dim": config.embed_dim,
                     "width": config.width, "depth": config.depth, "parameters": params, "clip": clip,
                     "steps": steps, "patch_dropout": config.patch_dropout, "drop_path_rate": config.drop_path_rate},
        "seconds": median,
        "all_step_seconds": [t["step"] for t in timed],
        "objects_per_s": batch / median["step"],
        "flops": flops,
        "analytic_forward_flops": analytic,
        "profile": profiled[0] if profiled else None,
        "peaks_between_steps": between,
        "peak_memory_bytes": peak_memory,
    }  # fmt: skip


def tqdm_range(n: int, desc: str):
    from tqdm import tqdm

    return tqdm(range(n), desc=desc, leave=False, disable=n < 2)


# ---------------------------------------------------------------------------- data wait
class StepClock(Callback):
    """Per training step: ``wait_s`` (end of the previous step to the start of this one: waiting for
    the loader) and ``cycle_s`` (start of the previous step to the start of this one), in ``steps``."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self._start: float | None = None
        self._end: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._start is not None and self._end is not None:
            self.steps.append(
                {"step": int(trainer.global_step), "wait_s": now - self._end, "cycle_s": now - self._start}
            )
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()


def run_data_wait(
    config_path: Path,
    data: str | None,
    steps: int,
    workers: int | None,
    skip: int,
    seed: int,
    cache_dir: str | None,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict:
    """Fit the quick-start model for ``steps`` steps with ``workers`` loader processes on ``device`` in ``precision``;
    the data-wait share.

    Returns:
        ``num_workers``, ``dataset_root``, ``steps_used``, ``mean_wait_s``, ``max_wait_s`` (and its
        ``max_wait_step``), ``mean_cycle_s``, ``objects_per_s`` (batch / mean cycle), ``wait_share``,
        ``per_step`` (step, wait, cycle).
    """
    import yaml
    from lightning.pytorch import Trainer, seed_everything

    from clip_gs.errors import ConfigError
    from clip_gs.lightning import CLIPGSModule, GaussianDataModule

    cfg = yaml.safe_load(config_path.read_text())
    model_cfg, data_cfg, trainer_cfg = dict(cfg["model"]), dict(cfg["data"]), dict(cfg.get("trainer") or {})
    if data is not None:
        data_cfg["root"] = data
    if workers is not None:
        data_cfg["num_workers"] = workers
    if cache_dir is not None:
        data_cfg["cache_dir"] = cache_dir
    if steps <= skip:
        raise ConfigError(f"--data-steps {steps} must exceed --skip-steps {skip}")
    seed_everything(cfg.get("seed_everything", seed), verbose=False)
    dm = GaussianDataModule(**data_cfg)
    dm.prepare_data()  # builds synthetic:<N> once; outside the timed fit
    model_cfg["config"] = dict(model_cfg.get("config") or {}) | {"num_gaussians": data_cfg["num_gaussians"]}
    module = CLIPGSModule(**model_cfg)
    clock = StepClock()
    accelerator = "gpu" if _is_cuda(device) else "cpu"
    trainer = Trainer(max_steps=steps, accelerator=accelerator, devices=1, precision=LIGHTNING_PRECISION[precision],
                      gradient_clip_val=trainer_cfg.get("gradient_clip_val"), logger=False, callbacks=[clock],
                      enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=dm)
    batch = data_cfg["batch_size"]
    per_step = [r for r in clock.steps if r["step"] >= skip]
    if not per_step:
        raise ConfigError(f"no timed step after step {skip} in {steps} steps")
    waits = [r["wait_s"] for r in per_step]
    cycles = [r["cycle_s"] for r in per_step]
    worst = max(per_step, key=lambda r: r["wait_s"])
    return {
        "num_workers": data_cfg["num_workers"],
        "dataset_root": dm.dataset_root,
        "batch_size": batch,
        "model": model_cfg.get("model"),
        "steps_used": len(per_step),
        "mean_wait_s": statistics.fmean(waits),
        "median_wait_s": statistics.median(waits),
        "max_wait_s": worst["wait_s"],
        "max_wait_step": worst["step"],
        "mean_cycle_s": statistics.fmean(cycles),
        "objects_per_s": batch / statistics.fmean(cycles),
        "wait_share": statistics.fmean(waits) / statistics.fmean(cycles),
        "per_step": per_step,
    }


# ---------------------------------------------------------------------------- report
def print_report(result: dict) -> None:
    m = result["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    print(f"command: {result['command']}")
    print(f"date: {result['date']}")
    print(
        f"cpu: {m['cpu']}; flags: {flags}; torch kernels: {m['torch_cpu_capability']}; native bf16: {m['native_bf16']}"
    )
    print(f"torch {m['torch']}, python {m['python']}, threads={m['threads']}, "
          f"load average at start {m['loadavg'][0]:.2f} / end {result['loadavg_end'][0]:.2f} (1 min)")  # fmt: skip
    if "gpu" in m:
        print(f"device: {result['device']} ({m['gpu']}, CUDA {m['cuda']}); precision {result['precision']}")
    peaks = result["peaks"]
    kind = result["precision"]
    by_size = ", ".join(f"{s}: {g:.0f}" for s, g in peaks["before"]["by_size"].items())
    between = " / ".join(f"{g:.1f}" for g in peaks["between_steps"]) or "-"
    print(f"{kind} matmul peak on {result['device']}: {peaks['gflops']:.1f} GFLOP/s (best of before {peaks['before']['gflops']:.1f}, "
          f"2048^2 after each timed step {between}, after {peaks['after']['gflops']:.1f}; before, by size: "
          f"{by_size})")  # fmt: skip
    print()

    t = result.get("train")
    if t is not None:
        w, s, fl = t["workload"], t["seconds"], t["flops"]
        print(f"1. training step: {w['model']} (width {w['width']}, depth {w['depth']}, {w['parameters'] / 1e6:.1f} M "
              f"parameters), B={w['batch']} x N={w['num_gaussians']} -> G={w['num_groups']} x K={w['group_size']}, "
              f"E={w['embed_dim']}, {w['precision']} on {w['device']}, train mode, AdamW + clip {w['clip']}; median of "
              f"{w['steps']} steps after 1 warm-up")  # fmt: skip
        achieved = fl["total"] / s["step"] / 1e9
        share = achieved / peaks["gflops"]
        rows = [
            ("step (forward + loss + backward + optimiser)", f"{s['step']:.2f} s", f"{t['objects_per_s']:.3f}",
             f"{fl['total'] / 1e9:.0f}", f"{achieved:.1f}", f"{100 * share:.1f}%"),
            ("  forward", f"{s['forward']:.2f} s", "", f"{fl['forward'] / 1e9:.0f}",
             f"{fl['forward'] / s['forward'] / 1e9:.1f}", f"{100 * fl['forward'] / s['forward'] / 1e9 / peaks['gflops']:.1f}%"),
            ("    tokenizer (incl. grouping)", f"{s['tokenizer']:.2f} s", "", f"{fl['forward_tokenizer'] / 1e9:.0f}",
             f"{fl['forward_tokenizer'] / s['tokenizer'] / 1e9:.1f}", ""),
            ("      grouping (FPS + kNN, separate call)", f"{s['grouping']:.2f} s", "", "-", "", ""),
            ("    transformer blocks", f"{s['transformer']:.2f} s", "", f"{fl['forward_transformer'] / 1e9:.0f}",
             f"{fl['forward_transformer'] / s['transformer'] / 1e9:.1f}",
             f"{100 * fl['forward_transformer'] / s['transformer'] / 1e9 / peaks['gflops']:.1f}%"),
            ("  loss", f"{s['loss'] * 1e3:.0f} ms", "", "", "", ""),
            ("  backward", f"{s['backward']:.2f} s", "", f"{fl['backward'] / 1e9:.0f}",
             f"{fl['backward'] / s['backward'] / 1e9:.1f}", f"{100 * fl['backward'] / s['backward'] / 1e9 / peaks['gflops']:.1f}%"),
            ("  optimiser (clip + AdamW + schedule)", f"{s['optimizer']:.2f} s", "", "", "", ""),
        ]  # fmt: skip
        _table(("part", "time", "objects/s", "GFLOP", "GFLOP/s", f"% {kind} pk"), rows)
        goal = "met" if share >= 0.5 else "NOT met"
        if t.get("peak_memory_bytes") is not None:
            print(f"   peak memory allocated over the timed steps: {t['peak_memory_bytes'] / 2**30:.2f} GiB")
        print(f"   share of the {kind} matmul peak: {100 * share:.1f}% (goal >= 50%: {goal}); "
              f"all timed steps: {', '.join(f'{x:.2f}' for x in t['all_step_seconds'])} s")  # fmt: skip
        print(f"   FLOPs: FlopCounterMode, executed, forward + backward (2 per multiply-add); the CPU attention kernel "
              f"added by this script: {fl['attention_added'] / 1e9:.1f} GFLOP; forward vs the analytic count "
              f"(bench_encoder.encoder_flops): {fl['forward'] / t['analytic_forward_flops']:.3f}; backward / forward "
              f"{fl['backward'] / fl['forward']:.2f}")  # fmt: skip
        print("   not counted: FPS / kNN grouping, serialization sorts, norms, activations, softmax, elementwise ops, "
              "optimiser; the times above include them")  # fmt: skip
        if max(fl["forward_transformer"] / s["transformer"], fl["backward"] / s["backward"]) / 1e9 > peaks["gflops"]:
            print("   a part ran above the measured peak: the peak was measured while other jobs loaded the machine; "
                  "every share here is then too high (each part's time is a median over steps, taken separately)")  # fmt: skip
        ops = sorted(fl["by_op"].items(), key=lambda kv: -kv[1])
        print("   counted by op: " + ", ".join(f"{k.removeprefix('aten.')} {v / 1e9:.0f}" for k, v in ops) + " GFLOP")
        p = t.get("profile")
        if p is None and result["device"] != "cpu":
            print("   torch.profiler: CPU only, left out on this device")
        if p:
            print(
                f"   torch.profiler, one more step ({p['step_s']:.2f} s under the profiler), top ops by self CPU time:"
            )
            for r in p["top"]:
                print(f"     {r['op'][:58]:58s} {r['self_s']:7.2f} s {100 * r['self_s'] / p['self_total_s']:5.1f}% "
                      f"{r['calls']:6d} calls")  # fmt: skip
        print()

    waits = result.get("data_wait") or []
    if waits:
        d0 = waits[0]
        print(f"2. data wait, quick-start configuration ({result['config']}): {d0['model']}, batch {d0['batch_size']}, "
              f"data {d0['dataset_root']}; steps after the first {result['skip_steps']} (train/data_wait_s, "
              f"cycle = batch / train/objects_per_s)")  # fmt: skip
        rows = [
            (f"num_workers={d['num_workers']}" + (" (configured)" if i == 0 and result["workers_configured"] else ""),
             str(d["steps_used"]), f"{d['mean_cycle_s']:.3f} s", f"{d['objects_per_s']:.2f}",
             f"{d['mean_wait_s'] * 1e3:.1f} ms", f"{d['median_wait_s'] * 1e3:.1f} ms",
             f"{d['max_wait_s'] * 1e3:.0f} ms @{d['max_wait_step']}", f"{100 * d['wait_share']:.1f}%",
             "met" if d["wait_share"] < 0.05 else "NOT met")
            for i, d in enumerate(waits)
        ]  # fmt: skip
        _table(("loader", "steps", "cycle", "objects/s", "mean wait", "median wait", "max wait", "wait share", "< 5%"),
               rows)  # fmt: skip
    for failure in result.get("failures", []):
        print(f"FAILED: {failure}")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = (
        "| " + " | ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))) + " |"
    )
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clip-gs-base", help="registered configuration of the training step")
    parser.add_argument("--num-gaussians", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=512)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--embed-dim", type=int, default=1024, help="teacher width (EVA02-E-14-plus: 1024)")
    parser.add_argument("--batch", type=int, default=2, help="objects per training step")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (after 1 warm-up)")
    parser.add_argument("--clip", type=float, default=5.0, help="gradient clipping by global norm (0: off)")
    parser.add_argument("--profile-steps", type=int, default=1, choices=(0, 1), help="profiled steps (0: skip)")
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=list(PEAK_SIZES))
    parser.add_argument("--peak-repeats", type=int, default=3)
    parser.add_argument("--config", type=Path, default=QUICKSTART, help="the quick-start config for the data wait")
    parser.add_argument("--data", default=None, help="dataset root for the data wait (default: the config's data.root)")
    parser.add_argument(
        "--cache-dir", default=None, help="data.cache_dir (where synthetic:<N> is built; default: the library's)"
    )
    parser.add_argument("--data-steps", type=int, default=30, help="Trainer steps per loader setting (0: skip)")
    parser.add_argument("--skip-steps", type=int, default=2, help="first steps left out of the data wait")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="num_workers values to compare (default: the config's, then 0 and 2)")  # fmt: skip
    parser.add_argument("--skip-train", action="store_true", help="only the peak and the data wait")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for everything")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="fp32, or bf16 (autocast in bfloat16 for forward and loss; bf16 matmul peak)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if _is_cuda(args.device) and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    dtype = PRECISIONS[args.precision]

    import yaml

    from clip_gs.errors import ClipGSError

    configured = int(yaml.safe_load(args.config.read_text())["data"]["num_workers"])
    workers = args.workers if args.workers is not None else list(dict.fromkeys([configured, 0, 2]))
    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(argv),
        "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "machine": machine_facts(args.device),
        "device": args.device,
        "precision": args.precision,
        "config": str(args.config),
        "skip_steps": args.skip_steps,
        "workers_configured": workers[0] == configured,
        "failures": [],
    }
    before = matmul_peak(tuple(args.peak_sizes), args.peak_repeats, args.seed, args.device, dtype)
    if not args.skip_train:
        result["train"] = run_train_step(args.model, args.num_gaussians, args.groups, args.group_size, args.embed_dim,
                                         args.batch, args.steps, args.clip, args.profile_steps, args.seed,
                                         args.device, args.precision)  # fmt: skip
    after = matmul_peak(tuple(args.peak_sizes), args.peak_repeats, args.seed, args.device, dtype)
    between = result["train"]["peaks_between_steps"] if "train" in result else []
    best = max([before["gflops"], after["gflops"], *between])
    result["peaks"] = {"gflops": best, "before": before, "after": after, "between_steps": between}
    result["data_wait"] = []
    if args.data_steps > 0:
        for w in workers:
            try:
                result["data_wait"].append(run_data_wait(args.config, args.data, args.data_steps, w, args.skip_steps,
                                                         args.seed, args.cache_dir, args.device,
                                                         args.precision))  # fmt: skip
            except (ClipGSError, RuntimeError, OSError, ValueError) as exc:  # reported; the other settings still run
                result["failures"].append(f"data wait with num_workers={w}: {type(exc).__name__}: {exc}")
    result["loadavg_end"] = list(os.getloadavg())
    print_report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
