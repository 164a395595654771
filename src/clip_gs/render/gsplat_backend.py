"""Optional CUDA backend: dispatch :func:`clip_gs.render.rasterize` to ``gsplat.rasterization``.

``gsplat`` (the ``cuda`` extra, ``pip install clip-gs[cuda]``) is imported lazily, only here and
only when asked for. Conventions already match: gsplat takes world-to-camera ``viewmats`` in
OpenCV axes, wxyz quaternions (normalised internally), activated scales and opacities, pixel
centres at ``j + 0.5``, SH colour ``max(sh + 0.5, 0)`` for the direction camera -> mean, and
``eps2d = 0.3``; ``render_mode="RGB+ED"`` gives the alpha-normalised expected depth.

Known differences from the torch reference, both small and both confined to opaque regions:
gsplat clamps a Gaussian's alpha at 0.999 instead of the trainer's 0.99, and its tile bounds are
rounded to whole pixels. The background is composited here (``rgb + (1 - alpha) bg``) rather than
by gsplat, so depth never sees it.
"""

from __future__ import annotations

import importlib.util

from torch import Tensor

from clip_gs.errors import MissingDependencyError, RenderError
from clip_gs.render.raster_types import RenderOutput


def gsplat_available() -> bool:
    """True when the ``gsplat`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("gsplat") is not None


def rasterize_gsplat(
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
    eps2d: float,
    with_info: bool = False,
) -> RenderOutput:
    """The gsplat backend of :func:`clip_gs.render.rasterize` (validated inputs, ``backgrounds: [C, 3]``).

    Raises:
        MissingDependencyError: gsplat is not installed.
        RenderError: the tensors are not on a CUDA device.
    """
    try:
        import gsplat
    except ImportError as exc:
        raise MissingDependencyError(
            "backend='gsplat' needs the gsplat package: pip install clip-gs[cuda] "
            f"(import failed: {exc}); use backend='torch' for the CPU reference"
        ) from exc
    if not means.is_cuda:
        raise RenderError(f"backend='gsplat' needs CUDA tensors, got device {means.device}; use backend='torch'")

    render, alphas, meta = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        sh_degree=sh_degree,
        packed=False,
        tile_size=tile_size,
        backgrounds=None,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    alpha = alphas[..., 0]  # [C, H, W]
    rgb = render[..., :3] + (1.0 - alpha)[..., None] * backgrounds[:, None, None, :]
    return RenderOutput(rgb=rgb, alpha=alpha, depth=render[..., 3], info=meta if with_info else None)


__all__ = ["gsplat_available", "rasterize_gsplat"]
