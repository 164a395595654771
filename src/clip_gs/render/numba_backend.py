"""The compiled CPU backend of :func:`clip_gs.render.rasterize` (``backend="numba"``, the CPU default):
projection and compositing in numba.

Two kernels and their backward passes: the EWA projection with culling (:func:`project_numba`, the
arithmetic of :func:`~clip_gs.render.reference.project_gaussians`, for all cameras at once; tested
against it, values and gradients) and the per-pixel front-to-back loop (:func:`composite_numba`),
the part that costs pixels x Gaussians. SH colour and the (tile, Gaussian) lists
(:func:`~clip_gs.render.reference.intersect_tiles`) stay in PyTorch. The compositing backward is
the one of the 3DGS trainer and gsplat: each pixel walks its Gaussians back to front, recovering the transmittance before each one
by division (``T_i = T_{i+1} / (1 - alpha_i)``), so nothing per pixel-Gaussian pair is stored.

Equal to the readable reference (:func:`~clip_gs.render.reference.rasterize_reference`) up to
float rounding, values and gradients (``tests/render/test_render.py``): the same alpha, the same skips
(``alpha < 1/255`` or a positive exponent), the same stop before the transmittance would fall below
1e-4.

Determinism: tiles run in parallel (``numba.prange``), but each tile, its pixels and its gradients
belong to one thread. Gradients are summed per (tile, Gaussian) pair into ``[I, 10]`` rows and
then added into the Gaussians in list order with ``index_add_``, so results do not depend on the
thread count. Threads: up to ``torch.get_num_threads()`` (capped at numba's pool size), one per
:data:`PAIRS_PER_THREAD` pixel-Gaussian pairs.

Kernels compile on the first call for each dtype (a few seconds) and are cached on disk next to
this file (numba's ``cache=True``).
"""

from __future__ import annotations

import importlib.util
import math
import threading

import torch
from torch import Tensor

from clip_gs.errors import MissingDependencyError, RenderError
from clip_gs.render.raster_types import FOV_CLAMP, ProjectedGaussians, RenderOutput
from clip_gs.render.reference import merge_tile_lists, view_colors

TILE = 4
"""Tile side (px) of the compiled backend: each tile's pixels walk one depth-sorted list."""
GRAD_FIELDS = 10
"""Per-pair gradient row: mean2d (2), conic (3), colour (3), opacity, depth."""

_KERNELS = None
_LAUNCH = threading.Lock()  # numba's workqueue layer takes one parallel launch at a time


def numba_available() -> bool:
    """True when the ``numba`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("numba") is not None


def _kernels():
    """Compile (or load from numba's cache) the forward and backward kernels, once per process."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    try:
        import numba
    except ImportError as exc:  # pragma: no cover - numba is a dependency
        raise MissingDependencyError(f"backend='numba' needs the numba package (import failed: {exc})") from exc
    from clip_gs.render.numba_kernels import backward, forward, project_backward, project_forward

    _KERNELS = (numba, forward, backward, project_forward, project_backward)
    return _KERNELS


PAIRS_PER_THREAD = 1 << 21
"""Pixel-Gaussian pairs (upper bound: list entries x tile pixels) below which a kernel runs on the calling
thread alone. PyTorch's OpenMP threads keep spinning for a while after each operation, and a second
numba thread competing with them for 2 cores made a 10K-Gaussian 128 px fit step slower, not faster
(measured: 29.6 ms with 2 numba threads, 24.0 ms with 1); large renders still split across threads."""


def _set_threads(numba, pairs: int) -> None:
    wanted = max(1, pairs * TILE * TILE // PAIRS_PER_THREAD)
    numba.set_num_threads(max(1, min(wanted, torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of tile lists over C cameras (forward and backward compiled)."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, depths, gaussians, offsets, shape):
        numba, forward_kernel, *_ = _kernels()
        _set_threads(numba, gaussians.numel())
        cams, height, width, tiles_x, tiles_y = shape
        dtype = means2d.dtype
        rgb = torch.empty(cams, height, width, 3, dtype=dtype)
        depth = torch.empty(cams, height, width, dtype=dtype)
        trans = torch.empty(cams, height, width, dtype=dtype)
        last = torch.empty(cams, height, width, dtype=torch.int64)
        inputs = [t.detach().contiguous() for t in (means2d, conics, colors, opacities, depths)]
        with _LAUNCH:
            forward_kernel(*(t.numpy() for t in inputs), gaussians.numpy(), offsets.numpy(), tiles_x, tiles_y, TILE,
                           width, height, rgb.numpy(), depth.numpy(), trans.numpy(), last.numpy())  # fmt: skip
        ctx.save_for_backward(*inputs, gaussians, offsets, trans, last)
        ctx.shape = shape
        ctx.mark_non_differentiable(last)
        return rgb, depth, trans, last

    @staticmethod
    def backward(ctx, grad_rgb, grad_depth, grad_trans, _grad_last):
        numba, _, backward_kernel, *_ = _kernels()
        means2d, conics, colors, opacities, depths, gaussians, offsets, trans, last = ctx.saved_tensors
        _set_threads(numba, gaussians.numel())
        cams, height, width, tiles_x, tiles_y = ctx.shape
        dtype = means2d.dtype

        def dense(grad, shape):
            return torch.zeros(shape, dtype=dtype) if grad is None else grad.to(dtype).contiguous()

        grad_rgb = dense(grad_rgb, (cams, height, width, 3))
        grad_depth = dense(grad_depth, (cams, height, width))
        grad_trans = dense(grad_trans, (cams, height, width))
        pairs = torch.zeros(gaussians.numel(), GRAD_FIELDS, dtype=dtype)  # rows past a tile's last pixel stay 0
        with _LAUNCH:
            backward_kernel(means2d.numpy(), conics.numpy(), colors.numpy(), opacities.numpy(), depths.numpy(),
                            gaussians.numpy(), offsets.numpy(), tiles_x, tiles_y, TILE, width, height, trans.numpy(),
                            last.numpy(), grad_rgb.numpy(), grad_depth.numpy(), grad_trans.numpy(),
                            pairs.numpy())  # fmt: skip
        grads = torch.zeros(means2d.shape[0], GRAD_FIELDS, dtype=dtype).index_add_(0, gaussians, pairs)
        return grads[:, 0:2], grads[:, 2:5], grads[:, 5:8], grads[:, 8], grads[:, 9], None, None, None


class _Project(torch.autograd.Function):
    """The EWA projection of N Gaussians into C cameras (forward and backward compiled)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, shape):
        numba, _, _, project_kernel, _ = _kernels()
        numba.set_num_threads(1)  # [C * N] cheap jobs: the parallel launch costs more than it saves here
        width, height, near, far, eps2d, clamp = shape
        # float64 inside whatever the dtype (a few numbers per Gaussian): rotating the cloud or the
        # camera then rounds alike, and footprint edges (a discrete cut at alpha 1/255) move less.
        cams, n, dtype = viewmats.shape[0], means.shape[0], means.dtype
        f64 = torch.float64
        means2d = torch.zeros(cams, n, 2, dtype=f64)
        conics = torch.zeros(cams, n, 3, dtype=f64)
        depths = torch.zeros(cams, n, dtype=f64)
        extents = torch.zeros(cams, n, 2, dtype=f64)
        valid = torch.zeros(cams, n, dtype=torch.bool)
        inputs = [t.detach().to(f64).contiguous() for t in (means, quats, scales, opacities)]
        cameras = [viewmats.detach().to(f64).contiguous(), Ks.detach().to(f64).contiguous()]
        with _LAUNCH:
            project_kernel(*(t.numpy() for t in inputs + cameras), width, height, near, far, eps2d, clamp,
                           means2d.numpy(), conics.numpy(), depths.numpy(), extents.numpy(), valid.numpy())  # fmt: skip
        ctx.save_for_backward(inputs[0], inputs[1], inputs[2], *cameras, valid)
        ctx.shape = shape
        ctx.dtype = dtype
        outputs = [t.to(dtype) for t in (means2d, conics, depths, extents)]
        ctx.mark_non_differentiable(outputs[3], valid)
        return (*outputs, valid)

    @staticmethod
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _extents, _valid):
        *_, project_backward = _kernels()
        means, quats, scales, viewmats, Ks, valid = ctx.saved_tensors
        width, height, _near, _far, eps2d, clamp = ctx.shape
        dtype = means.dtype  # float64: the saved copies

        def dense(grad, like):
            return torch.zeros_like(like) if grad is None else grad.to(dtype).contiguous()

        cams, n = viewmats.shape[0], means.shape[0]
        grad_means2d = dense(grad_means2d, torch.empty(cams, n, 2, dtype=dtype))
        grad_conics = dense(grad_conics, torch.empty(cams, n, 3, dtype=dtype))
        grad_depths = dense(grad_depths, torch.empty(cams, n, dtype=dtype))
        grads = [torch.zeros_like(means), torch.zeros_like(quats), torch.zeros_like(scales)]
        with _LAUNCH:
            project_backward(means.numpy(), quats.numpy(), scales.numpy(), viewmats.numpy(), Ks.numpy(), width, height,
                             eps2d, clamp, valid.numpy(), grad_means2d.numpy(), grad_conics.numpy(),
                             grad_depths.numpy(), *(g.numpy() for g in grads))  # fmt: skip
        return grads[0].to(ctx.dtype), grads[1].to(ctx.dtype), grads[2].to(ctx.dtype), None, None, None, None


def project_numba(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    eps2d: float,
    clamp: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`~clip_gs.render.reference.project_gaussians` for all C cameras at once, compiled.

    Args:
        means: ``[N, 3]``, quats: ``[N, 4]`` (any norm), scales: ``[N, 3]``, opacities: ``[N]`` (CPU);
            viewmats: ``[C, 4, 4]``, Ks: ``[C, 3, 3]``; clamp: :data:`~clip_gs.render.raster_types.FOV_CLAMP`.

    Returns:
        ``(means2d [C, N, 2], conics [C, N, 3], depths [C, N], extents [C, N, 2], valid [C, N])``:
        dense per camera and Gaussian, zero where ``valid`` is False (culled); differentiable with
        respect to means, quats and scales (extents and valid are not).
    """
    shape = (width, height, float(near), float(far), float(eps2d), float(clamp))
    return _Project.apply(means, quats, scales, opacities, viewmats, Ks, shape)


def composite_numba(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    depths: Tensor,
    gaussians: Tensor,
    offsets: Tensor,
    cameras: int,
    width: int,
    height: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite depth-sorted tile lists of C cameras, differentiably (CPU tensors).

    Args:
        means2d: ``[M, 2]``, conics: ``[M, 3]`` (``a, b, c`` of ``Sigma_2d^-1``), colors: ``[M, 3]``,
            opacities: ``[M]``, depths: ``[M]``: the projected Gaussians of all cameras, concatenated.
        gaussians, offsets: ``[I]`` int64 and ``[C * tiles + 1]`` int64: the members of tile ``t``
            (camera-major, then row-major :data:`TILE`-px tiles), nearest first, are
            ``gaussians[offsets[t]:offsets[t + 1]]``.

    Returns:
        ``(rgb [C, H, W, 3] without background, accumulated depth [C, H, W] (not normalised),
        transmittance [C, H, W])``.
    """
    tiles_x, tiles_y = math.ceil(width / TILE), math.ceil(height / TILE)
    shape = (cameras, height, width, tiles_x, tiles_y)
    rgb, depth, trans, _ = _Composite.apply(means2d, conics, colors, opacities, depths, gaussians.contiguous(),
                                            offsets.contiguous(), shape)  # fmt: skip
    return rgb, depth, trans


def _screen_space_info(projections: list[ProjectedGaussians], merged: ProjectedGaussians, num_gaussians: int,
                       width: int, height: int) -> tuple[ProjectedGaussians, dict]:  # fmt: skip
    """Route the merged ``means2d`` through a dense ``[C, N, 2]`` tensor (so that its gradient is every
    Gaussian's screen-space gradient per camera) and list the footprints as ``radii [C, N, 2]``:
    the ``info`` of :class:`~clip_gs.render.raster_types.RenderOutput`."""
    cams = len(projections)
    cam_index = torch.cat([torch.full_like(p.ids, cam) for cam, p in enumerate(projections)])
    ids = torch.cat([p.ids for p in projections])
    dense = merged.means2d.new_zeros(cams, num_gaussians, 2).index_put((cam_index, ids), merged.means2d)
    radii = torch.zeros(cams, num_gaussians, 2, dtype=torch.int32, device=ids.device)
    radii[cam_index, ids] = torch.ceil(merged.extents).to(torch.int32)
    fields = {f: getattr(merged, f) for f in ProjectedGaussians.__dataclass_fields__}
    routed = ProjectedGaussians(**{**fields, "means2d": dense[cam_index, ids]})
    info = {"means2d": dense, "radii": radii, "width": width, "height": height, "n_cameras": cams,
            "gaussian_ids": None}  # fmt: skip
    return routed, info


def rasterize_numba(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    backgrounds: Tensor,
    sh_degree: int | None,
    near: float,
    far: float,
    eps2d: float,
    with_info: bool = False,
) -> RenderOutput:
    """The compiled CPU backend of :func:`~clip_gs.render.rasterize` (``backend="numba"``; validated CPU inputs,
    ``backgrounds: [C, 3]``): the projection (:func:`project_numba`) and the compositing
    (:func:`composite_numba`), forward and backward, compiled; SH colour and the tile lists in PyTorch.
    Equal to :func:`~clip_gs.render.reference.rasterize_reference` up to float rounding
    (tested, values and gradients)."""
    if means.device.type != "cpu":
        raise RenderError(f"backend='numba' needs CPU tensors, got device {means.device}")
    means2d, conics, depths, extents, valid = project_numba(means, quats, scales, opacities, viewmats, Ks, width,
                                                           height, near, far, eps2d, FOV_CLAMP)  # fmt: skip
    projections = []
    for cam in range(viewmats.shape[0]):
        ids = valid[cam].nonzero().squeeze(1)
        rgb = view_colors(means, colors, ids, viewmats[cam], sh_degree)
        projections.append(ProjectedGaussians(ids=ids, means2d=means2d[cam, ids], conics=conics[cam, ids],
                                              depths=depths[cam, ids], opacities=opacities[ids], colors=rgb,
                                              extents=extents[cam, ids]))  # fmt: skip
    merged, gaussians, offsets = merge_tile_lists(projections, width, height, TILE)
    info = None
    if with_info:
        merged, info = _screen_space_info(projections, merged, means.shape[0], width, height)
    rgb, depth, trans = composite_numba(merged.means2d, merged.conics, merged.colors, merged.opacities, merged.depths,
                                        gaussians, offsets, len(projections), width, height)  # fmt: skip
    return RenderOutput.from_transmittance(rgb, depth, trans, backgrounds, info)


__all__ = ["TILE", "composite_numba", "numba_available", "project_numba", "rasterize_numba"]
