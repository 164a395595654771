"""The compiled CPU backend of :func:`clip_gs.render.rasterize`: projection and compositing in numba.

Two kernels and their backward passes: the EWA projection with culling (:func:`project_numba`, the
arithmetic of :func:`~clip_gs.render.rasterize.project_gaussians`, for all cameras at once; tested
against it, values and gradients) and the per-pixel front-to-back loop (:func:`composite_numba`),
the part that costs pixels x Gaussians. SH colour and the (tile, Gaussian) lists
(:func:`~clip_gs.render.rasterize.intersect_tiles`) stay in PyTorch. The compositing backward is
the one of the 3DGS trainer and gsplat: each pixel walks its Gaussians back to front, recovering the transmittance before each one
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
from clip_gs.render.rasterize import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN

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
    from numba import njit, prange

    # PyTorch brings its own OpenMP runtime; numba's "omp" layer on top of it loses the parallel
    # speed-up (measured: 2 threads as slow as 1). The workqueue layer has no such clash.
    numba.config.THREADING_LAYER = "workqueue"

    amax, amin, tmin = ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN

    @njit(cache=True, nogil=True)
    def tile_pixels(t, tiles_x, tiles_y, tile, width, height):
        # Tile t (camera-major, then row-major): (camera, top, left, columns, pixels, their centres x, y).
        cam, rest = t // (tiles_x * tiles_y), t % (tiles_x * tiles_y)
        y0, x0 = (rest // tiles_x) * tile, (rest % tiles_x) * tile
        cols = min(tile, width - x0)
        count = min(tile, height - y0) * cols
        xs, ys = np.empty(count), np.empty(count)
        for p in range(count):
            xs[p], ys[p] = x0 + p % cols + 0.5, y0 + p // cols + 0.5
        return cam, y0, x0, cols, count, xs, ys

    @njit(parallel=True, cache=True, nogil=True)
    def forward(means2d, conics, colors, opacities, depths, gaussians, offsets, tiles_x, tiles_y, tile, width,
                height, out_rgb, out_depth, out_trans, out_last):  # fmt: skip
        # Per tile: its Gaussians in the outer loop (each read once), its pixels in the inner one.
        for t in prange(offsets.shape[0] - 1):
            cam, y0, x0, cols, count, xs, ys = tile_pixels(t, tiles_x, tiles_y, tile, width, height)
            start, end = offsets[t], offsets[t + 1]
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
        for t in prange(offsets.shape[0] - 1):
            cam, y0, x0, cols, count, xs, ys = tile_pixels(t, tiles_x, tiles_y, tile, width, height)
            start = offsets[t]
            trans = np.empty(count)
            final = np.empty(count)
            last = np.empty(count, np.int64)
            pixel_grads = np.empty((count, 5))  # r, g, b, depth, transmittance
            behind = np.zeros(count)  # per pixel: sum over the composited Gaussians behind of (colour.g + depth gd) w
            end = start
            for p in range(count):
                py, px = y0 + p // cols, x0 + p % cols
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

    @njit(cache=True, nogil=True)
    def camera_point(r, means, i):
        # Gaussian i's mean in the camera frame of the world-to-camera matrix r.
        x = r[0, 0] * means[i, 0] + r[0, 1] * means[i, 1] + r[0, 2] * means[i, 2] + r[0, 3]
        y = r[1, 0] * means[i, 0] + r[1, 1] * means[i, 1] + r[1, 2] * means[i, 2] + r[1, 3]
        z = r[2, 0] * means[i, 0] + r[2, 1] * means[i, 1] + r[2, 2] * means[i, 2] + r[2, 3]
        return x, y, z

    @njit(cache=True, nogil=True)
    def ewa(x, y, z, r, K, quats, scales, i, width, height, eps2d, clamp):
        # The terms of Sigma_2d = (J W R S)(J W R S)^T that the forward and backward passes share:
        # x/z and y/z, the same clamped to the Jacobian's limits (equal where inside them), tx and ty,
        # the quaternion's norm and unit components, R, J W, R S, J W R S and Sigma_2d's a, b, c.
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        margin = clamp - 1.0
        tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
        lx_lo, lx_hi = -(cx / fx + margin * tan_x), (width - cx) / fx + margin * tan_x
        ly_lo, ly_hi = -(cy / fy + margin * tan_y), (height - cy) / fy + margin * tan_y
        rx, ry = x / z, y / z
        sx, sy = min(max(rx, lx_lo), lx_hi), min(max(ry, ly_lo), ly_hi)
        tx, ty = z * sx, z * sy
        j00, j02, j11, j12 = fx / z, -fx * tx / (z * z), fy / z, -fy * ty / (z * z)
        qw, qx, qy, qz = quats[i, 0], quats[i, 1], quats[i, 2], quats[i, 3]
        norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
        q = (qw / norm, qx / norm, qy / norm, qz / norm)
        qw, qx, qy, qz = q
        rq = np.empty((3, 3))
        rq[0, 0], rq[0, 1], rq[0, 2] = 1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)
        rq[1, 0], rq[1, 1], rq[1, 2] = 2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)
        rq[2, 0], rq[2, 1], rq[2, 2] = 2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)
        t = np.empty((2, 3))  # J W
        for k in range(3):
            t[0, k] = j00 * r[0, k] + j02 * r[2, k]
            t[1, k] = j11 * r[1, k] + j12 * r[2, k]
        mm = np.empty((3, 3))  # R S
        for row in range(3):
            for col in range(3):
                mm[row, col] = rq[row, col] * scales[i, col]
        tm = np.zeros((2, 3))  # J W R S
        for col in range(3):
            for k in range(3):
                tm[0, col] += t[0, k] * mm[k, col]
                tm[1, col] += t[1, k] * mm[k, col]
        a = tm[0, 0] * tm[0, 0] + tm[0, 1] * tm[0, 1] + tm[0, 2] * tm[0, 2] + eps2d
        b = tm[0, 0] * tm[1, 0] + tm[0, 1] * tm[1, 1] + tm[0, 2] * tm[1, 2]
        c = tm[1, 0] * tm[1, 0] + tm[1, 1] * tm[1, 1] + tm[1, 2] * tm[1, 2] + eps2d
        return rx, ry, sx, sy, tx, ty, norm, q, rq, t, mm, tm, a, b, c

    @njit(parallel=True, cache=True, nogil=True)
    def project_forward(means, quats, scales, opacities, viewmats, Ks, width, height, near, far, eps2d, clamp,
                        out_means2d, out_conics, out_depths, out_extents, out_valid):  # fmt: skip
        # The EWA projection of clip_gs.render.rasterize.project_gaussians, per (camera, Gaussian).
        cams, n = viewmats.shape[0], means.shape[0]
        for job in prange(cams * n):
            cam, i = job // n, job % n
            out_valid[cam, i] = False
            r = viewmats[cam]
            x, y, z = camera_point(r, means, i)
            opacity = opacities[i]
            if not (z > near and z < far and opacity >= amin):
                continue
            terms = ewa(x, y, z, r, Ks[cam], quats, scales, i, width, height, eps2d, clamp)
            a, b, c = terms[12], terms[13], terms[14]  # Sigma_2d
            fx, fy, cx, cy = Ks[cam, 0, 0], Ks[cam, 1, 1], Ks[cam, 0, 2], Ks[cam, 1, 2]
            det = a * c - b * b
            u, v = fx * x / z + cx, fy * y / z + cy
            k = math.sqrt(max(2.0 * math.log(opacity / amin), 0.0))
            ex, ey = k * math.sqrt(a), k * math.sqrt(c)
            if not (det > 0 and u + ex >= 0 and u - ex <= width and v + ey >= 0 and v - ey <= height):
                continue
            out_valid[cam, i] = True
            out_means2d[cam, i, 0], out_means2d[cam, i, 1] = u, v
            out_conics[cam, i, 0], out_conics[cam, i, 1], out_conics[cam, i, 2] = c / det, -b / det, a / det
            out_depths[cam, i] = z
            out_extents[cam, i, 0], out_extents[cam, i, 1] = ex, ey

    @njit(cache=True, nogil=True)
    def project_backward(means, quats, scales, viewmats, Ks, width, height, eps2d, clamp, valid, grad_means2d,
                         grad_conics, grad_depths, grad_means, grad_quats, grad_scales):  # fmt: skip
        # Gradients of project_forward's outputs back to means, quats (before normalisation) and
        # scales, summed over the cameras in camera order (serial: deterministic).
        cams, n = viewmats.shape[0], means.shape[0]
        for cam in range(cams):
            r = viewmats[cam]
            fx, fy = Ks[cam, 0, 0], Ks[cam, 1, 1]
            for i in range(n):
                if not valid[cam, i]:
                    continue
                x, y, z = camera_point(r, means, i)
                rx, ry, sx, sy, tx, ty, norm, q, rq, t, mm, tm, a, b, c = ewa(x, y, z, r, Ks[cam], quats, scales, i,
                                                                               width, height, eps2d, clamp)  # fmt: skip
                qw, qx, qy, qz = q
                det = a * c - b * b
                ga_, gb_, gc_ = grad_conics[cam, i, 0], grad_conics[cam, i, 1], grad_conics[cam, i, 2]
                d2 = det * det
                ga = ga_ * (-c * c / d2) + gb_ * (b * c / d2) + gc_ * (1.0 / det - a * c / d2)
                gb = ga_ * (2.0 * b * c / d2) + gb_ * (-1.0 / det - 2.0 * b * b / d2) + gc_ * (2.0 * a * b / d2)
                gc = ga_ * (1.0 / det - a * c / d2) + gb_ * (a * b / d2) + gc_ * (-a * a / d2)
                gtm = np.empty((2, 3))
                for col in range(3):
                    gtm[0, col] = 2.0 * ga * tm[0, col] + gb * tm[1, col]
                    gtm[1, col] = gb * tm[0, col] + 2.0 * gc * tm[1, col]
                gt = np.zeros((2, 3))
                gmm = np.zeros((3, 3))
                for k in range(3):
                    for col in range(3):
                        gt[0, k] += gtm[0, col] * mm[k, col]
                        gt[1, k] += gtm[1, col] * mm[k, col]
                        gmm[k, col] += t[0, k] * gtm[0, col] + t[1, k] * gtm[1, col]
                grq = np.empty((3, 3))
                for row in range(3):
                    for col in range(3):
                        grad_scales[i, col] += gmm[row, col] * rq[row, col]
                        grq[row, col] = gmm[row, col] * scales[i, col]
                g_w = 2.0 * (
                    -qz * grq[0, 1] + qy * grq[0, 2] + qz * grq[1, 0] - qx * grq[1, 2] - qy * grq[2, 0] + qx * grq[2, 1]
                )
                g_x = 2.0 * (qy * grq[0, 1] + qz * grq[0, 2] + qy * grq[1, 0] - 2.0 * qx * grq[1, 1] - qw * grq[1, 2]
                             + qz * grq[2, 0] + qw * grq[2, 1] - 2.0 * qx * grq[2, 2])  # fmt: skip
                g_y = 2.0 * (-2.0 * qy * grq[0, 0] + qx * grq[0, 1] + qw * grq[0, 2] + qx * grq[1, 0] + qz * grq[1, 2]
                             - qw * grq[2, 0] + qz * grq[2, 1] - 2.0 * qy * grq[2, 2])  # fmt: skip
                g_z = 2.0 * (-2.0 * qz * grq[0, 0] - qw * grq[0, 1] + qx * grq[0, 2] + qw * grq[1, 0] - 2.0 * qz * grq[1, 1]
                             + qy * grq[1, 2] + qx * grq[2, 0] + qy * grq[2, 1])  # fmt: skip
                dot = qw * g_w + qx * g_x + qy * g_y + qz * g_z  # through the normalisation q / |q|
                grad_quats[i, 0] += (g_w - qw * dot) / norm
                grad_quats[i, 1] += (g_x - qx * dot) / norm
                grad_quats[i, 2] += (g_y - qy * dot) / norm
                grad_quats[i, 3] += (g_z - qz * dot) / norm
                # T = J W: J's entries from z, tx, ty
                gj00 = gt[0, 0] * r[0, 0] + gt[0, 1] * r[0, 1] + gt[0, 2] * r[0, 2]
                gj02 = gt[0, 0] * r[2, 0] + gt[0, 1] * r[2, 1] + gt[0, 2] * r[2, 2]
                gj11 = gt[1, 0] * r[1, 0] + gt[1, 1] * r[1, 1] + gt[1, 2] * r[1, 2]
                gj12 = gt[1, 0] * r[2, 0] + gt[1, 1] * r[2, 1] + gt[1, 2] * r[2, 2]
                gx = gy = 0.0
                gz = grad_depths[cam, i] - gj00 * fx / (z * z) - gj11 * fy / (z * z)
                gz += gj02 * 2.0 * fx * tx / (z * z * z) + gj12 * 2.0 * fy * ty / (z * z * z)
                gtx, gty = -gj02 * fx / (z * z), -gj12 * fy / (z * z)
                if sx == rx:  # inside the clamp: tx = x
                    gx += gtx
                else:  # clamped: tx = z * limit
                    gz += gtx * sx
                if sy == ry:
                    gy += gty
                else:
                    gz += gty * sy
                gu, gv = grad_means2d[cam, i, 0], grad_means2d[cam, i, 1]
                gx += gu * fx / z
                gy += gv * fy / z
                gz -= gu * fx * x / (z * z) + gv * fy * y / (z * z)
                for k in range(3):
                    grad_means[i, k] += r[0, k] * gx + r[1, k] * gy + r[2, k] * gz

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
    """:func:`~clip_gs.render.rasterize.project_gaussians` for all C cameras at once, compiled.

    Args:
        means: ``[N, 3]``, quats: ``[N, 4]`` (any norm), scales: ``[N, 3]``, opacities: ``[N]`` (CPU);
            viewmats: ``[C, 4, 4]``, Ks: ``[C, 3, 3]``; clamp: :data:`~clip_gs.render.rasterize.FOV_CLAMP`.

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


__all__ = ["TILE", "composite_numba", "numba_available", "project_numba"]
