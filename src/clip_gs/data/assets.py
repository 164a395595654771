"""`load_asset`: a 3DGS file of any supported format, or a mesh converted to Gaussians on the fly."""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.errors import NotGaussianDataError
from clip_gs.gaussians import GaussianCloud, load_gaussians

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".stl", ".off", ".ply")
"""Extensions tried as meshes when the file is not a 3DGS file (``.ply`` can be either)."""


def load_asset(path: str | os.PathLike[str], num_gaussians: int = 100_000, seed: int = 0) -> GaussianCloud:
    """Read ``path`` as 3DGS if it is one, else as a mesh through :func:`mesh_to_gaussians`.

    A ``.ply`` is first read as 3DGS; a mesh or point-cloud ``.ply`` (:class:`NotGaussianDataError`)
    falls through to the mesh converter. Any other error of a 3DGS file (truncation, bad values)
    is raised as is.

    Args:
        num_gaussians / seed: used only for meshes (surface samples and their seed).

    Raises:
        GaussianFormatError: an invalid 3DGS file.
        MeshError: a mesh that cannot be converted.
        UnsupportedFormatError: neither a 3DGS file nor a mesh extension.
    """
    from clip_gs.data.mesh import mesh_to_gaussians

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in MESH_EXTENSIONS and suffix != ".ply":
        return mesh_to_gaussians(path, num_gaussians=num_gaussians, seed=seed)
    try:
        return load_gaussians(path)
    except NotGaussianDataError:
        if suffix not in MESH_EXTENSIONS:
            raise
    return mesh_to_gaussians(path, num_gaussians=num_gaussians, seed=seed)
