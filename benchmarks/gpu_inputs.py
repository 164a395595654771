"""The paper fit's inputs for the GPU check, made on a CPU machine: Blender views of a mesh and the CPU reference.

The device machine cannot run Blender (``bpy`` is for CPython 3.11 and renders on the CPU) and reads
nothing beside the tree, so the views of the GPU check's ``paper-fit`` step are rendered here and
travel with the tree in a git-ignored folder (default ``.gpu-inputs/``)::

    .gpu-inputs/
      train/transforms.json, train/images/view_000.png ...   the training views (RGBA, 8 bit)
      test/transforms.json,  test/images/view_000.png ...    the held-out views
      init.ply                                               the starting Gaussians (3DGS PLY)
      reference.json                                         settings and the CPU reference fit

What is made (:func:`make_inputs`): Blender's Cycles renders ``--views`` training views spread over
the sphere and ``--held-out`` views between them at ``--size`` px (the paper: 36 views at 512 px;
:func:`~clip_gs.data.fitted.render_mesh_views`), the start is half the Gaussian cap of surface
samples (:func:`~clip_gs.data.fitted.init_from_mesh`), as in ``clip-gs fit-gaussians MESH``. The
reference fit then reads the written files back (the 8-bit images, the PLY start), exactly what the
device reads, and runs :func:`~clip_gs.fitting.fit_gaussians` on this CPU for
``--reference-iterations`` (default the paper's 5,000) at SH 0; its seconds, held-out PSNR and SSIM,
the machine and the command go to ``reference.json``.

Rules: the folder must stay under :data:`INPUTS_MAX_BYTES` (it travels in the device's 64 MiB with
the wheel bundle): a larger one is refused (:class:`~clip_gs.errors.ConfigError`). ``--out`` must be
empty or absent. Any mesh path works; the mesh itself is never copied (``reference.json`` keeps its
file name).

Run: ``python benchmarks/gpu_inputs.py ../shared/data/real/trimesh-models/Duck.glb`` (Blender's render
of 40 views at 512 px takes about 10 minutes on 2 cores; the 5,000-iteration CPU reference fit at
512 px, hours there: ``--reference-iterations`` sets a shorter one, and the GPU check then also fits
on CUDA at that schedule to compare like with like).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".gpu-inputs"
REFERENCE_NAME = "reference.json"
INIT_NAME = "init.ply"

INPUTS_MAX_BYTES = 16 * 2**20
"""Largest inputs folder accepted (with the wheel bundle's cap and the tree, under the 64 MiB that travel)."""
PAPER_ITERATIONS = 5000
"""The paper's fit: 5,000 iterations at SH degree 0."""
WARMUP_ITERATIONS = 5
"""A short fit before the reference one, so that its seconds leave out the CPU kernels' compilation."""
REFERENCE_FIELDS = {"mesh": str, "size": int, "views": int, "held_out": int, "max_gaussians": int,
                    "init_gaussians": int, "seed": int, "samples": int, "render_seconds": float,
                    "reference": dict}  # fmt: skip
"""``reference.json``'s fields and their types."""
RESULT_FIELDS = {"iterations": int, "sh_degree": int, "seconds": float, "psnr": float, "ssim": float,
                 "num_gaussians": int, "threads": int, "machine": str, "torch": str, "date": str,
                 "command": str}  # fmt: skip
"""The fields of its ``reference`` (the CPU fit) and their types."""


@dataclass(frozen=True)
class FitInputs:
    """The prepared inputs, read back (:func:`read_inputs`)."""

    folder: Path
    train: object  # PosedImages
    test: object  # PosedImages
    init: object  # GaussianCloud
    settings: dict


def _check_fields(data: object, fields: dict, where: str) -> None:
    from clip_gs.errors import ConfigError

    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key, kind in fields.items():
        if key not in data:
            raise ConfigError(f"{where}: field {key!r} is missing")
        value = data[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
            isinstance(value, kind) and not (kind is int and isinstance(value, bool)))  # fmt: skip
        if not ok:
            raise ConfigError(f"{where}: field {key!r} must be {kind.__name__}, got {value!r}")


def read_inputs(folder: Path) -> FitInputs:
    """Read and check a prepared inputs folder (the one reader: the GPU check's preflight and paper fit).

    Raises:
        ConfigError: ``reference.json`` missing, not JSON, or with a field missing or of the wrong
            type, or view counts / sizes that differ from it (names the file).
        PosedImagesError: unreadable views; GaussianFormatError: an unreadable ``init.ply``.
    """
    from clip_gs.errors import ConfigError

    folder = Path(folder)
    path = folder / REFERENCE_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: missing (make the inputs with python benchmarks/gpu_inputs.py MESH)")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    _check_fields(settings, REFERENCE_FIELDS, str(path))
    _check_fields(settings["reference"], RESULT_FIELDS, f"{path}: reference")
    return _read_views(folder, settings, path)


def _read_views(folder: Path, settings: dict, where: Path) -> FitInputs:
    """The views and the start of ``folder``, checked against ``settings`` (``where``: their file, for messages)."""
    from clip_gs.errors import ConfigError
    from clip_gs.fitting import read_posed_images
    from clip_gs.gaussians import load_gaussians

    train, test = read_posed_images(folder / "train"), read_posed_images(folder / "test")
    for posed, count, name in ((train, settings["views"], "train"), (test, settings["held_out"], "test")):
        if len(posed) != count or posed.cameras.width != settings["size"] or posed.cameras.height != settings["size"]:
            raise ConfigError(f"{folder / name}: {len(posed)} views of {posed.cameras.width} x {posed.cameras.height} "
                              f"px, {where} says {count} of {settings['size']} px")  # fmt: skip
    init = load_gaussians(folder / INIT_NAME)
    if init.num_gaussians != settings["init_gaussians"]:
        raise ConfigError(
            f"{folder / INIT_NAME}: {init.num_gaussians} Gaussians, {where} says {settings['init_gaussians']}"
        )
    return FitInputs(folder, train, test, init, settings)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def reference_fit(inputs: FitInputs, iterations: int, threads: int, command: str) -> dict:
    """The CPU fit of ``inputs`` (SH 0, the inputs' cap and seed) as ``reference.json`` records it."""
    import torch

    from clip_gs.fitting import FitConfig, fit_gaussians

    torch.set_num_threads(threads)
    s = inputs.settings
    config = FitConfig(iterations=iterations, sh_degree=0, max_gaussians=s["max_gaussians"], seed=s["seed"])
    warmup = FitConfig(iterations=WARMUP_ITERATIONS, sh_degree=0, max_gaussians=s["max_gaussians"], seed=s["seed"])
    fit_gaussians(inputs.train, inputs.init, warmup, device="cpu")  # compiles the CPU kernels outside the timing
    result = fit_gaussians(inputs.train, inputs.init, config, held_out=inputs.test, device="cpu")
    return {"iterations": iterations, "sh_degree": 0, "seconds": round(result.seconds, 2), "psnr": result.psnr,
            "ssim": result.ssim, "num_gaussians": result.cloud.num_gaussians, "threads": threads,
            "machine": f"{platform.machine()} {_cpu_model()}", "torch": torch.__version__,
            "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "command": command}  # fmt: skip


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def make_inputs(mesh: Path, out: Path, size: int, views: int, held_out: int, max_gaussians: int, samples: int,
                seed: int, reference_iterations: int, threads: int, command: str) -> dict:  # fmt: skip
    """Render, write, read back and fit (see the module docstring); returns ``reference.json``'s content.

    Raises:
        ConfigError: ``out`` is not empty, or the folder came out over :data:`INPUTS_MAX_BYTES`.
    """
    from clip_gs.data.fitted import init_from_mesh, render_mesh_views
    from clip_gs.errors import ConfigError
    from clip_gs.fitting import write_posed_images
    from clip_gs.gaussians import save_gaussians

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: not empty; give an empty or new folder")
    if views < 1 or held_out < 1 or size < 1 or max_gaussians < 2 or reference_iterations < 1:
        raise ConfigError(f"{mesh}: views, held-out views, size and reference iterations must be >= 1 and the cap >= 2, "
                          f"got {views}, {held_out}, {size}, {reference_iterations} and {max_gaussians}")  # fmt: skip
    start = time.perf_counter()
    train, test, world = render_mesh_views(mesh, views, held_out, size, samples, seed=seed)
    render_seconds = time.perf_counter() - start
    extra = {"clip_gs": {"mesh": mesh.name, "world": world.tolist(), "renderer": "blender-cycles"}}
    write_posed_images(out / "train", train, extra=extra)
    write_posed_images(out / "test", test, extra=extra)
    init = init_from_mesh(mesh, max_gaussians // 2, world, seed=seed)
    save_gaussians(init, out / INIT_NAME)
    settings = {"mesh": mesh.name, "size": size, "views": views, "held_out": held_out, "max_gaussians": max_gaussians,
                "init_gaussians": init.num_gaussians, "seed": seed, "samples": samples,
                "render_seconds": round(render_seconds, 1)}  # fmt: skip
    inputs = _read_views(out, settings, out / REFERENCE_NAME)  # what the device reads: 8-bit images, the PLY start
    settings["reference"] = reference_fit(inputs, reference_iterations, threads, command)
    (out / REFERENCE_NAME).write_text(json.dumps(settings, indent=2))
    size_bytes = folder_bytes(out)
    if size_bytes > INPUTS_MAX_BYTES:
        raise ConfigError(f"{out}: {size_bytes / 2**20:.1f} MiB, over the {INPUTS_MAX_BYTES / 2**20:.0f} MiB cap "
                          "(fewer or smaller views)")  # fmt: skip
    return settings


def main(argv: list[str] | None = None) -> None:
    from clip_gs.data.fitted import DEFAULT_HELD_OUT, DEFAULT_VIEWS
    from clip_gs.render.blender import DEFAULT_SAMPLES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", type=Path, help="a mesh file (.glb, .gltf, .obj, .ply, .stl), e.g. the shared Duck.glb")
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="empty or new folder (default .gpu-inputs)")
    parser.add_argument("--size", type=int, default=512, help="view size in pixels (paper: 512)")
    parser.add_argument("--views", type=int, default=DEFAULT_VIEWS, help="training views (paper: 36)")
    parser.add_argument("--held-out", type=int, default=DEFAULT_HELD_OUT, help="held-out views (scored)")
    parser.add_argument("--max-gaussians", type=int, default=10_000, help="cap on the count (the start: half)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="Cycles samples per pixel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-iterations", type=int, default=PAPER_ITERATIONS,
                        help="iterations of the CPU reference fit (paper: 5000)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the reference fit")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/gpu_inputs.py", *(sys.argv[1:] if argv is None else argv)])
    settings = make_inputs(args.mesh, args.out, args.size, args.views, args.held_out, args.max_gaussians, args.samples,
                           args.seed, args.reference_iterations, args.threads, command)  # fmt: skip
    ref = settings["reference"]
    print(f"wrote {args.out} ({folder_bytes(args.out) / 2**20:.1f} MiB): {args.views} + {args.held_out} views of "
          f"{args.mesh.name} at {args.size} px (render {settings['render_seconds']:.0f} s); CPU reference "
          f"{ref['iterations']} iterations in {ref['seconds']:.0f} s: PSNR {ref['psnr']:.2f} dB, SSIM {ref['ssim']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
