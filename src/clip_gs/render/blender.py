"""Mesh views from a real renderer: Blender's Cycles path tracer, headless, on the CPU or a GPU.

Blender is installed by pip as a Python module (``pip install clip-gs[render]``, the ``bpy``
package, Python 3.11) and runs in a child process (:mod:`clip_gs.render.blender_worker`), so that
its bundled libraries never share a process with PyTorch. Cycles needs no display (EEVEE does);
it imports glTF/GLB (PBR materials, textures, ``COLOR_0`` vertex colours), OBJ+MTL, PLY and STL.

The child is resident: :class:`BlenderRenderer` starts it once and sends it object after object,
and :func:`render_mesh` uses one such renderer per process (:func:`default_renderer`), so a
preparation worker launches Blender and imports ``bpy`` once, not once per object. A render does
not depend on what the process rendered before (the worker clears the previous object).

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

import atexit
import importlib.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import MeshError, MissingDependencyError, RenderError
from clip_gs.render.cameras import OPENCV_TO_OPENGL, Cameras

BLENDER_IMPORTS = (".glb", ".gltf", ".obj", ".ply", ".stl")
"""Mesh files Blender imports itself; any other mesh trimesh reads (ModelNet's ``.off``) is handed to it as
a ``.ply`` of its geometry and vertex colours (:func:`render_mesh`)."""

DEFAULT_SAMPLES = 16
"""Cycles samples per pixel, then denoising. Chosen by measurement (``benchmarks/bench_blender.py --mode
samples``): the fewest samples whose fits (1,000 iterations on 36 views at 128 px) lose no more than 0.3 dB of
held-out PSNR against 64 samples: 16 lost 0.23 dB, 8 lost 0.54 dB, at a quarter of 64's render time."""
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


class BlenderRenderer:
    """A resident Blender process (:mod:`~clip_gs.render.blender_worker`) that renders object after
    object. It starts on the first :meth:`render` (or :meth:`start`) and again only after a fault
    that ended it (a timeout, a crash); :meth:`close` ends it. Not thread-safe: one per process or
    thread.

    Attributes:
        launches: processes started so far.
        launch_s: seconds the last start took (process start, ``import bpy``, the scene template).
        last: the worker's facts on the last render: ``views``, ``device`` (``CPU``, ``OPTIX``,
            ``CUDA``), ``import_s``, ``render_s``.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: deque[str] = deque(maxlen=8)
        self.launches = 0
        self.launch_s = 0.0
        self.last: dict = {}

    def start(self, timeout: float = 300.0) -> None:
        """Start the worker unless it runs; waits until it is ready.

        Raises:
            MissingDependencyError: ``bpy`` is not installed. RenderError: it did not start.
        """
        if self.process is not None and self.process.poll() is None:
            return
        if not blender_available():
            raise MissingDependencyError("render_mesh needs Blender's Python module: pip install clip-gs[render] (bpy)")
        began = time.perf_counter()
        self.lines, self.tail = queue.Queue(), deque(maxlen=8)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clip_gs.render.blender_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self.launches += 1
        threading.Thread(target=self._read, args=(self.process, self.lines), daemon=True).start()
        self._answer("ready", timeout, "start")
        self.launch_s = time.perf_counter() - began

    @staticmethod
    def _read(process: subprocess.Popen, lines: queue.Queue) -> None:
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)  # the process ended

    def _answer(self, expected: str, timeout: float, what: str) -> dict:
        """The worker's next protocol line (``ready`` or ``done``) as a dict; its errors raised."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close(kill=True)
                raise RenderError(f"{what}: Blender did not answer within {timeout:.0f} s") from None
            if line is None:
                code = self.process.wait() if self.process is not None else None
                self.process = None
                raise RenderError(f"{what}: Blender exited with status {code}: {' | '.join(self.tail)}")
            prefix, _, payload = line.partition(": ")
            if prefix == f"clip-gs-blender-{expected}":
                return json.loads(payload)
            if prefix == "clip-gs-blender-error":
                error = json.loads(payload)
                kind = {"mesh": MeshError, "dependency": MissingDependencyError}.get(error["kind"], RenderError)
                raise kind(error["message"])
            self.tail.append(line)

    def render(
        self,
        mesh: str | os.PathLike,
        cameras: Cameras,
        world: Tensor | None = None,
        samples: int = DEFAULT_SAMPLES,
        denoise: bool = True,
        light: tuple[float, float, float] = (1.0, 1.0, 1.0),
        seed: int = 0,
        threads: int | None = None,
        device: str | torch.device = "cpu",
        timeout: float = 1800.0,
    ) -> Tensor:
        """Render a mesh file from ``cameras`` with Cycles (arguments as :func:`render_mesh`).

        Returns:
            ``[C, H, W, 4]`` float32 RGBA in [0, 1], straight alpha (0 where nothing was hit).
        """
        path = Path(mesh)
        if not path.is_file():
            raise MeshError(f"{path}: no such mesh file")
        if samples < 1:
            raise RenderError(f"samples must be >= 1, got {samples}")
        world = torch.eye(4, dtype=torch.float64) if world is None else world.double()
        if world.shape != (4, 4) or not bool(torch.isfinite(world).all()):
            raise RenderError(f"world must be a finite [4, 4] transform, got {list(world.shape)}")
        views = blender_cameras(cameras)
        self.start()
        with tempfile.TemporaryDirectory(prefix="clip-gs-blender-") as tmp:
            source = path.resolve() if path.suffix.lower() in BLENDER_IMPORTS else _as_ply(path, Path(tmp) / "mesh.ply")
            job = {
                "mesh": str(source), "out": tmp, "world": world.tolist(), "cameras": views,
                "width": cameras.width, "height": cameras.height, "samples": int(samples), "denoise": bool(denoise),
                "light": [float(v) for v in light], "seed": int(seed),
                "threads": int(threads or torch.get_num_threads()),
                "device": "gpu" if torch.device(device).type == "cuda" else "cpu",
            }  # fmt: skip
            try:
                self.process.stdin.write(json.dumps(job) + "\n")
                self.process.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self.close(kill=True)
                raise RenderError(f"{path}: the Blender process ended: {' | '.join(self.tail)}") from exc
            self.last = self._answer("done", timeout, f"{path}: {len(cameras)} views")
            from PIL import Image

            images = []
            for index in range(len(cameras)):
                with Image.open(Path(tmp) / f"view_{index:03d}.png") as image:
                    images.append(np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0)
        return torch.from_numpy(np.stack(images))

    def close(self, kill: bool = False) -> None:
        """End the worker: it finishes at the end of its input, or is killed when ``kill`` or when it
        has not finished within 10 s."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if kill:
                raise OSError("kill")
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def __enter__(self) -> BlenderRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_DEFAULT: BlenderRenderer | None = None


def default_renderer() -> BlenderRenderer:
    """This process's resident renderer (closed when the interpreter exits)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = BlenderRenderer()
        atexit.register(_DEFAULT.close)
    return _DEFAULT


def render_mesh(
    mesh: str | os.PathLike,
    cameras: Cameras,
    world: Tensor | None = None,
    samples: int = DEFAULT_SAMPLES,
    denoise: bool = True,
    light: tuple[float, float, float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    timeout: float = 1800.0,
) -> Tensor:
    """Render a mesh file from ``cameras`` with Cycles, in this process's resident Blender
    (:func:`default_renderer`).

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
        device: a CUDA device renders on the GPU (OptiX, else CUDA, whichever the ``bpy`` build offers;
            the CPU when it offers neither, which ``default_renderer().last["device"]`` tells); otherwise
            the CPU.
        timeout: seconds before the Blender process is stopped.

    Returns:
        ``[C, H, W, 4]`` float32 RGBA in [0, 1], straight alpha (0 where nothing was hit).

    Raises:
        MissingDependencyError: ``bpy`` is not installed.
        MeshError: Blender cannot import the file, or it has no faces.
        RenderError: bad cameras, or Blender failed or timed out.
    """
    return default_renderer().render(mesh, cameras, world, samples, denoise, light, seed, threads, device, timeout)


def composite(rgba: Tensor, background: Tensor | tuple[float, float, float]) -> Tensor:
    """``[..., 4]`` straight-alpha RGBA over a background colour: ``[..., 3]`` RGB."""
    background = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + background * (1.0 - alpha)


__all__ = ["DEFAULT_SAMPLES", "BlenderRenderer", "blender_available", "blender_cameras", "composite", "default_renderer",
           "render_mesh"]
