"""3DGS fitted to rendered views: the paper's training objects.

- :mod:`~clip_gs.fitting.posed`: posed RGBA images and the ``transforms.json`` layout (read, write);
- :mod:`~clip_gs.fitting.init`: starting Gaussians (mesh surface samples, or points);
- :mod:`~clip_gs.fitting.fit`: the optimisation (3DGS recipe, gsplat's densification);
- :mod:`~clip_gs.fitting.mesh`: a mesh file to a fit in one call (Blender views, surface start).
"""

from clip_gs.fitting.fit import FitConfig, FitResult, evaluate_views, fit_gaussians
from clip_gs.fitting.init import init_from_mesh, init_from_points, random_points, transform_cloud
from clip_gs.fitting.mesh import DEFAULT_HELD_OUT, DEFAULT_VIEWS, MeshFit, fit_mesh, render_views
from clip_gs.fitting.posed import TRANSFORMS_NAME, PosedImages, read_posed_images, write_posed_images

__all__ = [
    "DEFAULT_HELD_OUT",
    "DEFAULT_VIEWS",
    "TRANSFORMS_NAME",
    "FitConfig",
    "FitResult",
    "MeshFit",
    "PosedImages",
    "evaluate_views",
    "fit_gaussians",
    "fit_mesh",
    "init_from_mesh",
    "init_from_points",
    "random_points",
    "read_posed_images",
    "render_views",
    "transform_cloud",
    "write_posed_images",
]
