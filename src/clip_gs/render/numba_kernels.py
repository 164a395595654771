"""The compiled kernels of :mod:`clip_gs.render.numba_backend` (imported on its first use).

They are module-level functions, not closures, so that numba's on-disk cache (``cache=True``,
next to this file) is found again by every later process: a closure's cache entry never matched,
and each process (every prepare worker) spent seconds compiling the kernels anew.
"""

import math

import numba
import numpy as np
from numba import njit, prange

from clip_gs.render.raster_types import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN

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
    # The EWA projection of clip_gs.render.reference.project_gaussians, per (camera, Gaussian).
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
