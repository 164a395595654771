"""Data sources for clip-gs: mesh -> 3DGS conversion and a synthetic procedural 3DGS set."""

from clip_gs.data.mesh import MeshColorWarning, mesh_to_gaussians, surface_disks

__all__ = ["MeshColorWarning", "mesh_to_gaussians", "surface_disks"]
