"""The readable pure-PyTorch reference of the 3D Gaussian Splatting rasterizer (``backend="reference"``).

The image formation follows the INRIA 3DGS trainer (Kerbl et al. 2023), with the camera
conventions of gsplat (see :mod:`clip_gs.render.cameras`):

1. **Projection (EWA).** ``p = R mean + t``; Gaussians with ``z <= near`` or ``z >= far`` are
   culled. The 3D covariance ``R_q S S^T R_q^T`` is mapped to the image with the Jacobian of the
   perspective projection at the mean, ``Sigma_2d = J W Sigma_3d W^T J^T``, where ``x/z`` and
   ``y/z`` are clamped to 1.3x the field-of-view limits before building J (gsplat's form of the
   trainer's clamp, equal to it when the principal point is the image centre), and 0.3 px^2 is
   added to the diagonal (the trainer's low-pass filter, ``eps2d``).
2. **Colour.** ``colors: [N, K, 3]`` are SH coefficients evaluated for the direction from the
   camera centre to the mean, ``max(sh + 0.5, 0)``; ``colors: [N, 3]`` are used as they are.
3. **Footprint and tiles.** A Gaussian reaches pixel centre ``x`` with
   ``alpha = min(0.99, opacity * exp(-0.5 d^T Sigma_2d^-1 d))``, ``d = x - mean_2d``, and pixels
   with ``alpha < 1/255`` are skipped. The footprint is therefore exactly the ellipse
   ``d^T Sigma^-1 d <= 2 ln(255 opacity)`` (at most 3.33 sigma: the trainer's 3-sigma radius
   refined by the opacity, as gsplat does); its axis-aligned bounding box decides which
   ``tile_size x tile_size`` tiles the Gaussian is listed in. Gaussians with no tile in the
   image, or with ``opacity < 1/255``, are culled.
4. **Compositing.** Per tile, Gaussians are taken in increasing camera-space depth ``z`` (ties
   in input order) and composited front to back: ``C = sum_i c_i a_i T_i + T_final * bg`` with
   ``T_i = prod_{j<i} (1 - a_j)``; a pixel stops at the first Gaussian that would bring its
   transmittance below 1e-4 (that Gaussian is not composited, as in the trainer).

Outputs are ``rgb`` (background included), ``alpha = 1 - T_final`` and the expected depth
``sum_i a_i T_i z_i / alpha`` (0 where ``alpha == 0``; gsplat's ``"ED"`` render mode).

Memory: no tensor ever spans pixels x Gaussians. The largest intermediates are
``tile_size^2 x chunk_size`` (a tile's pixels against one chunk of its depth-sorted Gaussians)
and the list of (Gaussian, tile) intersections, which grows with N, not with N x pixels.

This module computes it the plain way, a Python loop over the tiles of each camera with each tile
vectorised (:func:`composite_tile`), and holds the steps the faster backends share: the projection
(:func:`project_gaussians`), SH colour (:func:`view_colors`) and the tile lists
(:func:`intersect_tiles`, :func:`merge_tile_lists`). The batched torch backend
(:mod:`clip_gs.render.torch_backend`) and the compiled one (:mod:`clip_gs.render.numba_backend`) are
tested equal to :func:`rasterize_reference`, values and gradients. Everything is differentiable with
respect to means, quats, scales, opacities and colors (culling, tile assignment and sorting are not,
as in every 3DGS rasterizer).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clip_gs.gaussians.cloud import quaternions_to_matrices
from clip_gs.gaussians.sh import sh_degree_from_coeffs, sh_to_rgb
from clip_gs.render.raster_types import (
    ALPHA_MAX,
    ALPHA_MIN,
    FOV_CLAMP,
    TRANSMITTANCE_MIN,
    ProjectedGaussians,
    RenderOutput,
)


def view_colors(means: Tensor, colors: Tensor, ids: Tensor, viewmat: Tensor, sh_degree: int | None) -> Tensor:
    """``[M, 3]`` colour of the Gaussians ``ids`` seen by the camera ``viewmat [4, 4]``: ``colors [N, K, 3]``
    SH evaluated at degree ``sh_degree`` (None: the full degree of K) for the direction camera centre
    -> mean, or ``colors [N, 3]`` RGB as they are."""
    if colors.ndim == 2:
        return colors[ids]
    degree = sh_degree_from_coeffs(colors.shape[1]) if sh_degree is None else sh_degree
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    return sh_to_rgb(colors[ids], means[ids] + rot.T @ trans, degree)


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
) -> ProjectedGaussians:
    """Project the Gaussians into one camera (EWA splatting) and cull the invisible ones.

    Args:
        means: ``[N, 3]``; quats: ``[N, 4]`` wxyz (normalised here); scales: ``[N, 3]`` activated;
        opacities: ``[N]`` activated; colors: ``[N, K, 3]`` SH or ``[N, 3]`` RGB.
        sh_degree: SH degree to evaluate (None: the full degree of K); ignored for RGB colors.
        viewmat: ``[4, 4]`` world-to-camera; K: ``[3, 3]``.

    Returns:
        :class:`ProjectedGaussians` of the M Gaussians that can touch a pixel.
    """
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    with torch.no_grad():
        z_all = means @ rot[2] + trans[2]
        candidates = ((z_all > near) & (z_all < far) & (opacities >= ALPHA_MIN)).nonzero().squeeze(1)

    mean = means[candidates]
    p_cam = mean @ rot.T + trans  # [M, 3]
    x, y, z = p_cam.unbind(-1)

    # Jacobian of (fx x / z + cx, fy y / z + cy) at the mean, with x/z and y/z clamped.
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    margin = FOV_CLAMP - 1.0
    lim_x_pos, lim_x_neg = (width - cx) / fx + margin * tan_fovx, cx / fx + margin * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + margin * tan_fovy, cy / fy + margin * tan_fovy
    tx = z * torch.clamp(x / z, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y / z, -lim_y_neg, lim_y_pos)
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [torch.stack([fx / z, zeros, -fx * tx / z**2], -1), torch.stack([zeros, fy / z, -fy * ty / z**2], -1)],
        dim=-2,
    )  # [M, 2, 3]

    q = quats[candidates]
    q = q / q.norm(dim=-1, keepdim=True)
    m = quaternions_to_matrices(q) * scales[candidates].unsqueeze(-2)  # R S
    t = jac @ rot  # [M, 2, 3]
    # Sigma_2d = (J W R S)(J W R S)^T, the products of 2x3 and 3x3 matrices written out as sums of
    # broadcast products: batched matmuls of such small matrices cost several times more on a CPU.
    tm = sum(t[:, :, k, None] * m[:, None, k, :] for k in range(3))  # [M, 2, 3] = J W R S
    a = (tm[:, 0] * tm[:, 0]).sum(dim=-1) + eps2d
    b = (tm[:, 0] * tm[:, 1]).sum(dim=-1)
    c = (tm[:, 1] * tm[:, 1]).sum(dim=-1) + eps2d
    det = a * c - b * b
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    opac = opacities[candidates]

    with torch.no_grad():
        # The footprint: alpha >= ALPHA_MIN  <=>  d^T Sigma^-1 d <= 2 ln(opacity / ALPHA_MIN).
        k = torch.sqrt(2.0 * torch.log(opac / ALPHA_MIN).clamp_min(0.0))
        extents = torch.stack([k * a.sqrt(), k * c.sqrt()], dim=-1)
        lo, hi = means2d - extents, means2d + extents
        on_image = (det > 0) & (hi[:, 0] >= 0) & (lo[:, 0] <= width) & (hi[:, 1] >= 0) & (lo[:, 1] <= height)
        keep = on_image.nonzero().squeeze(1)

    ids = candidates[keep]
    rgb = view_colors(means, colors, ids, viewmat, sh_degree)
    return ProjectedGaussians(
        ids=ids,
        means2d=means2d[keep],
        conics=conics[keep],
        depths=z[keep],
        opacities=opac[keep],
        colors=rgb,
        extents=extents[keep],
    )


def intersect_tiles(proj: ProjectedGaussians, width: int, height: int, tile_size: int) -> tuple[Tensor, Tensor]:
    """List every (tile, Gaussian) pair whose footprint box overlaps the tile, depth-sorted per tile.

    Returns:
        ``(gaussians [I], offsets [num_tiles + 1])``: ``gaussians[offsets[t]:offsets[t + 1]]`` are
        the indices (into ``proj``) of the Gaussians touching tile ``t`` (row-major tile order),
        nearest first. I grows with the number of Gaussians and their size in tiles, never with
        the pixel count.
    """
    with torch.no_grad():
        tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
        lo = torch.floor((proj.means2d - proj.extents) / tile_size).long()
        hi = torch.floor((proj.means2d + proj.extents) / tile_size).long()
        x0, x1 = lo[:, 0].clamp(0, tiles_x - 1), hi[:, 0].clamp(0, tiles_x - 1)
        y0, y1 = lo[:, 1].clamp(0, tiles_y - 1), hi[:, 1].clamp(0, tiles_y - 1)
        span_x = x1 - x0 + 1
        counts = span_x * (y1 - y0 + 1)  # [M] tiles per Gaussian

        order = torch.sort(proj.depths.detach(), stable=True).indices  # nearest first
        counts_sorted = counts[order]
        gauss = torch.repeat_interleave(order, counts_sorted)  # [I]
        first = torch.cumsum(counts_sorted, 0) - counts_sorted
        local = torch.arange(gauss.numel(), device=gauss.device) - torch.repeat_interleave(first, counts_sorted)
        tile_x = x0[gauss] + local % span_x[gauss]
        tile_y = y0[gauss] + local // span_x[gauss]
        tile_ids = tile_y * tiles_x + tile_x
        by_tile = torch.sort(tile_ids, stable=True).indices  # keeps the depth order within a tile
        gauss = gauss[by_tile]
        per_tile = torch.bincount(tile_ids, minlength=tiles_x * tiles_y)
        offsets = torch.cat([per_tile.new_zeros(1), torch.cumsum(per_tile, 0)])
    return gauss, offsets


def composite_tile(
    proj: ProjectedGaussians, gaussians: Tensor, pixels: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Front-to-back alpha compositing of depth-sorted Gaussians over a set of pixels.

    Args:
        proj: projected Gaussians.
        gaussians: ``[G]`` indices into ``proj``, nearest first.
        pixels: ``[P, 2]`` pixel-centre coordinates (x, y).
        chunk_size: Gaussians processed at once; the largest intermediate is ``[P, chunk_size, 2]``.

    Returns:
        ``(rgb [P, 3] without background, accumulated depth [P] (not normalised), transmittance [P])``.
    """
    num_pixels = pixels.shape[0]
    dtype = proj.means2d.dtype
    transmittance = torch.ones(num_pixels, dtype=dtype, device=pixels.device)
    done = torch.zeros(num_pixels, dtype=torch.bool, device=pixels.device)
    rgb = pixels.new_zeros(num_pixels, 3, dtype=dtype)
    depth = pixels.new_zeros(num_pixels, dtype=dtype)
    for start in range(0, gaussians.numel(), chunk_size):
        g = gaussians[start : start + chunk_size]
        d = pixels[:, None, :] - proj.means2d[g][None]  # [P, G, 2]
        conic = proj.conics[g]
        dx, dy = d[..., 0], d[..., 1]
        power = -0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) - conic[:, 1] * dx * dy
        alpha = torch.clamp(proj.opacities[g] * torch.exp(power), max=ALPHA_MAX)
        alpha = torch.where((alpha >= ALPHA_MIN) & (power <= 0), alpha, torch.zeros_like(alpha))

        # Transmittance after each Gaussian if all of them were composited; the trainer stops at
        # the first one that would bring it below TRANSMITTANCE_MIN, so a prefix is kept.
        after = transmittance[:, None] * torch.cumprod(1.0 - alpha, dim=1)
        keep = (after >= TRANSMITTANCE_MIN) & ~done[:, None]
        before = torch.cat([transmittance[:, None], after[:, :-1]], dim=1)
        weights = torch.where(keep, alpha * before, torch.zeros_like(alpha))  # [P, G]

        rgb = rgb + weights @ proj.colors[g]
        depth = depth + weights @ proj.depths[g]
        transmittance = transmittance * torch.where(keep, 1.0 - alpha, torch.ones_like(alpha)).prod(dim=1)
        done = done | (after[:, -1] < TRANSMITTANCE_MIN)
        if bool(done.all()):
            break
    return rgb, depth, transmittance


def _rasterize_view(proj: ProjectedGaussians, width: int, height: int, tile_size: int,
                    chunk_size: int) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Composite one camera, tile by tile: ``(rgb [H, W, 3] without background, accumulated depth [H, W]
    (not normalised), transmittance [H, W])``."""
    dtype, device = proj.means2d.dtype, proj.means2d.device
    gauss, offsets = intersect_tiles(proj, width, height, tile_size)
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    rows = []
    for ty in range(tiles_y):
        row = []
        y_start, y_end = ty * tile_size, min((ty + 1) * tile_size, height)
        for tx in range(tiles_x):
            x_start, x_end = tx * tile_size, min((tx + 1) * tile_size, width)
            ys = torch.arange(y_start, y_end, dtype=dtype, device=device) + 0.5
            xs = torch.arange(x_start, x_end, dtype=dtype, device=device) + 0.5
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            pixels = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # [P, 2] (x, y)
            tile = ty * tiles_x + tx
            members = gauss[offsets[tile] : offsets[tile + 1]]
            rgb, depth, trans = composite_tile(proj, members, pixels, chunk_size)
            tile_out = torch.cat([rgb, depth[:, None], trans[:, None]], dim=-1)
            row.append(tile_out.reshape(y_end - y_start, x_end - x_start, 5))
        rows.append(torch.cat(row, dim=1))
    image = torch.cat(rows, dim=0)  # [H, W, 5]
    return image[..., :3], image[..., 3], image[..., 4]


def merge_tile_lists(projections: list[ProjectedGaussians], width: int, height: int,
                     tile_size: int) -> tuple[ProjectedGaussians, Tensor, Tensor]:  # fmt: skip
    """Every camera's :func:`intersect_tiles` lists as one, the form the batched torch and numba backends
    composite: ``(merged, gaussians [I], offsets [C * T + 1])``, tiles camera-major, then row-major;
    ``gaussians`` index the concatenated ``merged`` Gaussians."""
    lists, offsets, listed, base = [], [], 0, 0
    for proj in projections:
        gauss, tile_offsets = intersect_tiles(proj, width, height, tile_size)
        lists.append(gauss + base)
        offsets.append(tile_offsets[:-1] + listed)
        listed += gauss.numel()
        base += proj.ids.numel()
    fields = ProjectedGaussians.__dataclass_fields__
    merged = ProjectedGaussians(*(torch.cat([getattr(p, f) for p in projections]) for f in fields))
    device = merged.means2d.device
    offsets = torch.cat([*offsets, torch.tensor([listed], device=device, dtype=torch.long)])
    return merged, torch.cat(lists), offsets


def project_cameras(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, near, far,
                    eps2d) -> list[ProjectedGaussians]:  # fmt: skip
    """:func:`project_gaussians` into each of the C cameras (``viewmats [C, 4, 4]``, ``Ks [C, 3, 3]``): the
    first step of the reference and of the batched torch backend."""
    return [project_gaussians(means, quats, scales, opacities, colors, viewmats[cam], Ks[cam], width, height,
                              sh_degree, near=near, far=far, eps2d=eps2d) for cam in range(viewmats.shape[0])]  # fmt: skip


def rasterize_reference(
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
    tile_size: int,
    chunk_size: int,
    eps2d: float,
) -> RenderOutput:
    """The readable per-tile reference of :func:`~clip_gs.render.rasterize` (``backend="reference"``; validated inputs,
    ``backgrounds: [C, 3]``): one :func:`composite_tile` call per tile of each camera."""
    projections = project_cameras(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                                  near, far, eps2d)  # fmt: skip
    outputs = [_rasterize_view(proj, width, height, tile_size, chunk_size) for proj in projections]
    rgb, depth, trans = (torch.stack(parts) for parts in zip(*outputs))
    return RenderOutput.from_transmittance(rgb, depth, trans, backgrounds)


__all__ = [
    "composite_tile",
    "intersect_tiles",
    "merge_tile_lists",
    "project_cameras",
    "project_gaussians",
    "rasterize_reference",
    "view_colors",
]
