"""Differentiable 3D Gaussian Splatting rasterization: :func:`rasterize` checks its inputs and hands
them to one backend; :func:`render_cloud` renders a :class:`~clip_gs.gaussians.cloud.GaussianCloud`.

The image model (EWA projection, SH colour, tiles, front-to-back compositing) is written out in
:mod:`clip_gs.render.reference`. Four backends compute it, and tests hold them equal (values and
gradients; gsplat within its known differences): ``backend="reference"``
(:func:`~clip_gs.render.reference.rasterize_reference`) is the readable one, a Python loop over the
tiles of each camera with each tile vectorised; ``backend="torch"``
(:func:`~clip_gs.render.torch_backend.rasterize_torch`) composites 4 x 4 px tiles of all cameras in
cache-sized blocks, pure PyTorch; ``backend="numba"``
(:func:`~clip_gs.render.numba_backend.rasterize_numba`, the CPU default) compiles the projection and
the per-pixel loop, each with its backward pass, many times faster again, forward and backward
(``benchmarks/bench_render.py``, ``benchmarks/bench_raster_grad.py``); ``backend="gsplat"``
(:mod:`clip_gs.render.gsplat_backend`) runs on CUDA. The backends share their constants and output
types (:mod:`clip_gs.render.raster_types`) and never import this module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clip_gs.errors import RenderError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.sh import sh_degree_from_coeffs
from clip_gs.render.cameras import Cameras
from clip_gs.render.numba_backend import numba_available, rasterize_numba
from clip_gs.render.raster_types import RenderOutput
from clip_gs.render.reference import rasterize_reference
from clip_gs.render.torch_backend import rasterize_torch


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, sh_degree):
    def shape(t):
        return list(t.shape) if isinstance(t, Tensor) else type(t).__name__

    for name, value in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities),
                        ("colors", colors), ("viewmats", viewmats), ("Ks", Ks)):  # fmt: skip
        if not isinstance(value, Tensor) or not value.is_floating_point():
            dtype = getattr(value, "dtype", "")
            raise RenderError(f"{name} must be a floating-point tensor, got {shape(value)} {dtype}")
    if means.ndim != 2 or means.shape[1] != 3:
        raise RenderError(f"means must be [N, 3], got {shape(means)}")
    n = means.shape[0]
    for name, value, expected in (("quats", quats, [n, 4]), ("scales", scales, [n, 3]), ("opacities", opacities, [n])):
        if list(value.shape) != expected:
            raise RenderError(f"{name} must be {expected} for N={n} Gaussians, got {shape(value)}")
    if colors.ndim == 2:
        if list(colors.shape) != [n, 3]:
            raise RenderError(f"RGB colors must be [N, 3] = {[n, 3]}, got {shape(colors)}")
        if sh_degree is not None:
            raise RenderError(f"sh_degree={sh_degree} needs SH colors [N, K, 3], got RGB colors {shape(colors)}")
    elif colors.ndim == 3:
        if colors.shape[0] != n or colors.shape[2] != 3:
            raise RenderError(f"SH colors must be [N, K, 3] with N={n}, got {shape(colors)}")
        available = sh_degree_from_coeffs(colors.shape[1])
        if sh_degree is not None and not 0 <= sh_degree <= available:
            raise RenderError(
                f"sh_degree={sh_degree} but colors hold {colors.shape[1]} coefficients (degree {available})"
            )
    else:
        raise RenderError(f"colors must be [N, 3] RGB or [N, K, 3] SH, got {shape(colors)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise RenderError(f"viewmats must be [C, 4, 4], got {shape(viewmats)}")
    if Ks.ndim != 3 or Ks.shape[1:] != (3, 3) or Ks.shape[0] != viewmats.shape[0]:
        raise RenderError(f"Ks must be [C, 3, 3] with C={viewmats.shape[0]}, got {shape(Ks)}")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise RenderError(f"{name} must be a positive int, got {value!r}")
    if background is not None:
        if not isinstance(background, Tensor) or list(background.shape) not in ([3], [viewmats.shape[0], 3]):
            raise RenderError(f"background must be a [3] or [C, 3] tensor, got {shape(background)}")
    devices = {t.device for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
    if len(devices) > 1:
        raise RenderError(f"all tensors must be on one device, got {sorted(map(str, devices))}")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
    tile_size: int = 16,
    chunk_size: int = 1024,
    eps2d: float = 0.3,
    with_info: bool = False,
) -> RenderOutput:
    """Render 3D Gaussians into C pinhole cameras (the image model: :mod:`clip_gs.render.reference`).

    Args:
        means: ``[N, 3]`` centres (world).
        quats: ``[N, 4]`` rotations, wxyz, any non-zero norm (normalised here).
        scales: ``[N, 3]`` activated (positive) scales.
        opacities: ``[N]`` activated opacities in [0, 1].
        colors: ``[N, K, 3]`` SH coefficients (``K = (d + 1)^2``) or ``[N, 3]`` RGB.
        viewmats: ``[C, 4, 4]`` world-to-camera, OpenCV axes (x right, y down, z forward).
        Ks: ``[C, 3, 3]`` intrinsics; pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``.
        width, height: image size in pixels.
        background: ``[3]`` or ``[C, 3]`` colour behind the Gaussians; None means black.
        sh_degree: SH degree to evaluate for ``[N, K, 3]`` colors (None: the full degree of K);
            must be None for RGB colors.
        near, far: camera-space z range of the Gaussian means that are rendered.
        backend: ``"numba"`` (CPU: compiled compositing, forward and backward, the fastest there),
            ``"torch"`` (pure PyTorch, all tiles batched), ``"reference"`` (pure PyTorch, the
            readable per-tile loop the others are tested against), ``"gsplat"`` (CUDA,
            ``pip install clip-gs[cuda]``) or ``"auto"`` (gsplat for CUDA tensors when it is
            installed, numba for CPU tensors, torch otherwise).
        tile_size: tile side in pixels (reference and gsplat; the batched torch backend uses
            :data:`~clip_gs.render.torch_backend.BATCHED_TILE`, numba
            :data:`~clip_gs.render.numba_backend.TILE`).
        chunk_size: reference only: Gaussians composited at once per tile (memory bound
            ``tile_size^2 * chunk_size``).
        eps2d: low-pass term added to the 2D covariance diagonal, px^2.
        with_info: also return the screen-space data densification needs (``RenderOutput.info``);
            the numba and gsplat backends only.

    Returns:
        :class:`RenderOutput` with ``rgb [C, H, W, 3]``, ``alpha [C, H, W]``, ``depth [C, H, W]``.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, sh_degree)
    if colors.ndim == 3 and sh_degree is None:
        sh_degree = sh_degree_from_coeffs(colors.shape[1])
    if tile_size < 1 or chunk_size < 1:
        raise RenderError(f"tile_size and chunk_size must be >= 1, got {tile_size} and {chunk_size}")
    dtype, device = means.dtype, means.device
    viewmats, Ks = viewmats.to(dtype), Ks.to(dtype)
    num_cams = viewmats.shape[0]
    if background is None:
        backgrounds = torch.zeros(num_cams, 3, dtype=dtype, device=device)
    else:
        backgrounds = background.to(device=device, dtype=dtype).expand(num_cams, 3)

    # Looked up per call: a process may switch gsplat off (gsplat_backend.gsplat_available) after import.
    from clip_gs.render.gsplat_backend import gsplat_available, rasterize_gsplat

    if backend == "auto":
        if means.is_cuda and gsplat_available():
            backend = "gsplat"
        else:
            backend = "numba" if means.device.type == "cpu" and numba_available() else "torch"
    if with_info and backend not in ("numba", "gsplat"):
        raise RenderError(f"with_info=True needs backend 'numba' or 'gsplat', got {backend!r}")
    if backend == "numba":
        return rasterize_numba(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                               sh_degree, near, far, eps2d, with_info)  # fmt: skip
    if backend == "torch":
        return rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                               sh_degree, near, far, tile_size, chunk_size, eps2d)  # fmt: skip
    if backend == "reference":
        return rasterize_reference(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                                   sh_degree, near, far, tile_size, chunk_size, eps2d)  # fmt: skip
    if backend == "gsplat":
        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                                sh_degree, near, far, tile_size, eps2d, with_info)  # fmt: skip
    raise RenderError(f"backend must be 'auto', 'numba', 'torch', 'reference' or 'gsplat', got {backend!r}")


def render_cloud(
    cloud: GaussianCloud,
    cameras: Cameras,
    background: Tensor | None = None,
    backend: str = "auto",
    **options,
) -> RenderOutput:
    """Render an unbatched :class:`GaussianCloud` into ``cameras`` with its full SH degree.

    Reads only the cloud's named activated views (``means``, ``rotations``, ``scales``,
    ``opacity``, ``sh``). ``options`` go to :func:`rasterize` (``near``, ``far``, ``tile_size``,
    ``chunk_size``, ``eps2d``). The cameras are moved to the cloud's device and dtype.

    Returns:
        :class:`RenderOutput` with ``rgb [C, H, W, 3]``, ``alpha [C, H, W]``, ``depth [C, H, W]``.
    """
    if not isinstance(cloud, GaussianCloud):
        raise RenderError(f"render_cloud needs a GaussianCloud, got {type(cloud).__name__}")
    if cloud.batch_shape:
        raise RenderError(
            f"{cloud.source or 'cloud'}: render_cloud takes an unbatched cloud, got batch shape "
            f"{list(cloud.batch_shape)}; unbind() it first"
        )
    cams = cameras.to(device=cloud.device, dtype=cloud.dtype)
    return rasterize(  # cloud.sh_degree: a cloud always renders with all its coefficients
        cloud.means,
        cloud.rotations,
        cloud.scales,
        cloud.opacity,
        cloud.sh,
        cams.viewmats,
        cams.Ks,
        cams.width,
        cams.height,
        background=background,
        sh_degree=cloud.sh_degree,
        backend=backend,
        **options,
    )


__all__ = ["rasterize", "render_cloud"]
