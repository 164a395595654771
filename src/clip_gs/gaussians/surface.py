"""Disk Gaussians on a triangle surface: area-weighted surface samples and flat Gaussians along the normals.

The one implementation of surface sampling (:func:`sample_triangles`) and disk making
(:func:`surface_disks`): the mesh converter (:mod:`clip_gs.gaussians.mesh`) and the synthetic set
(:mod:`clip_gs.data.synthetic`) both build their clouds with it. Each disk has its local z axis
along the face normal, a tangent scale from the sampling density (:func:`disk_radius`) and a thin
normal scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clip_gs.errors import ConfigError, MeshError
from clip_gs.gaussians.cloud import GaussianCloud

DEFAULT_SCALE_FACTOR = 1.0
"""Default tangent sigma in units of ``sqrt(area / (num_gaussians * pi))`` (see :func:`disk_radius`)."""

DEFAULT_THICKNESS_RATIO = 0.1
"""Default normal-axis scale as a fraction of the tangent scale."""


def triangle_areas(triangles: np.ndarray) -> np.ndarray:
    """Areas of triangles.

    Args:
        triangles: ``[F, 3, 3]`` corner positions.

    Returns:
        ``[F]`` areas (float64).
    """
    tri = np.asarray(triangles, dtype=np.float64)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return 0.5 * np.linalg.norm(cross, axis=-1)


def sample_triangles(
    triangles: np.ndarray, num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample points uniformly by area on a triangle soup.

    Faces are drawn with probability proportional to their area; points inside a face are
    uniform (``sqrt`` trick of Osada et al. 2002). Zero-area faces are never drawn.

    Args:
        triangles: ``[F, 3, 3]`` corner positions.
        num_samples: number of points N.
        rng: the seeded numpy generator that makes every random choice.

    Returns:
        ``(face_index [N] int64, barycentric [N, 3] float64, points [N, 3] float64)`` with
        ``points = sum_k barycentric[:, k] * triangles[face_index, k]``.

    Raises:
        MeshError: if the total area is zero or not finite.
    """
    tri = np.asarray(triangles, dtype=np.float64)
    areas = triangle_areas(tri)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise MeshError(f"triangles have total area {total}; cannot sample a surface")
    cdf = np.cumsum(areas)
    face_index = np.searchsorted(cdf, rng.random(num_samples) * cdf[-1], side="right")
    face_index = np.minimum(face_index, len(tri) - 1)  # guards the u * total == total rounding edge
    r1 = np.sqrt(rng.random(num_samples))
    r2 = rng.random(num_samples)
    bary = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=-1)
    points = np.einsum("nk,nkd->nd", bary, tri[face_index])
    return face_index.astype(np.int64), bary, points


def face_normals(triangles: np.ndarray) -> np.ndarray:
    """Unit normals of triangles (right-hand rule); zero-area faces get ``(0, 0, 1)``.

    Args:
        triangles: ``[F, 3, 3]``.

    Returns:
        ``[F, 3]`` float64.
    """
    tri = np.asarray(triangles, dtype=np.float64)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(cross, axis=-1, keepdims=True)
    safe = norm[:, 0] > 0
    out = np.zeros_like(cross)
    out[:, 2] = 1.0
    out[safe] = cross[safe] / norm[safe]
    return out


def disk_radius(total_area: float, num_gaussians: int, scale_factor: float = DEFAULT_SCALE_FACTOR) -> float:
    """Tangent sigma of a surface disk: ``scale_factor * sqrt(total_area / (num_gaussians * pi))``.

    ``sqrt(A / (N pi))`` is the radius of a disk with the per-Gaussian share ``A / N`` of the
    surface; with ``scale_factor = 1`` neighbouring disks overlap enough that a render at
    opacity 0.95 shows a closed surface for uniformly random samples.
    """
    return scale_factor * math.sqrt(total_area / (num_gaussians * math.pi))


def normals_to_quaternions(normals: torch.Tensor) -> torch.Tensor:
    """Rotations whose local z axis is the given normal (a disk's thin axis).

    A disk is symmetric under ``n -> -n``, so normals are first flipped into the ``z >= 0``
    hemisphere; the shortest-arc rotation from ``+z`` to ``n`` is then
    ``q = normalise(1 + n_z, -n_y, n_x, 0)`` (wxyz), which never degenerates because
    ``1 + n_z >= 1``. The in-plane (tangent) orientation is the shortest-arc one; disks are
    isotropic in their plane so it does not matter.

    Args:
        normals: ``[N, 3]`` unit vectors.

    Returns:
        ``[N, 4]`` unit quaternions, wxyz.
    """
    n = torch.where(normals[:, 2:3] < 0, -normals, normals)
    q = torch.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], dim=-1)
    return q / q.norm(dim=-1, keepdim=True)


def surface_disks(
    points: np.ndarray | torch.Tensor,
    normals: np.ndarray | torch.Tensor,
    rgb: np.ndarray | torch.Tensor,
    radius: float,
    thickness_ratio: float = DEFAULT_THICKNESS_RATIO,
    opacity: float = 0.95,
    source: str | None = None,
) -> GaussianCloud:
    """Flat disk Gaussians lying on a surface (not normalised).

    Args:
        points: ``[N, 3]`` centres on the surface.
        normals: ``[N, 3]`` unit surface normals (sign irrelevant).
        rgb: ``[N, 3]`` colours in [0, 1].
        radius: tangent sigma shared by all disks (see :func:`disk_radius`).
        thickness_ratio: normal sigma as a fraction of ``radius``, in (0, 1].
        opacity: opacity of every disk, strictly inside (0, 1).
        source: the cloud's ``source``.

    Returns:
        A float32 :class:`GaussianCloud` with scales ``(radius, radius, thickness_ratio * radius)``
        in each disk's local frame, whose z axis is the normal.
    """
    if not 0 < thickness_ratio <= 1:
        raise ConfigError(f"thickness_ratio must lie in (0, 1], got {thickness_ratio}")
    if not 0 < opacity < 1:
        raise ConfigError(f"opacity must lie strictly inside (0, 1), got {opacity}")
    if not (math.isfinite(radius) and radius > 0):
        raise ConfigError(f"disk radius must be positive and finite, got {radius}")
    means = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    normals_t = torch.as_tensor(np.asarray(normals), dtype=torch.float32)
    colours = torch.as_tensor(np.asarray(rgb), dtype=torch.float32).clamp(0.0, 1.0)
    n = means.shape[0]
    scales = torch.tensor([radius, radius, radius * thickness_ratio], dtype=torch.float32).expand(n, 3)
    return GaussianCloud.from_activated(
        means=means,
        rgb=colours,
        opacity=torch.full((n,), opacity, dtype=torch.float32),
        scales=scales.contiguous(),
        quats=normals_to_quaternions(normals_t),
        source=source,
    )


__all__ = [
    "DEFAULT_SCALE_FACTOR",
    "DEFAULT_THICKNESS_RATIO",
    "disk_radius",
    "face_normals",
    "normals_to_quaternions",
    "sample_triangles",
    "surface_disks",
    "triangle_areas",
]
