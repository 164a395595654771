"""Differentiable 3D Gaussian Splatting rasterizer: the readable pure-PyTorch reference.

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

Three CPU implementations compute this, and tests hold them equal (values and gradients):
``backend="reference"`` (:func:`rasterize_reference`) is the readable one, a Python loop over the
tiles of each camera with each tile vectorised; ``backend="torch"`` (:func:`rasterize_torch`)
composites 4 x 4 px tiles of all cameras in cache-sized blocks (:func:`composite_tiles`), pure
PyTorch; ``backend="numba"`` (:func:`rasterize_numba`, the CPU default) compiles the projection and
the per-pixel loop, each with its backward pass (:mod:`clip_gs.render.numba_backend`), many times
faster again, forward and backward (``benchmarks/bench_render.py``, ``benchmarks/bench_raster_grad.py``). Everything is differentiable with respect to
means, quats, scales, opacities and colors (culling, tile assignment and sorting are not, as in
every 3DGS rasterizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clip_gs.errors import RenderError
from clip_gs.gaussians.cloud import GaussianCloud, quaternions_to_matrices
from clip_gs.gaussians.sh import sh_degree_from_coeffs, sh_to_rgb
from clip_gs.render.cameras import Cameras

ALPHA_MAX = 0.99
"""Upper clamp of a Gaussian's alpha (INRIA trainer; gsplat uses 0.999)."""
ALPHA_MIN = 1.0 / 255.0
"""Pixels where a Gaussian's alpha is below this are skipped."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops compositing before its transmittance would drop below this."""
FOV_CLAMP = 1.3
"""``x/z`` and ``y/z`` are clamped to this multiple of the field-of-view limit inside the Jacobian."""
BATCHED_TILE = 4
"""Tile side of the batched torch backend (px). Small tiles waste few pixel-Gaussian pairs outside a
footprint, and the backend has no per-tile Python cost; 4 was the fastest of 2-16 on 2 CPU cores
(``benchmarks/bench_render.py``)."""
BATCHED_CHUNK = 128
"""Gaussians per tile composited at once by the batched torch backend."""
BATCHED_ELEMENTS = 1 << 17
"""Pixel-Gaussian pairs per block of the batched torch backend: blocks this small stay in the CPU caches."""


@dataclass(frozen=True)
class RenderOutput:
    """What :func:`rasterize` returns.

    Attributes:
        rgb: ``[C, H, W, 3]`` colour, background composited.
        alpha: ``[C, H, W]`` accumulated opacity ``1 - T_final`` in [0, 1].
        depth: ``[C, H, W]`` expected camera-space depth (z), normalised by alpha; 0 where alpha is 0.
        info: with ``rasterize(..., with_info=True)``, what gsplat's densification strategies read,
            in gsplat's layout: ``means2d [C, N, 2]`` (in the graph: its ``.grad`` after a backward,
            once ``retain_grad()`` is called, is the screen-space gradient of every Gaussian in every
            camera), ``radii [C, N, 2]`` (footprint half-widths in px, 0 where culled), ``width``,
            ``height``, ``n_cameras`` and ``gaussian_ids`` (None: not packed). Otherwise None.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    info: dict | None = None


@dataclass(frozen=True)
class ProjectedGaussians:
    """Per-camera screen-space Gaussians after culling (an intermediate of the torch backend).

    Attributes:
        ids: ``[M]`` indices of the kept Gaussians in the input arrays.
        means2d: ``[M, 2]`` pixel coordinates of the projected means.
        conics: ``[M, 3]`` upper triangle ``(a, b, c)`` of ``Sigma_2d^-1``.
        depths: ``[M]`` camera-space z.
        opacities: ``[M]``.
        colors: ``[M, 3]`` view-dependent colour.
        extents: ``[M, 2]`` half-widths of the footprint's bounding box in pixels (no grad).
    """

    ids: Tensor
    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    colors: Tensor
    extents: Tensor


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


def _rasterize_view(proj: ProjectedGaussians, width: int, height: int, tile_size: int, chunk_size: int,
                    background: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Render one camera: ``(rgb [H, W, 3], alpha [H, W], depth [H, W])``."""
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
    trans = image[..., 4]
    alpha = 1.0 - trans
    rgb = image[..., :3] + trans[..., None] * background
    depth = image[..., 3] / alpha.clamp_min(1e-10)
    return rgb, alpha, depth


def composite_tiles(
    proj: ProjectedGaussians,
    gaussians: Tensor,
    offsets: Tensor,
    tile_origins: Tensor,
    tile_size: int = BATCHED_TILE,
    chunk_size: int = BATCHED_CHUNK,
    max_elements: int = BATCHED_ELEMENTS,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`composite_tile` for many tiles at once: the fast path of the ``"torch"`` backend.

    The same arithmetic as the per-tile reference (the same alpha, the same prefix rule, chunks of
    ``chunk_size`` Gaussians counted from each tile's first one), but every tile's pixels are one
    row of a padded ``[T, P, chunk]`` block, so a view costs a handful of tensor operations per
    chunk instead of a Python loop over its tiles. Tiles are taken in order of their list length and
    processed in groups that keep ``group * P * chunk`` at most ``max_elements`` (memory bound, and
    small enough to stay in the CPU caches); a group stops at the chunk where all its pixels are
    done, or where its longest tile list ends.

    Args:
        proj: projected Gaussians (several cameras may be concatenated: tiles index into it).
        gaussians, offsets: ``[I]`` and ``[T + 1]``: the members of tile ``t``, nearest first, are
            ``gaussians[offsets[t]:offsets[t + 1]]`` (:func:`intersect_tiles`).
        tile_origins: ``[T, 2]`` pixel coordinates (x, y) of each tile's top-left corner.
        tile_size: tile side; every tile has ``P = tile_size^2`` pixels (those past the image edge are
            computed and cropped by the caller).

    Returns:
        ``(rgb [T, P, 3] without background, accumulated depth [T, P], transmittance [T, P])``,
        pixels of a tile in row-major order.
    """
    dtype, device = proj.means2d.dtype, proj.means2d.device
    num_tiles = tile_origins.shape[0]
    steps = torch.arange(tile_size, dtype=dtype, device=device) + 0.5
    local_y, local_x = torch.meshgrid(steps, steps, indexing="ij")
    local = torch.stack([local_x.reshape(-1), local_y.reshape(-1)], dim=-1)  # [P, 2] (x, y)
    num_pixels = local.shape[0]
    counts = offsets[1:] - offsets[:-1]
    # Tiles in order of their list length, so that a group pads its lists to a similar length.
    order = torch.sort(counts, stable=True).indices
    group = max(1, max_elements // (num_pixels * chunk_size))
    outputs = []
    for first in range(0, num_tiles, group):
        tiles = order[first : first + group]
        pixels = tile_origins[tiles, None, :].to(dtype) + local[None]  # [t, P, 2]
        starts, lengths = offsets[tiles], counts[tiles]
        t = tiles.numel()
        transmittance = torch.ones(t, num_pixels, dtype=dtype, device=device)
        done = torch.zeros(t, num_pixels, dtype=torch.bool, device=device)
        rgb = torch.zeros(t, num_pixels, 3, dtype=dtype, device=device)
        depth = torch.zeros(t, num_pixels, dtype=dtype, device=device)
        longest = int(lengths.max())
        for start in range(0, longest, chunk_size):
            width = min(chunk_size, longest - start)
            position = start + torch.arange(width, device=device)  # [c]
            valid = position[None, :] < lengths[:, None]  # [t, c]; past a tile's list: alpha 0 below
            members = gaussians[(starts[:, None] + position[None, :]).clamp(max=gaussians.numel() - 1)]
            d = pixels[:, :, None, :] - proj.means2d[members][:, None]  # [t, P, c, 2]
            conic = proj.conics[members][:, None]  # [t, 1, c, 3]
            dx, dy = d[..., 0], d[..., 1]
            power = -0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) - conic[..., 1] * dx * dy
            alpha = torch.clamp(proj.opacities[members][:, None] * torch.exp(power), max=ALPHA_MAX)
            alpha = torch.where((alpha >= ALPHA_MIN) & (power <= 0) & valid[:, None], alpha, torch.zeros_like(alpha))

            after = transmittance[..., None] * torch.cumprod(1.0 - alpha, dim=-1)  # [t, P, c]
            keep = (after >= TRANSMITTANCE_MIN) & ~done[..., None]
            before = torch.cat([transmittance[..., None], after[..., :-1]], dim=-1)
            weights = torch.where(keep, alpha * before, torch.zeros_like(alpha))

            rgb = rgb + torch.bmm(weights, proj.colors[members])
            depth = depth + torch.bmm(weights, proj.depths[members][..., None])[..., 0]
            transmittance = transmittance * torch.where(keep, 1.0 - alpha, torch.ones_like(alpha)).prod(dim=-1)
            done = done | (after[..., -1] < TRANSMITTANCE_MIN)
            if bool(done.all()):
                break
        outputs.append((rgb, depth, transmittance))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(num_tiles, device=device)
    rgb, depth, transmittance = (torch.cat(parts)[inverse] for parts in zip(*outputs))
    return rgb, depth, transmittance


def _merge_tile_lists(projections: list[ProjectedGaussians], width: int, height: int,
                      tile_size: int) -> tuple[ProjectedGaussians, Tensor, Tensor]:  # fmt: skip
    """Every camera's :func:`intersect_tiles` lists as one: ``(merged, gaussians [I], offsets [C * T + 1])``,
    tiles camera-major, then row-major; ``gaussians`` index the concatenated ``merged`` Gaussians."""
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


def _finish(rgb: Tensor, depth: Tensor, trans: Tensor, backgrounds: Tensor, info: dict | None = None) -> RenderOutput:
    """Composite the background and normalise depth: ``rgb [C, H, W, 3]``, ``depth``, ``trans [C, H, W]``."""
    alpha = 1.0 - trans
    rgb = rgb + trans[..., None] * backgrounds[:, None, None, :]
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth / alpha.clamp_min(1e-10), info=info)


def _screen_space_info(projections: list[ProjectedGaussians], merged: ProjectedGaussians, num_gaussians: int,
                       width: int, height: int) -> tuple[ProjectedGaussians, dict]:  # fmt: skip
    """Route the merged ``means2d`` through a dense ``[C, N, 2]`` tensor (so that its gradient is every
    Gaussian's screen-space gradient per camera) and list the footprints as ``radii [C, N, 2]``:
    the ``info`` of :class:`RenderOutput`."""
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


def _rasterize_views_batched(projections: list[ProjectedGaussians], width: int, height: int, tile_size: int,
                             chunk_size: int, backgrounds: Tensor) -> RenderOutput:  # fmt: skip
    """Render C cameras with :func:`composite_tiles` over all their tiles at once."""
    device = backgrounds.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    merged, gaussians, offsets = _merge_tile_lists(projections, width, height, tile_size)
    ty, tx = torch.meshgrid(torch.arange(tiles_y, device=device), torch.arange(tiles_x, device=device), indexing="ij")
    origins = (torch.stack([tx.reshape(-1), ty.reshape(-1)], dim=-1) * tile_size).repeat(len(projections), 1)
    rgb, depth, trans = composite_tiles(merged, gaussians, offsets, origins, tile_size, chunk_size)
    cams = len(projections)
    image = torch.cat([rgb, depth[..., None], trans[..., None]], dim=-1)  # [C * T, P, 5]
    image = image.view(cams, tiles_y, tiles_x, tile_size, tile_size, 5).permute(0, 1, 3, 2, 4, 5)
    image = image.reshape(cams, tiles_y * tile_size, tiles_x * tile_size, 5)[:, :height, :width]
    return _finish(image[..., :3], image[..., 3], image[..., 4], backgrounds)


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


def _project_cameras(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, near, far,
                     eps2d) -> list[ProjectedGaussians]:  # fmt: skip
    """:func:`project_gaussians` into each of the C cameras (the first step of both torch backends)."""
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
    """The readable per-tile reference of :func:`rasterize` (``backend="reference"``; validated inputs,
    ``backgrounds: [C, 3]``): one :func:`composite_tile` call per tile of each camera."""
    projections = _project_cameras(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                                   near, far, eps2d)  # fmt: skip
    outputs = [_rasterize_view(proj, width, height, tile_size, chunk_size, backgrounds[cam])
               for cam, proj in enumerate(projections)]  # fmt: skip
    rgb, alpha, depth = (torch.stack(parts) for parts in zip(*outputs))
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)


def rasterize_torch(
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
    """The pure-PyTorch backend of :func:`rasterize` (``backend="torch"``; validated inputs,
    ``backgrounds: [C, 3]``): the tiles of every camera composited in blocks by :func:`composite_tiles`.
    Equal to :func:`rasterize_reference` up to float rounding (tested, values and gradients).
    ``tile_size`` and ``chunk_size`` are the reference's and gsplat's; this backend tiles with
    :data:`BATCHED_TILE` and :data:`BATCHED_CHUNK` (the image does not depend on either)."""
    projections = _project_cameras(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                                   near, far, eps2d)  # fmt: skip
    return _rasterize_views_batched(projections, width, height, BATCHED_TILE, BATCHED_CHUNK, backgrounds)


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
    """The compiled CPU backend of :func:`rasterize` (``backend="numba"``; validated CPU inputs,
    ``backgrounds: [C, 3]``): the projection (:func:`~clip_gs.render.numba_backend.project_numba`) and
    the compositing, forward and backward, in the kernels of :mod:`clip_gs.render.numba_backend`; SH
    colour and the tile lists in PyTorch. Equal to :func:`rasterize_reference` up to float rounding
    (tested, values and gradients)."""
    from clip_gs.render.numba_backend import TILE, composite_numba, project_numba

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
    merged, gaussians, offsets = _merge_tile_lists(projections, width, height, TILE)
    info = None
    if with_info:
        merged, info = _screen_space_info(projections, merged, means.shape[0], width, height)
    rgb, depth, trans = composite_numba(merged.means2d, merged.conics, merged.colors, merged.opacities, merged.depths,
                                        gaussians, offsets, len(projections), width, height)  # fmt: skip
    return _finish(rgb, depth, trans, backgrounds, info)


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
    """Render 3D Gaussians into C pinhole cameras (see the module docstring for the model).

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
            :data:`BATCHED_TILE`, numba :data:`clip_gs.render.numba_backend.TILE`).
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

    from clip_gs.render.gsplat_backend import gsplat_available, rasterize_gsplat
    from clip_gs.render.numba_backend import numba_available

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


__all__ = [
    "ALPHA_MAX",
    "ALPHA_MIN",
    "TRANSMITTANCE_MIN",
    "ProjectedGaussians",
    "RenderOutput",
    "composite_tile",
    "composite_tiles",
    "intersect_tiles",
    "project_gaussians",
    "rasterize",
    "rasterize_numba",
    "rasterize_reference",
    "rasterize_torch",
    "render_cloud",
]
