"""The batched pure-PyTorch backend of the rasterizer (``backend="torch"``).

The image of :mod:`clip_gs.render.reference` (the same projection, alpha, prefix rule and
background), composited for 4 x 4 px tiles of all cameras in cache-sized blocks
(:func:`composite_tiles`) instead of a Python loop over each camera's tiles: several times faster
on a CPU (``benchmarks/bench_render.py``) and runs wherever PyTorch does. Equal to
:func:`~clip_gs.render.reference.rasterize_reference` up to float rounding, values and gradients
(``tests/render/test_render.py``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clip_gs.render.raster_types import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN, ProjectedGaussians, RenderOutput
from clip_gs.render.reference import merge_tile_lists, project_cameras

BATCHED_TILE = 4
"""Tile side of the batched torch backend (px). Small tiles waste few pixel-Gaussian pairs outside a
footprint, and the backend has no per-tile Python cost; 4 was the fastest of 2-16 on 2 CPU cores
(``benchmarks/bench_render.py``)."""
BATCHED_CHUNK = 128
"""Gaussians per tile composited at once by the batched torch backend."""
BATCHED_ELEMENTS = 1 << 17
"""Pixel-Gaussian pairs per block of the batched torch backend: blocks this small stay in the CPU caches."""


def composite_tiles(
    proj: ProjectedGaussians,
    gaussians: Tensor,
    offsets: Tensor,
    tile_origins: Tensor,
    tile_size: int = BATCHED_TILE,
    chunk_size: int = BATCHED_CHUNK,
    max_elements: int = BATCHED_ELEMENTS,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`~clip_gs.render.reference.composite_tile` for many tiles at once: the fast path of this backend.

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
            ``gaussians[offsets[t]:offsets[t + 1]]`` (:func:`~clip_gs.render.reference.intersect_tiles`).
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


def _rasterize_views_batched(projections: list[ProjectedGaussians], width: int, height: int, tile_size: int,
                             chunk_size: int, backgrounds: Tensor) -> RenderOutput:  # fmt: skip
    """Render C cameras with :func:`composite_tiles` over all their tiles at once."""
    device = backgrounds.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    merged, gaussians, offsets = merge_tile_lists(projections, width, height, tile_size)
    ty, tx = torch.meshgrid(torch.arange(tiles_y, device=device), torch.arange(tiles_x, device=device), indexing="ij")
    origins = (torch.stack([tx.reshape(-1), ty.reshape(-1)], dim=-1) * tile_size).repeat(len(projections), 1)
    rgb, depth, trans = composite_tiles(merged, gaussians, offsets, origins, tile_size, chunk_size)
    cams = len(projections)
    image = torch.cat([rgb, depth[..., None], trans[..., None]], dim=-1)  # [C * T, P, 5]
    image = image.view(cams, tiles_y, tiles_x, tile_size, tile_size, 5).permute(0, 1, 3, 2, 4, 5)
    image = image.reshape(cams, tiles_y * tile_size, tiles_x * tile_size, 5)[:, :height, :width]
    return RenderOutput.from_transmittance(image[..., :3], image[..., 3], image[..., 4], backgrounds)


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
    """The pure-PyTorch backend of :func:`~clip_gs.render.rasterize` (``backend="torch"``; validated inputs,
    ``backgrounds: [C, 3]``): the tiles of every camera composited in blocks by :func:`composite_tiles`.
    Equal to :func:`~clip_gs.render.reference.rasterize_reference` up to float rounding (tested, values and
    gradients). ``tile_size`` and ``chunk_size`` are the reference's and gsplat's; this backend tiles with
    :data:`BATCHED_TILE` and :data:`BATCHED_CHUNK` (the image does not depend on either)."""
    projections = project_cameras(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                                  near, far, eps2d)  # fmt: skip
    return _rasterize_views_batched(projections, width, height, BATCHED_TILE, BATCHED_CHUNK, backgrounds)


__all__ = ["BATCHED_CHUNK", "BATCHED_ELEMENTS", "BATCHED_TILE", "composite_tiles", "rasterize_torch"]
