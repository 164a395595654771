"""Rendering: a differentiable 3DGS rasterizer and cameras.

The rasterizer (:func:`rasterize`) hands its inputs to one backend: the readable per-tile PyTorch
reference (:mod:`~clip_gs.render.reference`), a batched PyTorch backend
(:mod:`~clip_gs.render.torch_backend`), compiled CPU kernels (:mod:`~clip_gs.render.numba_backend`)
or gsplat on CUDA (:mod:`~clip_gs.render.gsplat_backend`); all of them share
:mod:`~clip_gs.render.raster_types`.

Conventions: OpenCV cameras (x right, y down, z forward), world-to-camera ``viewmats``, pixel
centres at ``(j + 0.5, i + 0.5)``; :func:`orbit_cameras` puts the world's +Y up by default.
"""

from clip_gs.gaussians.sh import eval_sh, sh_basis, sh_to_rgb
from clip_gs.render.cameras import Cameras, look_at_viewmats, orbit_cameras, pinhole_intrinsics, sphere_cameras
from clip_gs.render.raster_types import RenderOutput
from clip_gs.render.rasterize import rasterize, render_cloud
from clip_gs.render.reference import rasterize_reference
from clip_gs.render.sheet import contact_sheet, render_sheet, render_view

__all__ = [
    "Cameras",
    "RenderOutput",
    "contact_sheet",
    "eval_sh",
    "look_at_viewmats",
    "orbit_cameras",
    "pinhole_intrinsics",
    "rasterize",
    "rasterize_reference",
    "render_cloud",
    "render_sheet",
    "render_view",
    "sh_basis",
    "sh_to_rgb",
    "sphere_cameras",
]
