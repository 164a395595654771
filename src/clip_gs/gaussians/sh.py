"""Real spherical harmonics of degree 0..3, as 3DGS evaluates view-dependent colour.

The basis and its sign convention are those of the INRIA 3DGS trainer (and gsplat): the
coefficient order per channel is ``l = 0; l = 1 (m = -1, 0, 1); l = 2 (m = -2..2); l = 3
(m = -3..3)`` and the colour is ``max(sum_k basis_k(dir) * sh_k + 0.5, 0)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clip_gs.errors import RenderError
from clip_gs.gaussians.cloud import MAX_SH_DEGREE, SH_C0, sh_coeff_count

SH_C1 = 0.4886025119029199
"""sqrt(3 / (4 pi))."""
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis functions evaluated at unit directions.

    Args:
        dirs: ``[..., 3]`` unit view directions (x, y, z).
        degree: 0..3.

    Returns:
        ``[..., (degree + 1) ** 2]`` basis values in the 3DGS coefficient order.
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise RenderError(f"sh degree must be 0..{MAX_SH_DEGREE}, got {degree}")
    terms = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        terms += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        terms += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        terms += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(terms, dim=-1)


def sh_degree_from_coeffs(num_coeffs: int) -> int:
    """The SH degree whose coefficient count is ``num_coeffs`` (1, 4, 9 or 16)."""
    degree = math.isqrt(num_coeffs) - 1
    if num_coeffs < 1 or sh_coeff_count(degree) != num_coeffs or degree > MAX_SH_DEGREE:
        raise RenderError(f"{num_coeffs} SH coefficients per channel is not (degree+1)^2 for a degree in 0..3")
    return degree


def eval_sh(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Raw SH colour ``sum_k basis_k(dir) * coeffs_k`` (no +0.5 offset, no clamp).

    Args:
        coeffs: ``[..., K, 3]`` SH coefficients, ``K >= (degree + 1) ** 2``; only the first
            ``(degree + 1) ** 2`` are used.
        dirs: ``[..., 3]`` view directions; normalised here (zero vectors give the DC term only).
        degree: SH degree to evaluate, 0..3.

    Returns:
        ``[..., 3]``.
    """
    k = sh_coeff_count(degree)
    if coeffs.shape[-2] < k:
        raise RenderError(f"sh degree {degree} needs {k} coefficients per channel, got {coeffs.shape[-2]}")
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(unit, degree)  # [..., k]
    return torch.einsum("...k,...kc->...c", basis, coeffs[..., :k, :])  # no [..., K, 3] temporary


def sh_to_rgb(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """View-dependent colour as 3DGS renders it: ``max(eval_sh(...) + 0.5, 0)``.

    Args:
        coeffs: ``[..., K, 3]``.
        dirs: ``[..., 3]`` from the camera centre to the Gaussian mean.
        degree: 0..3.

    Returns:
        ``[..., 3]`` non-negative colour (not clamped above: bright SH may exceed 1).
    """
    return (eval_sh(coeffs, dirs, degree) + 0.5).clamp_min(0.0)


__all__ = ["SH_C1", "SH_C2", "SH_C3", "eval_sh", "sh_basis", "sh_degree_from_coeffs", "sh_to_rgb"]
