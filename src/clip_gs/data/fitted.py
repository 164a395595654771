"""Mesh -> fitted 3DGS in one call: render it with Blender, start from its surface samples, fit
(:mod:`clip_gs.fitting`). Beside :mod:`clip_gs.gaussians.mesh` (mesh -> surface samples): the two ways a
mesh becomes Gaussians."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.fitting import FitConfig, FitResult, PosedImages, fit_gaussians, transform_cloud
from clip_gs.gaussians.cloud import GaussianCloud

DEFAULT_INIT_OPACITY = 0.5
"""Opacity of the starting surface samples (the trainer starts at 0.1 from sparse SfM points; surface
samples already cover the object, so they start more opaque)."""

DEFAULT_VIEWS = 36
"""Training views per object (the paper renders 36)."""
DEFAULT_HELD_OUT = 4
"""Held-out views the fit is scored on (never trained on)."""


@dataclass
class MeshFit:
    """A fit of a mesh: the result, the views it was fitted to and scored on, and the frame.

    Attributes:
        result: :class:`~clip_gs.fitting.FitResult` (the cloud is in the unit frame of ``world``).
        views, held_out: the training and held-out renders.
        world: ``[4, 4]`` the file's coordinates -> the fitting frame
            (:func:`~clip_gs.gaussians.mesh.mesh_unit_transform`).
    """

    result: FitResult
    views: PosedImages
    held_out: PosedImages
    world: Tensor


def init_from_mesh(mesh, num_gaussians: int, world: Tensor, seed: int = 0,
                   opacity: float = DEFAULT_INIT_OPACITY) -> GaussianCloud:  # fmt: skip
    """Surface samples of ``mesh`` (positions, texture / vertex / material colours, flat disks) moved
    into the fitting frame by ``world``: :func:`~clip_gs.gaussians.mesh.mesh_to_gaussians`."""
    from clip_gs.gaussians.mesh import mesh_to_gaussians

    cloud = mesh_to_gaussians(mesh, num_gaussians=num_gaussians, seed=seed, opacity=opacity, normalize=False)
    return transform_cloud(cloud, world)


def init_from_file(path, num_gaussians: int, world: Tensor, seed: int = 0) -> GaussianCloud:
    """Starting Gaussians from a file: a mesh's surface samples moved by ``world``
    (:func:`init_from_mesh`); a 3DGS file's centres and colours, or a point cloud's points and vertex
    colours, as :func:`~clip_gs.fitting.init_from_points` (taken to be in the views' frame already).
    More than ``num_gaussians`` points are subsampled, seeded, in file order.

    Raises:
        MeshError: a file with no points; GaussianFormatError / MeshError: an unreadable file.
    """
    import numpy as np

    from clip_gs.errors import MeshError, NotGaussianDataError
    from clip_gs.fitting import init_from_points
    from clip_gs.gaussians import load_gaussians
    from clip_gs.gaussians.assets import MESH_EXTENSIONS

    path = Path(path)
    if path.suffix.lower() in MESH_EXTENSIONS and path.suffix.lower() != ".ply":
        return init_from_mesh(path, num_gaussians, world, seed=seed)
    try:
        cloud = load_gaussians(path)
        points, colors = cloud.means, cloud.rgb.clamp(0, 1)
    except NotGaussianDataError:  # a point cloud (.ply with x, y, z and maybe colours), or a mesh .ply
        import trimesh

        loaded = trimesh.load(str(path), process=False)
        if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
            return init_from_mesh(path, num_gaussians, world, seed=seed)
        vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float32)
        if len(vertices) == 0:
            raise MeshError(f"{path}: no points to start the fit from") from None
        points = torch.from_numpy(vertices)
        rgba = getattr(getattr(loaded, "visual", None), "vertex_colors", None)
        colors = None if rgba is None or len(rgba) != len(points) else torch.from_numpy(np.asarray(rgba)[:, :3] / 255.0)
    if points.shape[0] > num_gaussians:
        keep = (
            torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:num_gaussians].sort().values
        )
        points, colors = points[keep], None if colors is None else colors[keep]
    return init_from_points(points, colors, source=path.name)


def render_mesh_views(mesh, views: int = DEFAULT_VIEWS, held_out: int = DEFAULT_HELD_OUT, size: int = 128,
                      samples: int | None = None, seed: int = 0,
                      device: str | torch.device = "cpu") -> tuple[PosedImages, PosedImages, Tensor]:  # fmt: skip
    """Blender renders of ``mesh`` in its unit frame: ``views`` training views spread over the sphere
    (:func:`~clip_gs.render.sphere_cameras`), ``held_out`` views between them (``turn=0.5``); Cycles
    runs on the GPU when ``device`` is a CUDA device (:func:`~clip_gs.render.blender.render_mesh`).

    Returns:
        ``(training views, held-out views, world [4, 4])``.
    """
    from clip_gs.gaussians.mesh import mesh_unit_transform
    from clip_gs.render.blender import DEFAULT_SAMPLES, render_mesh
    from clip_gs.render.cameras import Cameras, sphere_cameras

    world = mesh_unit_transform(mesh)
    train = sphere_cameras(views, width=size, height=size)
    test = sphere_cameras(held_out, width=size, height=size, turn=0.5) if held_out else None
    both = train if test is None else Cameras(torch.cat([train.viewmats, test.viewmats]),
                                               torch.cat([train.Ks, test.Ks]), size, size)  # fmt: skip
    rgba = render_mesh(mesh, both, world=world, samples=samples or DEFAULT_SAMPLES, seed=seed, device=device)
    name = Path(mesh).name
    return (PosedImages(rgba[:views], train, name),
            PosedImages(rgba[views:], test, name) if test is not None else None, world)  # fmt: skip


def fit_mesh(mesh, config: FitConfig | None = None, views: int = DEFAULT_VIEWS, held_out: int = DEFAULT_HELD_OUT,
             size: int = 128, samples: int | None = None, init_gaussians: int | None = None,
             device: str | torch.device = "cpu", progress: bool = False) -> MeshFit:  # fmt: skip
    """Render ``mesh`` (:func:`render_mesh_views`), start from ``init_gaussians`` surface samples (default
    half the cap, room to densify) and fit (:func:`~clip_gs.fitting.fit_gaussians`).

    Raises:
        MeshError: unreadable mesh or no faces; MissingDependencyError: no Blender module or gsplat;
        PosedImagesError: a render came out empty; FitError: the fit diverged.
    """
    config = config or FitConfig()
    train, test, world = render_mesh_views(mesh, views, held_out, size, samples, seed=config.seed, device=device)
    result = fit_mesh_views(mesh, train, test, world, config, init_gaussians, device, progress)
    return MeshFit(result, train, test, world)


def fit_mesh_views(mesh, train: PosedImages, test: PosedImages | None, world: Tensor, config: FitConfig,
                   init_gaussians: int | None = None, device: str | torch.device = "cpu",
                   progress: bool = False):  # fmt: skip
    """The fit of :func:`fit_mesh` on renders already made (:func:`render_mesh_views`): start from
    ``init_gaussians`` surface samples of ``mesh`` moved by ``world [4, 4]`` (default half the cap, room to
    densify), fit to ``train`` and score on ``test``. Returns the :class:`~clip_gs.fitting.FitResult`."""
    count = init_gaussians or max(1, config.max_gaussians // 2)
    init = init_from_mesh(mesh, count, world, seed=config.seed)
    return fit_gaussians(train, init, config, held_out=test, device=device, progress=progress)


__all__ = [
    "DEFAULT_HELD_OUT",
    "DEFAULT_INIT_OPACITY",
    "DEFAULT_VIEWS",
    "MeshFit",
    "fit_mesh",
    "fit_mesh_views",
    "init_from_mesh",
    "render_mesh_views",
]
