"""The GPU check's steps, one per process (run by ``benchmarks/gpu_check.py``, in the order given there).

``python benchmarks/gpu_steps.py STEP --work DIR --result FILE [--inputs DIR]``

Each step writes its numbers to ``--result`` as one JSON object (with ``reason`` when it fails) and
exits with 0 (ok) or 1 (failed). ``CLIP_GS_GPU_CHECK_RASTERIZER`` says what renders on CUDA:
``gsplat`` (its compile step succeeded) or ``torch`` (the pure-PyTorch rasterizer on CUDA; the rows
say so). Steps and the rules each applies:

- ``preflight``: GPU (``nvidia-smi``, torch), Python, torch / CUDA versions, compilers (nvcc, gcc,
  g++, ninja), importability of every module in :data:`CHECK_MODULES`, the distributions of the
  bundle, free disk, the prepared inputs (``gpu_inputs.read_inputs``). Writes ``preflight.json``
  beside the result; fails when a module does not import.
- ``gsplat-compile``: imports gsplat's CUDA extension (compiled on first use into
  ``TORCH_EXTENSIONS_DIR``, or loaded from there) and renders once; fails when gsplat finds no
  CUDA toolkit.
- ``gsplat-parity``: one scene (:data:`PARITY_GAUSSIANS` random Gaussians, SH degree 1,
  :data:`PARITY_CAMERAS` cameras of :data:`PARITY_SIZE` px, opacities under both alpha clamps),
  rendered on CUDA and by the CPU backends ``torch`` and ``numba``; a fixed random weighting of
  rgb, alpha and depth is back-propagated. Compared: rgb, alpha (mean absolute difference at most
  :data:`VALUE_MEAN_ABS_MAX`), depth where alpha > 0.5 (at most :data:`DEPTH_MEAN_ABS_MAX`), and the
  gradients of means, quats, scales, opacities, colors and the screen-space ``means2d`` that
  densification reads (cosine at least :data:`GRAD_COSINE_MIN`, relative L2 error at most
  :data:`GRAD_REL_L2_MAX`; ``means2d`` against numba only, the torch backend has no screen-space
  output). The CPU pair torch / numba is printed as the noise floor. All numbers go to ``parity.json``.
- ``cuda-tests``: pytest on :data:`CUDA_TEST_FILES`, keeping only the tests marked
  ``requires_cuda`` (``tests/conftest.py``); fails when one fails, errors or is skipped, or none ran.
- ``paper-fit``: the paper's fit on CUDA from the prepared views (:data:`PAPER_ITERATIONS`, SH 0,
  the inputs' cap and seed) after a :data:`FIT_WARMUP_ITERATIONS`-iteration warm-up fit; seconds,
  held-out PSNR / SSIM, the goals (:data:`PAPER_GOAL_SECONDS`, :data:`PAPER_GOAL_PSNR`), and the CPU
  reference of the inputs. When the reference ran another schedule, CUDA also fits at that one. It
  fails when CUDA's PSNR at the reference's schedule is more than :data:`FIT_PSNR_DROP_MAX` dB under
  the CPU's (the goals are reported, not enforced). Needs gsplat: the fit's densification reads
  screen-space gradients, which the torch rasterizer does not give.
- ``train-throughput``: ``bench_train_step.run_train_step`` with clip-gs-base at 10K Gaussians, bf16
  on CUDA, :data:`TRAIN_STEPS` timed steps at each of :data:`TRAIN_BATCHES`; ms/step, objects/s, peak
  memory, share of the bf16 matmul peak (:data:`TRAIN_PEAK_SIZE` products).
- ``lightning-fit``: ``clip-gs fit`` of the quick-start configuration on ``synthetic:``
  :data:`LIGHTNING_OBJECTS`, GPU, bf16-mixed, :data:`LIGHTNING_STEPS` steps, then its export and
  test; fails without an exported model.
- ``prepare-cuda``: the cost model of ``prepare`` on CUDA (``bench_prepare.measure`` with the paper's
  prepare config, the offline teacher, ``synthetic:`` :data:`PREPARE_OBJECTS` objects of
  :data:`PREPARE_VIEWS` views): CPU core-seconds and GPU-seconds per object of each stage. Blender does
  not run there (its wheels are for CPython 3.11), so the fit's GPU column of the paper's settings is
  ``paper-fit``'s; fails when an object failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
QUICKSTART = REPO / "examples" / "configs" / "quickstart.yaml"
for path in (str(HERE), str(REPO)):  # the sibling scripts, and the tests package for cuda-tests
    if path not in sys.path:
        sys.path.insert(0, path)

CUDA_TEST_FILES = ("tests/ops/test_curves.py", "tests/model/test_model.py", "tests/ops/test_ops.py", "tests/render/test_render.py")
"""The test files holding tests marked ``requires_cuda`` (tests/test_gpu_check.py keeps this list exact)."""
CHECK_MODULES = (
    "torch", "numpy", "pytest", "gsplat", "gsplat.strategy", "torchmetrics.functional.image",
    "clip_gs", "clip_gs.cli", "clip_gs.render", "clip_gs.render.gsplat_backend", "clip_gs.render.numba_backend",
    "clip_gs.fitting", "clip_gs.gaussians", "clip_gs.lightning", "clip_gs.lightning.cli", "clip_gs.model.folder",
    "clip_gs.data.prepare", "clip_gs.data.object_work", "clip_gs.teachers", "clip_gs.errors",
    "gpu_bundle", "gpu_inputs", "run", "bench_encoder", "bench_train_step", "bench_prepare",
    "tests.conftest", *(f.removesuffix(".py").replace("/", ".") for f in CUDA_TEST_FILES),
)  # fmt: skip
"""Every module the steps import (the preflight imports each, and records what they import)."""
OWN_FOLDERS = ("src", "benchmarks", "tests")
"""This checkout's code, as the preflight's import trace tells it from installed packages."""

SMI_FIELDS = "name,memory.total,driver_version,clocks.sm,clocks.max.sm"
"""What the preflight asks ``nvidia-smi --query-gpu`` for."""
COMPILERS = ("nvcc", "gcc", "g++", "ninja")
"""Programs whose ``--version`` the preflight records (gsplat's compile needs all four)."""
ENV_REPORTED = (
    "PYTHONPATH",
    "CUDA_HOME",
    "TORCH_EXTENSIONS_DIR",
    "TORCH_CUDA_ARCH_LIST",
    "MAX_JOBS",
    "CLIP_GS_GPU_CHECK_RASTERIZER",
)
"""Environment variables the preflight records."""

PARITY_GAUSSIANS = 20_000
PARITY_CAMERAS = 3
PARITY_SIZE = (128, 96)
"""Width and height of the parity scene's cameras."""
VALUE_MEAN_ABS_MAX = 2e-3
"""Largest mean |difference| of rgb and alpha between CUDA and a CPU backend (the CUDA test's bound)."""
DEPTH_MEAN_ABS_MAX = 1e-2
"""Largest mean |difference| of depth where alpha > 0.5 (the CUDA test's bound)."""
GRAD_COSINE_MIN = 0.99
"""Smallest cosine between a CUDA gradient and the CPU backend's (a bound chosen before any GPU ran)."""
GRAD_REL_L2_MAX = 0.05
"""Largest ``|g_cuda - g_cpu| / |g_cpu|`` of a gradient (a bound chosen before any GPU ran)."""

PAPER_ITERATIONS = 5000
PAPER_GOAL_SECONDS = 30.0
PAPER_GOAL_PSNR = 33.0
FIT_WARMUP_ITERATIONS = 20
"""A short fit first, so that CUDA's start-up and gsplat's load stay out of the timed one."""
FIT_PSNR_DROP_MAX = 1.0
"""The paper-fit step fails when CUDA's held-out PSNR is this many dB under the CPU's at the same schedule."""

TRAIN_BATCHES = (16, 64)
TRAIN_STEPS = 10
TRAIN_PEAK_SIZE = 8192
"""Side of the bf16 matrices of the matmul peak on the GPU (fills an H200)."""

LIGHTNING_OBJECTS = 200
LIGHTNING_STEPS = 50

PREPARE_OBJECTS = 400
PREPARE_VIEWS = 8


class StepFailed(Exception):
    """A step's own check failed: its numbers are written with the reason, and it exits with 1."""

    def __init__(self, reason: str, numbers: dict | None = None) -> None:
        super().__init__(reason)
        self.numbers = numbers or {}


def _rasterizer() -> str:
    """``gsplat`` or ``torch`` (``CLIP_GS_GPU_CHECK_RASTERIZER``); for ``torch``, ``backend="auto"`` stops picking
    gsplat in this process."""
    name = os.environ.get("CLIP_GS_GPU_CHECK_RASTERIZER", "gsplat")
    if name == "torch":
        from clip_gs.render import gsplat_backend

        gsplat_backend.gsplat_available = lambda: False
    return name


def _command(cmd: list[str], timeout: float = 30) -> str | None:
    """A command's output lines joined by ``; `` (at most 300 characters); None when the program is missing."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"error: {exc}"
    text = "; ".join(line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip())
    return text[:300] if result.returncode == 0 else f"exit {result.returncode}: {text[:300]}"


# ---------------------------------------------------------------------------- preflight
class ImportTrace:
    """A meta-path finder that finds nothing: it records, for every module looked up, the top-level package
    of the importing code and of the module (``edges``)."""

    def __init__(self) -> None:
        self.edges: set[tuple[str, str]] = set()

    def find_spec(self, name: str, path=None, target=None) -> None:
        frame = sys._getframe(1)
        while frame is not None and (
            "importlib" in frame.f_code.co_filename or frame.f_code.co_filename.startswith("<")
        ):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        self.edges.add((importer.split(".")[0], name.split(".")[0]))

    def report(self) -> dict:
        """``edges`` between loaded top-level modules (``__main__`` is this script), the top-level names of
        this checkout's loaded modules (``own_modules``) and their files (``own_files``, relative paths)."""
        loaded = {name.split(".")[0] for name in sys.modules} | {"__main__"}
        own_files, own_modules = set(), {"__main__"}
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and any(Path(file).resolve().is_relative_to(REPO / folder) for folder in OWN_FOLDERS):
                own_files.add(Path(file).resolve().relative_to(REPO).as_posix())
                own_modules.add(name.split(".")[0])
        edges = sorted([a, b] for a, b in self.edges if a in loaded and b in loaded and a != b)
        return {"edges": edges, "own_modules": sorted(own_modules), "own_files": sorted(own_files)}


def step_preflight(args) -> dict:
    from importlib import metadata

    trace = ImportTrace()
    sys.meta_path.insert(0, trace)
    imports = {}
    for name in CHECK_MODULES:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
            imports[name] = {"ok": True, "seconds": round(time.perf_counter() - start, 2)}
        except Exception as exc:  # noqa: BLE001 - an import can raise anything; reported, module by module
            imports[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    import torch
    from gpu_bundle import BUNDLE

    distributions = {}
    for name in (*BUNDLE, "torch", "lightning", "numba", "numpy", "timm", "torchmetrics", "pytest"):
        try:
            dist = metadata.distribution(name)
            distributions[name] = {"version": dist.version, "location": str(dist.locate_file(""))}
        except metadata.PackageNotFoundError:
            distributions[name] = None
    available = bool(torch.cuda.is_available())
    cuda = {"available": available, "torch_cuda": torch.version.cuda,
            "reason": None if available else "torch.cuda.is_available() is False"}  # fmt: skip
    if available:
        props = torch.cuda.get_device_properties(0)
        cuda |= {"devices": torch.cuda.device_count(), "name": props.name,
                 "capability": list(torch.cuda.get_device_capability(0)),
                 "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
                 "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    from torch.utils.cpp_extension import CUDA_HOME

    inputs = {"folder": str(args.inputs)}
    try:
        from gpu_inputs import folder_bytes, read_inputs

        read = read_inputs(args.inputs)
        inputs |= {"ok": True, "mib": round(folder_bytes(args.inputs) / 2**20, 2), "settings": read.settings}
    except Exception as exc:  # noqa: BLE001 - reported; the paper fit is then skipped with this reason
        inputs |= {"ok": False, "reason": f"{type(exc).__name__}: {exc}"[:500]}
    sys.meta_path.remove(trace)  # the trace covers the imports above and the inputs' reading
    disk = {}
    for name, path in (("repo", REPO), ("work", args.work), ("tmp", Path("/tmp"))):
        usage = shutil.disk_usage(path)
        disk[name] = {"free_gib": round(usage.free / 2**30, 1), "total_gib": round(usage.total / 2**30, 1)}
    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "torch": torch.__version__,
        "cuda": cuda,
        "nvidia_smi": _command(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader"]),
        "compilers": {"cuda_home": CUDA_HOME, **{name: _command([name, "--version"]) for name in COMPILERS}},
        "cpus": os.cpu_count(),
        "imports": imports,
        "distributions": distributions,
        "disk": disk,
        "inputs": inputs,
        "env": {k: os.environ.get(k) for k in ENV_REPORTED},
        "import_trace": trace.report(),
    }
    from gpu_check import PREFLIGHT

    (args.work / PREFLIGHT).write_text(json.dumps(report, indent=2, default=str))
    failed = sorted(name for name, r in imports.items() if not r["ok"])
    summary = {"gpu": cuda.get("name"), "cuda_available": available, "torch": torch.__version__,
               "torch_cuda": torch.version.cuda, "python": platform.python_version(),
               "nvcc": report["compilers"]["nvcc"], "imports_failed": failed, "inputs_ok": inputs["ok"],
               "disk_free_gib": {k: v["free_gib"] for k, v in disk.items()}}  # fmt: skip
    if failed:
        errors = ", ".join(f"{name} ({imports[name]['error']})" for name in failed)
        raise StepFailed(f"modules that do not import: {errors}", summary)
    return summary


# ---------------------------------------------------------------------------- gsplat
def _extensions() -> list[Path]:
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    return sorted(root.glob("**/gsplat_cuda.so"))


def step_gsplat_compile(args) -> dict:
    import torch

    cached = bool(_extensions())
    start = time.perf_counter()
    from gsplat.cuda import _backend

    load_s = time.perf_counter() - start
    if _backend._C is None:
        raise StepFailed("gsplat did not build its CUDA extension (it found no CUDA toolkit; see the log)",
                         {"load_s": round(load_s, 1)})  # fmt: skip
    from clip_gs.render import orbit_cameras, rasterize

    start = time.perf_counter()
    cams = orbit_cameras(1, width=64, height=64)
    n = 256
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(n, 3, generator=gen) * 0.3, torch.randn(n, 4, generator=gen), torch.full((n, 3), 0.05),
               torch.full((n,), 0.5), torch.rand(n, 3, generator=gen), cams.viewmats, cams.Ks]  # fmt: skip
    out = rasterize(*(t.cuda() for t in tensors), 64, 64, backend="gsplat")
    alpha = float(out.alpha.mean())
    torch.cuda.synchronize()
    so = _extensions()
    return {"cached": cached, "load_s": round(load_s, 1), "first_render_s": round(time.perf_counter() - start, 2),
            "alpha_mean": alpha, "so_path": str(so[0]) if so else None, "so_bytes": so[0].stat().st_size if so else None,
            "arch": os.environ.get("TORCH_CUDA_ARCH_LIST"), "max_jobs": os.environ.get("MAX_JOBS")}  # fmt: skip


# ---------------------------------------------------------------------------- parity
def parity_scene(seed: int = 0) -> dict:
    """The parity scene (CPU float32 tensors): Gaussians, SH degree 1 colours, cameras, background, loss weights."""
    import torch

    from clip_gs.render import orbit_cameras

    gen = torch.Generator().manual_seed(seed)
    n, (width, height) = PARITY_GAUSSIANS, PARITY_SIZE
    cams = orbit_cameras(PARITY_CAMERAS, width=width, height=height)
    return {
        "means": torch.randn(n, 3, generator=gen) * 0.4,
        "quats": torch.randn(n, 4, generator=gen),
        "scales": torch.rand(n, 3, generator=gen) * 0.03 + 0.005,
        "opacities": torch.rand(n, generator=gen) * 0.8 + 0.1,  # under both alpha clamps (0.99 and gsplat's 0.999)
        "colors": torch.randn(n, 4, 3, generator=gen) * 0.3,
        "viewmats": cams.viewmats.float(), "Ks": cams.Ks.float(), "width": width, "height": height,
        "background": torch.tensor([0.2, 0.3, 0.4]),
        "weights": [torch.rand(PARITY_CAMERAS, height, width, 3, generator=gen),
                    torch.rand(PARITY_CAMERAS, height, width, generator=gen),
                    torch.rand(PARITY_CAMERAS, height, width, generator=gen)],
    }  # fmt: skip


INPUTS = ("means", "quats", "scales", "opacities", "colors")


def render_with_grads(scene: dict, backend: str, device: str) -> dict:
    """Values and gradients of one backend on ``device`` (CPU tensors back); ``means2d`` when the backend gives it."""
    import torch

    from clip_gs.render import rasterize

    leaves = {k: scene[k].to(device).requires_grad_(True) for k in INPUTS}
    with_info = backend in ("numba", "gsplat")
    out = rasterize(*(leaves[k] for k in INPUTS), scene["viewmats"].to(device), scene["Ks"].to(device),
                    scene["width"], scene["height"], background=scene["background"].to(device), backend=backend,
                    with_info=with_info)  # fmt: skip
    if with_info:
        out.info["means2d"].retain_grad()
    w_rgb, w_alpha, w_depth = (w.to(device) for w in scene["weights"])
    loss = (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + (out.depth * w_depth).sum()
    loss.backward()
    if device != "cpu":
        torch.cuda.synchronize()
    result = {"rgb": out.rgb.detach().cpu(), "alpha": out.alpha.detach().cpu(), "depth": out.depth.detach().cpu()}
    result |= {f"grad_{k}": leaves[k].grad.detach().cpu() for k in INPUTS}
    if with_info:
        result["grad_means2d"] = out.info["means2d"].grad.detach().cpu()
        result["visible"] = (out.info["radii"] > 0).all(dim=-1).cpu()
    return result


def compare(a: dict, b: dict) -> dict:
    """Value and gradient differences of two :func:`render_with_grads` results, and what is out of bounds."""
    covered = b["alpha"] > 0.5
    numbers = {
        "rgb_mean_abs": float((a["rgb"] - b["rgb"]).abs().mean()),
        "alpha_mean_abs": float((a["alpha"] - b["alpha"]).abs().mean()),
        "depth_mean_abs_covered": float((a["depth"] - b["depth"])[covered].abs().mean()) if covered.any() else None,
    }
    bad = [f"{k} {numbers[k]:.2e} > {VALUE_MEAN_ABS_MAX}" for k in ("rgb_mean_abs", "alpha_mean_abs")
           if numbers[k] > VALUE_MEAN_ABS_MAX]  # fmt: skip
    depth = numbers["depth_mean_abs_covered"]
    if depth is not None and depth > DEPTH_MEAN_ABS_MAX:
        bad.append(f"depth {depth:.2e} > {DEPTH_MEAN_ABS_MAX}")
    for key in [k for k in a if k.startswith("grad_") and k in b]:
        x, y = a[key].double().flatten(), b[key].double().flatten()
        norm = float(y.norm())
        cosine = float(x @ y / (x.norm() * y.norm())) if norm > 0 and float(x.norm()) > 0 else None
        rel = float((x - y).norm() / norm) if norm > 0 else None
        numbers[key] = {"cosine": cosine, "rel_l2": rel, "max_abs": float((x - y).abs().max()), "norm": norm}
        if cosine is None or cosine < GRAD_COSINE_MIN or rel is None or rel > GRAD_REL_L2_MAX:
            bad.append(f"{key} cosine {cosine} rel_l2 {rel}")
    if "visible" in a and "visible" in b:
        numbers["visible_agreement"] = float((a["visible"] == b["visible"]).double().mean())
    numbers["out_of_bounds"] = bad
    return numbers


def step_gsplat_parity(args) -> dict:
    import torch

    rasterizer = _rasterizer()
    scene = parity_scene()
    rows = {f"{rasterizer}-cuda": render_with_grads(scene, rasterizer, "cuda"),
            "torch-cpu": render_with_grads(scene, "torch", "cpu"),
            "numba-cpu": render_with_grads(scene, "numba", "cpu")}  # fmt: skip
    device_row = f"{rasterizer}-cuda"
    pairs = {f"{device_row} vs numba-cpu": compare(rows[device_row], rows["numba-cpu"]),
             f"{device_row} vs torch-cpu": compare(rows[device_row], rows["torch-cpu"]),
             "torch-cpu vs numba-cpu (noise floor)": compare(rows["torch-cpu"], rows["numba-cpu"])}  # fmt: skip
    report = {"rasterizer": rasterizer, "gpu": torch.cuda.get_device_name(), "gaussians": PARITY_GAUSSIANS,
              "cameras": PARITY_CAMERAS, "size": list(PARITY_SIZE), "sh_degree": 1,
              "bounds": {"value_mean_abs": VALUE_MEAN_ABS_MAX, "depth_mean_abs": DEPTH_MEAN_ABS_MAX,
                         "grad_cosine_min": GRAD_COSINE_MIN, "grad_rel_l2_max": GRAD_REL_L2_MAX},
              "pairs": pairs}  # fmt: skip
    (args.work / "parity.json").write_text(json.dumps(report, indent=2))
    head = pairs[f"{device_row} vs numba-cpu"]
    summary = {"rasterizer": rasterizer, "rgb_mean_abs": head["rgb_mean_abs"], "alpha_mean_abs": head["alpha_mean_abs"],
               "grad_rel_l2": {k.removeprefix("grad_"): v["rel_l2"] for k, v in head.items() if k.startswith("grad_")},
               "grad_cosine": {k.removeprefix("grad_"): v["cosine"] for k, v in head.items() if k.startswith("grad_")},
               "visible_agreement": head.get("visible_agreement")}  # fmt: skip
    bad = [f"{name}: {'; '.join(p['out_of_bounds'])}" for name, p in pairs.items()
           if p["out_of_bounds"] and "noise floor" not in name]  # fmt: skip
    if bad:
        raise StepFailed(" | ".join(bad), summary)
    return summary


# ---------------------------------------------------------------------------- CUDA tests
class CudaTestsOnly:
    """pytest plugin: keeps the tests marked ``requires_cuda`` (``tests/conftest.py``) and records each outcome."""

    def __init__(self) -> None:
        self.selected: list[str] = []
        self.outcomes: dict[str, str] = {}
        self.skips: dict[str, str] = {}

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        mark = sys.modules["tests.conftest"].requires_cuda.mark
        keep = [item for item in items if any(m == mark for m in item.iter_markers("skipif"))]
        dropped = [item for item in items if item not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = keep
        self.selected = [item.nodeid for item in keep]

    def pytest_runtest_logreport(self, report) -> None:
        rank = {"passed": 0, "skipped": 1, "failed": 2}
        previous = self.outcomes.get(report.nodeid, "passed")
        if rank[report.outcome] >= rank[previous]:
            self.outcomes[report.nodeid] = report.outcome
        if report.skipped:
            longrepr = report.longrepr
            self.skips[report.nodeid] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def run_cuda_tests(collect_only: bool = False) -> CudaTestsOnly:
    """pytest on :data:`CUDA_TEST_FILES` with :class:`CudaTestsOnly` (in this process, from the repository root)."""
    import pytest

    plugin = CudaTestsOnly()
    argv = ["-q", "-rA", "-p", "no:cacheprovider", *(str(REPO / f) for f in CUDA_TEST_FILES)]
    pytest.main(argv + (["--collect-only"] if collect_only else []), plugins=[plugin])
    return plugin


def step_cuda_tests(args) -> dict:
    plugin = run_cuda_tests()
    counts = {k: sum(1 for v in plugin.outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
    numbers = {"selected": len(plugin.selected), **counts, "tests": plugin.outcomes, "skips": plugin.skips}
    problems = []
    if not plugin.selected:
        problems.append("no test marked requires_cuda was collected")
    if len(plugin.outcomes) < len(plugin.selected):
        problems.append(f"{len(plugin.selected) - len(plugin.outcomes)} selected tests did not report")
    if counts["failed"]:
        problems.append(f"{counts['failed']} failed")
    if counts["skipped"]:
        problems.append(f"{counts['skipped']} skipped: {plugin.skips}")
    if problems:
        raise StepFailed("; ".join(problems), numbers)
    return numbers


# ---------------------------------------------------------------------------- paper fit
def _fit(inputs, iterations: int) -> dict:
    from clip_gs.fitting import FitConfig, fit_gaussians

    s = inputs.settings
    config = FitConfig(iterations=iterations, sh_degree=0, max_gaussians=s["max_gaussians"], seed=s["seed"])
    result = fit_gaussians(inputs.train, inputs.init, config, held_out=inputs.test, device="cuda")
    return {"iterations": iterations, "seconds": round(result.seconds, 2), "psnr": result.psnr, "ssim": result.ssim,
            "num_gaussians": result.cloud.num_gaussians, "final_loss": result.losses[-1]}  # fmt: skip


def step_paper_fit(args) -> dict:
    from gpu_inputs import read_inputs

    rasterizer = _rasterizer()
    inputs = read_inputs(args.inputs)
    s, reference = inputs.settings, inputs.settings["reference"]
    warmup = _fit(inputs, FIT_WARMUP_ITERATIONS)
    paper = _fit(inputs, PAPER_ITERATIONS)
    same = paper if reference["iterations"] == PAPER_ITERATIONS else _fit(inputs, reference["iterations"])
    numbers = {
        "rasterizer": rasterizer, "mesh": s["mesh"], "size": s["size"], "views": s["views"], "held_out": s["held_out"],
        "warmup_s": warmup["seconds"], "paper": paper,
        "goals": {"seconds_max": PAPER_GOAL_SECONDS, "psnr_min": PAPER_GOAL_PSNR,
                  "seconds_met": paper["seconds"] <= PAPER_GOAL_SECONDS, "psnr_met": paper["psnr"] >= PAPER_GOAL_PSNR},
        "cpu_reference": reference,
        "at_reference_schedule": {"iterations": reference["iterations"], "cuda": same,
                                  "psnr_delta": same["psnr"] - reference["psnr"],
                                  "ssim_delta": same["ssim"] - reference["ssim"],
                                  "speedup": reference["seconds"] / same["seconds"] if same["seconds"] else None},
    }  # fmt: skip
    drop = reference["psnr"] - same["psnr"]
    if drop > FIT_PSNR_DROP_MAX:
        raise StepFailed(f"CUDA's held-out PSNR {same['psnr']:.2f} dB is {drop:.2f} dB under the CPU reference's "
                         f"{reference['psnr']:.2f} dB at {reference['iterations']} iterations", numbers)  # fmt: skip
    return numbers


# ---------------------------------------------------------------------------- training
def step_train_throughput(args) -> dict:
    import bench_train_step as bench
    import torch

    peak = bench.matmul_peak((TRAIN_PEAK_SIZE,), 5, 0, "cuda", torch.bfloat16)["gflops"]
    rows = []
    for batch in TRAIN_BATCHES:
        torch.cuda.empty_cache()
        r = bench.run_train_step("clip-gs-base", num_gaussians=10_000, num_groups=512, group_size=64, embed_dim=1024,
                                 batch=batch, steps=TRAIN_STEPS, clip=5.0, profile_steps=0, device="cuda",
                                 precision="bf16")  # fmt: skip
        step = r["seconds"]["step"]
        rows.append({"batch": batch, "ms_per_step": round(1e3 * step, 2), "objects_per_s": round(r["objects_per_s"], 1),
                     "peak_memory_gib": round(r["peak_memory_bytes"] / 2**30, 2),
                     "phases_ms": {k: round(1e3 * v, 2) for k, v in r["seconds"].items()},
                     "tflops": round(r["flops"]["total"] / step / 1e12, 1),
                     "share_of_bf16_peak": round(r["flops"]["total"] / step / 1e9 / peak, 3)})  # fmt: skip
        (args.work / f"train-throughput-batch{batch}.json").write_text(json.dumps(r, indent=2, default=str))
    return {"model": "clip-gs-base", "num_gaussians": 10_000, "precision": "bf16 (autocast)", "steps": TRAIN_STEPS,
            "bf16_matmul_peak_tflops": round(peak / 1e3, 1), "rows": rows}  # fmt: skip


def step_lightning_fit(args) -> dict:
    from clip_gs.cli import main
    from clip_gs.hub.folder import METRICS_NAME

    run = args.work / "lightning"
    export = run / "export"
    argv = ["fit", "--config", str(QUICKSTART), "--data.root", f"synthetic:{LIGHTNING_OBJECTS}",
            "--data.cache_dir", str(run / "data"), "--trainer.accelerator", "gpu", "--trainer.devices", "1",
            "--trainer.precision", "bf16-mixed", "--trainer.max_steps", str(LIGHTNING_STEPS),
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false",
            "--export.export_dir", str(export)]  # fmt: skip
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    files = sorted(p.name for p in export.iterdir()) if export.is_dir() else []
    metrics_path = export / METRICS_NAME
    metrics = json.loads(metrics_path.read_text()).get("metrics") if metrics_path.is_file() else None
    numbers = {"objects": LIGHTNING_OBJECTS, "steps": LIGHTNING_STEPS, "precision": "bf16-mixed",
               "seconds": round(seconds, 1), "exit_status": code, "export_files": files, "metrics": metrics}  # fmt: skip
    if code != 0 or not files:
        raise StepFailed(f"clip-gs fit exited with {code}; export folder files: {files or 'none'}", numbers)
    return numbers


# ---------------------------------------------------------------------------- prepare
def step_prepare_cuda(args) -> dict:
    import bench_prepare as bench

    result = bench.measure(f"synthetic:{PREPARE_OBJECTS}", ["--config", str(REPO / "examples/configs/prepare-paper.yaml"),
                           "--teacher", "synthetic-clip", "--device", "cuda", "--views", str(PREPARE_VIEWS)],
                           PREPARE_OBJECTS)  # fmt: skip
    n = max(1, result["objects"])
    numbers = {"rasterizer": _rasterizer(), "objects": result["objects"], "views": PREPARE_VIEWS,
               "cpu_s_per_object": {k: round(v / n, 3) for k, v in result["cpu"].items()},
               "gpu_s_per_object": {k: round(v / n, 3) for k, v in result["wall"].items()},
               "record_mb": round(result["record_bytes"] / n / 1e6, 3)}  # fmt: skip
    if result["failed"]:
        raise StepFailed(f"{len(result['failed'])} objects failed: {result['failed'][0]}", numbers)
    return numbers


UNI3D_MODELNET40_TOP1 = 86.1
"""Uni3D's README: ``uni3d-b-no-lvis`` zero-shot top-1 on ModelNet40."""


def step_uni3d_modelnet40(args) -> dict:
    """Uni3D-B-no-LVIS's published ModelNet40 zero-shot through clip-gs (``clip-gs eval`` with the ``uni3d``
    protocol); runs only where the network and the dataset are (see gpu_check.py)."""
    out = args.work / "uni3d-modelnet40"
    cmd = [sys.executable, "-m", "clip_gs", "eval", "--model", "uni3d-b-no-lvis", "--benchmark", "modelnet40",
           "--root", os.environ["CLIP_GS_MODELNET40"], "--task", "zeroshot", "--zeroshot-protocol", "uni3d",
           "--uni3d-data", os.environ["CLIP_GS_UNI3D_DATA"], "--device", "cuda", "--out", str(out), "--quiet"]  # fmt: skip
    subprocess.run(cmd, check=True)
    report = json.loads((out / "report.json").read_text())
    top1 = 100 * report["tasks"]["zeroshot"]["top1"]
    numbers = {"top1": round(top1, 2), "published_top1": UNI3D_MODELNET40_TOP1, "objects": report["num_objects"]}
    if abs(top1 - UNI3D_MODELNET40_TOP1) > 1.0:
        raise StepFailed(
            f"ModelNet40 top-1 {top1:.1f} is more than 1 point from Uni3D's {UNI3D_MODELNET40_TOP1}", numbers
        )
    return numbers


STEPS = {"preflight": step_preflight, "gsplat-compile": step_gsplat_compile, "gsplat-parity": step_gsplat_parity,
         "cuda-tests": step_cuda_tests, "paper-fit": step_paper_fit, "train-throughput": step_train_throughput,
         "lightning-fit": step_lightning_fit, "prepare-cuda": step_prepare_cuda,
         "uni3d-modelnet40": step_uni3d_modelnet40}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--work", type=Path, required=True, help="the check's work folder")
    parser.add_argument("--result", type=Path, required=True, help="JSON file for the step's numbers")
    parser.add_argument("--inputs", type=Path, default=REPO / ".gpu-inputs", help="prepared views (gpu_inputs.py)")
    args = parser.parse_args(argv)
    try:
        numbers = STEPS[args.step](args)
        code = 0
    except StepFailed as exc:
        numbers, code = {**exc.numbers, "reason": str(exc)}, 1
    except Exception as exc:  # noqa: BLE001 - a step's crash is its result: the reason, the traceback in the log
        traceback.print_exc()
        numbers, code = {"reason": f"{type(exc).__name__}: {exc}"[:2000]}, 1
    args.result.write_text(json.dumps(numbers, default=str))
    print(json.dumps(numbers, default=str)[:4000])
    return code


if __name__ == "__main__":
    sys.exit(main())
