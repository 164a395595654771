"""3DGS fitted to posed views: the optimiser behind the paper's training objects.

- :mod:`~clip_gs.fitting.posed`: posed RGBA images and the ``transforms.json`` layout (read, write);
- :mod:`~clip_gs.fitting.transforms_json`: the one validating reader of ``transforms.json``;
- :mod:`~clip_gs.fitting.image_files`: a view's image file read with bounded memory;
- :mod:`~clip_gs.fitting.init`: starting Gaussians from points, and moving a cloud into the frame;
- :mod:`~clip_gs.fitting.fit`: the optimisation (3DGS recipe, gsplat's densification).

A mesh file to a fit in one call (Blender views, surface start) is :func:`clip_gs.data.fitted.fit_mesh`.
"""

from clip_gs.fitting.fit import FitConfig, FitResult, evaluate_views, fit_gaussians
from clip_gs.fitting.init import init_from_points, random_points, transform_cloud
from clip_gs.fitting.posed import TRANSFORMS_NAME, PosedImages, read_posed_images, write_posed_images
from clip_gs.fitting.transforms_json import read_transforms

__all__ = [
    "TRANSFORMS_NAME",
    "FitConfig",
    "FitResult",
    "PosedImages",
    "evaluate_views",
    "fit_gaussians",
    "init_from_points",
    "random_points",
    "read_posed_images",
    "read_transforms",
    "transform_cloud",
    "write_posed_images",
]
