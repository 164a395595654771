"""Starting Gaussians for a fit: given (or random) points; moving a cloud into the fitting frame.

A mesh's surface samples start :func:`clip_gs.data.fitted.fit_mesh` (the data layer holds meshes)."""

from __future__ import annotations

import torch
from torch import Tensor

from clip_gs.errors import ConfigError
from clip_gs.gaussians.cloud import GaussianCloud


def transform_cloud(cloud: GaussianCloud, world: Tensor) -> GaussianCloud:
    """Move a cloud by a ``[4, 4]`` transform made of a uniform scale and a translation (as
    :func:`~clip_gs.gaussians.mesh.mesh_unit_transform` gives): means move, log-scales shift.

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


__all__ = ["init_from_points", "random_points", "transform_cloud"]
