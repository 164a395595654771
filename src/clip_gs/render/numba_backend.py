"""The compiled CPU backend of :func:`clip_gs.render.rasterize`: tile compositing as numba kernels.

Projection (EWA), SH colour, culling and the (tile, Gaussian) lists stay in PyTorch, shared with the
other CPU backends (:func:`~clip_gs.render.rasterize.project_gaussians`,
:func:`~clip_gs.render.rasterize.intersect_tiles`); only the per-pixel front-to-back loop, the part
that costs pixels x Gaussians, is compiled. Its backward pass is the one of the 3DGS trainer and
gsplat: each pixel walks its Gaussians back to front, recovering the transmittance before each one
by division (``T_i = T_{i+1} / (1 - alpha_i)``), so nothing per pixel-Gaussian pair is stored.

Equal to the readable reference (:func:`~clip_gs.render.rasterize.rasterize_reference`) up to
float rounding, values and gradients (``tests/test_render.py``): the same alpha, the same skips
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

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import MissingDependencyError

TILE = 4
"""Tile side (px) of the compiled backend: each tile's pixels walk one depth-sorted list."""
ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN = 0.99, 1.0 / 255.0, 1e-4  # as in clip_gs.render.rasterize (tested)
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
    from numba import njit, prange

    # PyTorch brings its own OpenMP runtime; numba's "omp" layer on top of it loses the parallel
    # speed-up (measured: 2 threads as slow as 1). The workqueue layer has no such clash.
    numba.config.THREADING_LAYER = "workqueue"

    amax, amin, tmin = ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN

    @njit(parallel=True, cache=True, nogil=True)
    def forward(means2d, conics, colors, opacities, depths, gaussians, offsets, tiles_x, tiles_y, tile, width,
                height, out_rgb, out_depth, out_trans, out_last):  # fmt: skip
        # Per tile: its Gaussians in the outer loop (each read once), its pixels in the inner one.
        per_camera = tiles_x * tiles_y
        for t in prange(offsets.shape[0] - 1):
            cam, rest = t // per_camera, t % per_camera
            y0, x0 = (rest // tiles_x) * tile, (rest % tiles_x) * tile
            rows, cols = min(tile, height - y0), min(tile, width - x0)
            count = rows * cols
            start, end = offsets[t], offsets[t + 1]
            xs, ys = np.empty(count), np.empty(count)  # pixel centres
            for p in range(count):
                xs[p], ys[p] = x0 + p % cols + 0.5, y0 + p // cols + 0.5
            trans = np.ones(count)
            acc = np.zeros((count, 4))  # r, g, b, depth
            last = np.full(count, start)
            done = np.zeros(count, np.bool_)
            remaining = count
            for k in range(start, end):
                if remaining == 0:
                    break
                i = gaussians[k]
                mx, my, ca, cb, cc = means2d[i, 0], means2d[i, 1], conics[i, 0], conics[i, 1], conics[i, 2]
                opacity = opacities[i]
                cutoff = math.log(amin / opacity) - 1e-6 if opacity > 0.0 else -np.inf  # below: alpha < amin
                for p in range(count):
                    if done[p]:
                        continue
                    dx, dy = xs[p] - mx, ys[p] - my
                    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
                    if power > 0.0 or power < cutoff:
                        continue
                    alpha = min(amax, opacity * math.exp(power))
                    if alpha < amin:
                        continue
                    after = trans[p] * (1.0 - alpha)
                    if after < tmin:
                        done[p] = True
                        remaining -= 1
                        continue
                    w = alpha * trans[p]
                    acc[p, 0] += colors[i, 0] * w
                    acc[p, 1] += colors[i, 1] * w
                    acc[p, 2] += colors[i, 2] * w
                    acc[p, 3] += depths[i] * w
                    trans[p] = after
                    last[p] = k + 1
            for p in range(count):
                py, px = y0 + p // cols, x0 + p % cols
                out_rgb[cam, py, px, 0], out_rgb[cam, py, px, 1], out_rgb[cam, py, px, 2] = (
                    acc[p, 0],
                    acc[p, 1],
                    acc[p, 2],
                )
                out_depth[cam, py, px], out_trans[cam, py, px], out_last[cam, py, px] = acc[p, 3], trans[p], last[p]

    @njit(parallel=True, cache=True, nogil=True)
    def backward(means2d, conics, colors, opacities, depths, gaussians, offsets, tiles_x, tiles_y, tile, width,
                 height, out_trans, out_last, grad_rgb, grad_depth, grad_trans, grad_pairs):  # fmt: skip
        # Per tile, back to front: each Gaussian read once, its gradient summed over the tile's pixels
        # in registers and written once.
        per_camera = tiles_x * tiles_y
        for t in prange(offsets.shape[0] - 1):
            cam, rest = t // per_camera, t % per_camera
            y0, x0 = (rest // tiles_x) * tile, (rest % tiles_x) * tile
            rows, cols = min(tile, height - y0), min(tile, width - x0)
            count = rows * cols
            start = offsets[t]
            trans = np.empty(count)
            final = np.empty(count)
            last = np.empty(count, np.int64)
            pixel_grads = np.empty((count, 5))  # r, g, b, depth, transmittance
            behind = np.zeros(count)  # per pixel: sum over the composited Gaussians behind of (colour.g + depth gd) w
            xs, ys = np.empty(count), np.empty(count)  # pixel centres
            end = start
            for p in range(count):
                py, px = y0 + p // cols, x0 + p % cols
                xs[p], ys[p] = px + 0.5, py + 0.5
                final[p] = trans[p] = out_trans[cam, py, px]
                last[p] = out_last[cam, py, px]
                end = max(end, last[p])
                pixel_grads[p, 0], pixel_grads[p, 1] = grad_rgb[cam, py, px, 0], grad_rgb[cam, py, px, 1]
                pixel_grads[p, 2], pixel_grads[p, 3] = grad_rgb[cam, py, px, 2], grad_depth[cam, py, px]
                pixel_grads[p, 4] = grad_trans[cam, py, px]
            for k in range(end - 1, start - 1, -1):
                i = gaussians[k]
                mx, my, ca, cb, cc = means2d[i, 0], means2d[i, 1], conics[i, 0], conics[i, 1], conics[i, 2]
                opacity, cr, cg, cbl, depth = opacities[i], colors[i, 0], colors[i, 1], colors[i, 2], depths[i]
                cutoff = math.log(amin / opacity) - 1e-6 if opacity > 0.0 else -np.inf
                g_mx = g_my = g_ca = g_cb = g_cc = g_r = g_g = g_b = g_o = g_d = 0.0
                for p in range(count):
                    if k >= last[p]:
                        continue
                    dx, dy = xs[p] - mx, ys[p] - my
                    power = -0.5 * (ca * dx * dx + cc * dy * dy) - cb * dx * dy
                    if power > 0.0 or power < cutoff:
                        continue
                    gauss = math.exp(power)
                    raw = opacity * gauss
                    alpha = min(amax, raw)
                    if alpha < amin:
                        continue
                    t_before = trans[p] / (1.0 - alpha)  # the transmittance in front of this Gaussian
                    trans[p] = t_before
                    w = alpha * t_before
                    gr, gg, gb, gd = pixel_grads[p, 0], pixel_grads[p, 1], pixel_grads[p, 2], pixel_grads[p, 3]
                    value = cr * gr + cg * gg + cbl * gb + depth * gd
                    g_r += w * gr
                    g_g += w * gg
                    g_b += w * gb
                    g_d += w * gd
                    grad_alpha = value * t_before - (behind[p] + pixel_grads[p, 4] * final[p]) / (1.0 - alpha)
                    behind[p] += value * w
                    if raw <= amax:  # above the clamp alpha does not depend on opacity or position
                        g_o += grad_alpha * gauss
                        grad_power = grad_alpha * alpha
                        g_mx += grad_power * (ca * dx + cb * dy)
                        g_my += grad_power * (cc * dy + cb * dx)
                        g_ca += grad_power * (-0.5 * dx * dx)
                        g_cb += grad_power * (-dx * dy)
                        g_cc += grad_power * (-0.5 * dy * dy)
                grad_pairs[k, 0], grad_pairs[k, 1], grad_pairs[k, 2], grad_pairs[k, 3] = g_mx, g_my, g_ca, g_cb
                grad_pairs[k, 4], grad_pairs[k, 5], grad_pairs[k, 6], grad_pairs[k, 7] = g_cc, g_r, g_g, g_b
                grad_pairs[k, 8], grad_pairs[k, 9] = g_o, g_d

    _KERNELS = (numba, forward, backward)
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
        numba, forward_kernel, _ = _kernels()
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
        numba, _, backward_kernel = _kernels()
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


__all__ = ["TILE", "composite_numba", "numba_available"]
