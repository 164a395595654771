"""Starting Gaussians for a fit: surface samples of a mesh, or given (or random) points."""

from __future__ import annotations

import torch
from torch import Tensor

from clip_gs.errors import ConfigError
from clip_gs.gaussians.cloud import GaussianCloud

DEFAULT_INIT_OPACITY = 0.5
"""Opacity of the starting Gaussians (the trainer starts at 0.1 from sparse SfM points; surface samples
already cover the object, so they start more opaque)."""


def transform_cloud(cloud: GaussianCloud, world: Tensor) -> GaussianCloud:
    """Move a cloud by a ``[4, 4]`` transform made of a uniform scale and a translation (as
    :func:`~clip_gs.data.mesh.mesh_unit_transform` gives): means move, log-scales shift.

    Raises:
        ConfigError: the transform rotates, shears or scales unevenly.
    """
    world = world.double()
    linear = world[:3, :3]
    scale = float(linear[0, 0])
    if scale <= 0 or not torch.allclose(linear, scale * torch.eye(3, dtype=torch.float64), atol=1e-9 * abs(scale)):
        raise ConfigError(f"transform_cloud takes a uniform scale plus a translation, got {linear.tolist()}")
    means = cloud.means.double() * scale + world[:3, 3]
    return cloud.replace(means=means.to(cloud.dtype), log_scales=cloud.log_scales + torch.log(torch.tensor(scale)))


def init_from_mesh(mesh, num_gaussians: int, world: Tensor, seed: int = 0,
                   opacity: float = DEFAULT_INIT_OPACITY) -> GaussianCloud:  # fmt: skip
    """Surface samples of ``mesh`` (positions, texture / vertex / material colours, flat disks) moved
    into the fitting frame by ``world``: :func:`~clip_gs.data.mesh.mesh_to_gaussians`."""
    from clip_gs.data.mesh import mesh_to_gaussians

    cloud = mesh_to_gaussians(mesh, num_gaussians=num_gaussians, seed=seed, opacity=opacity, normalize=False)
    return transform_cloud(cloud, world)


def init_from_points(points: Tensor, colors: Tensor | None = None, opacity: float = 0.1, neighbours: int = 3,
                     source: str | None = None) -> GaussianCloud:  # fmt: skip
    """Isotropic Gaussians at ``points [N, 3]``, each as wide as the mean distance to its ``neighbours``
    nearest points (the trainer's start from SfM points); ``colors [N, 3]`` in [0, 1] (default grey)."""
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < neighbours + 1:
        raise ConfigError(f"init_from_points needs [N, 3] points with N > {neighbours}, got {list(points.shape)}")
    points = points.float()
    distances = []
    for chunk in points.split(4096):
        d = torch.cdist(chunk, points)
        distances.append(d.topk(neighbours + 1, largest=False).values[:, 1:].mean(dim=1))
    width = torch.cat(distances).clamp_min(1e-7)
    colors = torch.full_like(points, 0.5) if colors is None else colors.float().clamp(0.0, 1.0)
    quats = torch.zeros(points.shape[0], 4)
    quats[:, 0] = 1.0
    return GaussianCloud.from_activated(points, colors, torch.full((points.shape[0],), opacity), width[:, None].expand(-1, 3).contiguous(),
                                        quats, source=source)  # fmt: skip


def random_points(num_points: int, radius: float = 1.0, seed: int = 0) -> Tensor:
    """``[N, 3]`` points uniform in a ball (the trainer's start for synthetic scenes without SfM)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(num_points, 3, generator=generator)
    direction = direction / direction.norm(dim=1, keepdim=True)
    return direction * radius * torch.rand(num_points, 1, generator=generator) ** (1.0 / 3.0)


__all__ = ["DEFAULT_INIT_OPACITY", "init_from_mesh", "init_from_points", "random_points", "transform_cloud"]
