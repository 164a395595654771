"""`load_asset`: a 3DGS file of any supported format, or a mesh converted to Gaussians on the fly;
`find_asset_files`: the 3DGS files and meshes of a folder."""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.errors import ClipGSError, DatasetError, NotGaussianDataError
from clip_gs.gaussians import GaussianCloud, load_gaussians, registered_formats

CAPTURE_UP_AXIS = "-y"
"""Up axis assumed for 3DGS files that declare none: INRIA / COLMAP captures (and the ``.splat``
and ``.spz`` files made from them, which clip-gs reads in the INRIA frame) are y-down."""

MESH_UP_AXIS = "+y"
"""Up axis of meshes (glTF and most object datasets are +Y up)."""

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".stl", ".off", ".ply")
"""Extensions tried as meshes when the file is not a 3DGS file (``.ply`` can be either)."""


def find_asset_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under the folder ``root`` (recursively) with a 3DGS extension (any registered
    format) or a mesh extension (:data:`MESH_EXTENSIONS`), sorted by path. Which of them really
    hold 3DGS or mesh data is decided when they are loaded (:func:`load_asset`).

    Raises:
        DatasetError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    extensions = tuple({e for f in registered_formats() for e in f.extensions} | set(MESH_EXTENSIONS))
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(extensions))


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


def default_up_axis(path: str | os.PathLike[str]) -> str:
    """The world up axis to render a file with, when the user names none (``--up auto``).

    - a ply that declares one (``comment up_axis +y``, written by ``save_gaussians(..., up_axis=...)``):
      that axis;
    - another 3DGS file: :data:`CAPTURE_UP_AXIS` (``"-y"``), so real captures show upright;
    - a mesh: :data:`MESH_UP_AXIS` (``"+y"``).
    """
    from clip_gs.gaussians.formats.ply import declared_up_axis
    from clip_gs.gaussians.formats.ply_header import read_ply_header

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        try:
            header = read_ply_header(path)
        except (ClipGSError, OSError):
            return CAPTURE_UP_AXIS
        declared = declared_up_axis(header)
        if declared is not None:
            return declared
        vertex = header.element("vertex")
        splat = header.element("chunk") is not None or (vertex is not None and "f_dc_0" in vertex.property_names)
        return CAPTURE_UP_AXIS if splat else MESH_UP_AXIS
    return MESH_UP_AXIS if suffix in MESH_EXTENSIONS else CAPTURE_UP_AXIS
