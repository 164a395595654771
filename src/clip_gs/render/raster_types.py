"""What every rasterizer backend shares: the compositing constants and the types they return.

The backends (:mod:`clip_gs.render.reference`, :mod:`clip_gs.render.torch_backend`,
:mod:`clip_gs.render.numba_backend` with its kernels, :mod:`clip_gs.render.gsplat_backend`) import
these; :func:`clip_gs.render.rasterize` chooses among the backends.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

ALPHA_MAX = 0.99
"""Upper clamp of a Gaussian's alpha (INRIA trainer; gsplat uses 0.999)."""
ALPHA_MIN = 1.0 / 255.0
"""Pixels where a Gaussian's alpha is below this are skipped."""
TRANSMITTANCE_MIN = 1e-4
"""A pixel stops compositing before its transmittance would drop below this."""
FOV_CLAMP = 1.3
"""``x/z`` and ``y/z`` are clamped to this multiple of the field-of-view limit inside the Jacobian."""


@dataclass(frozen=True)
class RenderOutput:
    """What :func:`~clip_gs.render.rasterize` and every backend return.

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

    @classmethod
    def from_transmittance(
        cls, rgb: Tensor, depth: Tensor, transmittance: Tensor, backgrounds: Tensor, info: dict | None = None
    ) -> RenderOutput:
        """The output of a compositing pass: the background composited and the depth normalised.

        Args:
            rgb: ``[C, H, W, 3]`` colour without background.
            depth: ``[C, H, W]`` accumulated depth ``sum_i a_i T_i z_i`` (not normalised).
            transmittance: ``[C, H, W]`` ``T_final``.
            backgrounds: ``[C, 3]``.
            info: see :attr:`info`.
        """
        alpha = 1.0 - transmittance
        rgb = rgb + transmittance[..., None] * backgrounds[:, None, None, :]
        return cls(rgb=rgb, alpha=alpha, depth=depth / alpha.clamp_min(1e-10), info=info)


@dataclass(frozen=True)
class ProjectedGaussians:
    """Per-camera screen-space Gaussians after culling (the intermediate that the PyTorch and numba
    backends composite).

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


__all__ = ["ALPHA_MAX", "ALPHA_MIN", "FOV_CLAMP", "TRANSMITTANCE_MIN", "ProjectedGaussians", "RenderOutput"]
