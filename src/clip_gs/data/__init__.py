"""Data sources for clip-gs: mesh -> 3DGS conversion and a synthetic procedural 3DGS set."""

from clip_gs.data.mesh import MeshColorWarning, mesh_to_gaussians, surface_disks
from clip_gs.data.synthetic import (
    PALETTE,
    PATTERNS,
    SHAPE_CLASSES,
    SyntheticGaussianDataset,
    SyntheticObject,
    make_object,
)

__all__ = [
    "PALETTE",
    "PATTERNS",
    "SHAPE_CLASSES",
    "MeshColorWarning",
    "SyntheticGaussianDataset",
    "SyntheticObject",
    "make_object",
    "mesh_to_gaussians",
    "surface_disks",
]
