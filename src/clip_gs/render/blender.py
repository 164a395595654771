"""Mesh views from a real renderer: Blender's Cycles path tracer, headless, on the CPU.

Blender is installed by pip as a Python module (``pip install clip-gs[render]``, the ``bpy``
package, Python 3.11) and runs in a child process (:mod:`clip_gs.render.blender_worker`), so that
its bundled libraries never share a process with PyTorch. Cycles needs no display (EEVEE does);
it imports glTF/GLB (PBR materials, textures, ``COLOR_0`` vertex colours), OBJ+MTL, PLY and STL.

What a view shows (choices, all arguments):

- **Light:** a uniform white environment (``light``), no lamps. Diffuse shading then does not
  change with the viewpoint, which suits SH degree 0 fits; Cycles still gives occlusion and
  bounce light.
- **Colour:** Blender's "Standard" view transform, so a texture's sRGB values come out as stored.
- **Alpha:** the film is transparent; images are RGBA with straight alpha. Composite them over a
  background with :func:`composite`.
- **Noise:** ``samples`` path-traced samples per pixel, then OpenImageDenoise (``denoise``);
  Cycles' own ``seed`` fixes the noise, so a render is repeatable.

Cameras are the package's :class:`~clip_gs.render.Cameras` (OpenCV axes, world-to-camera, pixel
centres at ``j + 0.5``), the Gaussian rasterizer's convention; they are turned into Blender
cameras (``-Z`` forward, ``+Y`` up, focal length in mm on a 36 mm sensor, principal point as lens
shift). The mesh is placed in the coordinates trimesh reads from the file (the ones
:func:`~clip_gs.gaussians.mesh.mesh_to_gaussians` samples), then through ``world``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import MeshError, MissingDependencyError, RenderError
from clip_gs.render.cameras import OPENCV_TO_OPENGL, Cameras

BLENDER_IMPORTS = (".glb", ".gltf", ".obj", ".ply", ".stl")
"""Mesh files Blender imports itself; any other mesh trimesh reads (ModelNet's ``.off``) is handed to it as
a ``.ply`` of its geometry and vertex colours (:func:`render_mesh`)."""

DEFAULT_SAMPLES = 64
"""Cycles samples per pixel (with denoising: about 1e-3 RMS noise left on a white-lit object)."""
SENSOR_MM = 36.0
"""Blender sensor width used for the conversion from pixels to a focal length in mm."""


def blender_available() -> bool:
    """True when Blender's Python module (``bpy``) can be imported (it is not imported here)."""
    return importlib.util.find_spec("bpy") is not None


def blender_cameras(cameras: Cameras) -> list[dict]:
    """The job entries of :mod:`~clip_gs.render.blender_worker`: camera-to-world in Blender's camera
    axes, lens (mm), shift, clip range, one per camera.

    Raises:
        RenderError: non-square pixels (``fx != fy``) or skewed intrinsics, which a Blender camera
            cannot express.
    """
    views = []
    width, height = cameras.width, cameras.height
    largest = max(width, height)
    for index in range(len(cameras)):
        K = cameras.Ks[index].double()
        fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        if abs(fx - fy) > 1e-6 * fx or abs(float(K[0, 1])) > 1e-9:
            raise RenderError(f"camera {index}: Blender needs square pixels and no skew, got fx={fx}, fy={fy}")
        c2w = torch.linalg.inv(cameras.viewmats[index].double()) @ OPENCV_TO_OPENGL
        views.append({
            "c2w": c2w.tolist(),
            "lens": fx * SENSOR_MM / largest,
            "shift": [(width / 2 - cx) / largest, (cy - height / 2) / largest],
            "clip": [1e-3, 1e3],
        })  # fmt: skip
    return views


def _as_ply(path: Path, out: Path) -> Path:
    """``path`` (a mesh format Blender does not import) written as ``out``, a ``.ply`` Blender imports."""
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh")
        mesh.export(str(out))
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise MeshError(f"{path}: cannot read the mesh to hand it to Blender: {type(exc).__name__}: {exc}") from exc
    return out


def render_mesh(
    mesh: str | os.PathLike,
    cameras: Cameras,
    world: Tensor | None = None,
    samples: int = DEFAULT_SAMPLES,
    denoise: bool = True,
    light: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    threads: int | None = None,
    timeout: float = 1800.0,
) -> Tensor:
    """Render a mesh file from ``cameras`` with Cycles.

    Args:
        mesh: a glTF/GLB, OBJ (+MTL, textures), PLY or STL file, or another mesh trimesh reads (``.off``),
            converted to a ``.ply`` of its geometry and vertex colours for Blender.
        cameras: C cameras (OpenCV convention); all share their image size.
        world: ``[4, 4]`` transform applied to the file's coordinates (e.g.
            :func:`~clip_gs.gaussians.mesh.mesh_unit_transform`); None keeps them.
        samples: Cycles samples per pixel.
        denoise: run OpenImageDenoise on each view.
        light: RGB of the uniform environment light.
        seed: Cycles' sampling seed.
        threads: render threads (default: ``torch.get_num_threads()``).
        timeout: seconds before the Blender process is stopped.

    Returns:
        ``[C, H, W, 4]`` float32 RGBA in [0, 1], straight alpha (0 where nothing was hit).

    Raises:
        MissingDependencyError: ``bpy`` is not installed.
        MeshError: Blender cannot import the file, or it has no faces.
        RenderError: bad cameras, or Blender failed or timed out.
    """
    if not blender_available():
        raise MissingDependencyError("render_mesh needs Blender's Python module: pip install clip-gs[render] (bpy)")
    path = Path(mesh)
    if not path.is_file():
        raise MeshError(f"{path}: no such mesh file")
    if samples < 1:
        raise RenderError(f"samples must be >= 1, got {samples}")
    world = torch.eye(4, dtype=torch.float64) if world is None else world.double()
    if world.shape != (4, 4) or not bool(torch.isfinite(world).all()):
        raise RenderError(f"world must be a finite [4, 4] transform, got {list(world.shape)}")
    with tempfile.TemporaryDirectory(prefix="clip-gs-blender-") as tmp:
        source = path.resolve() if path.suffix.lower() in BLENDER_IMPORTS else _as_ply(path, Path(tmp) / "mesh.ply")
        job = {
            "mesh": str(source),
            "out": tmp,
            "world": world.tolist(),
            "cameras": blender_cameras(cameras),
            "width": cameras.width,
            "height": cameras.height,
            "samples": int(samples),
            "denoise": bool(denoise),
            "light": [float(v) for v in light],
            "seed": int(seed),
            "threads": int(threads or torch.get_num_threads()),
        }
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        command = [sys.executable, "-m", "clip_gs.render.blender_worker", str(job_path)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RenderError(f"{path}: Blender did not finish {len(cameras)} views in {timeout:.0f} s") from exc
        errors = [line.split(":", 1)[1].strip() for line in result.stdout.splitlines()
                  if line.startswith("clip-gs-blender-error:")]  # fmt: skip
        if errors:
            kind = MeshError if "import" in errors[0] or "no faces" in errors[0] else RenderError
            if "not installed" in errors[0]:
                kind = MissingDependencyError
            raise kind(errors[0])
        if result.returncode != 0 or not (Path(tmp) / "done.json").is_file():
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise RenderError(f"{path}: Blender exited with status {result.returncode}: {' | '.join(tail)}")
        from PIL import Image

        views = []
        for index in range(len(cameras)):
            with Image.open(Path(tmp) / f"view_{index:03d}.png") as image:
                views.append(np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(views))


def composite(rgba: Tensor, background: Tensor | tuple[float, float, float]) -> Tensor:
    """``[..., 4]`` straight-alpha RGBA over a background colour: ``[..., 3]`` RGB."""
    background = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + background * (1.0 - alpha)


__all__ = ["DEFAULT_SAMPLES", "blender_available", "blender_cameras", "composite", "render_mesh"]
