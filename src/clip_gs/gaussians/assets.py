"""The one loader of "a 3DGS file or a mesh" (:func:`load_asset`), and :func:`find_asset_files`.

Every command that takes a user's files (``classify``, ``embed``, ``search``, ``eval``, ``prepare``,
``info``, ``render``, the demo) and :meth:`~clip_gs.CLIPGS.encode` read them here, so one file gives
one cloud whatever the command: meshes are sampled at :data:`MESH_GAUSSIANS` Gaussians (with
``seed``), and the cloud is turned from the frame the file stands in (:func:`~clip_gs.gaussians.frames.resolve_up`)
into the frame asked for (the model's, ``+y``, by default).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from clip_gs.errors import ConfigError, DatasetError, GaussianFormatError, MeshError, NotGaussianDataError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.frames import (
    MESH_EXTENSIONS,
    MODEL_FRAME,
    UP_AXES,
    check_up,
    default_up_axis,
    resolve_up,
    to_frame,
)
from clip_gs.gaussians.io import load_gaussians, registered_formats, save_gaussians

MESH_GAUSSIANS = 10_000
"""Gaussians sampled on a mesh's surface by default: Uni3D's and the paper's points per object."""


def find_asset_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under the folder ``root`` (recursively) with a 3DGS extension (any registered
    format) or a mesh extension (:data:`~clip_gs.gaussians.frames.MESH_EXTENSIONS`), sorted by path.
    Which of them really hold 3DGS or mesh data is decided when they are loaded (:func:`load_asset`).

    Raises:
        DatasetError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    extensions = tuple({e for f in registered_formats() for e in f.extensions} | set(MESH_EXTENSIONS))
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(extensions))


def read_asset(path: str | os.PathLike[str], mesh_gaussians: int = MESH_GAUSSIANS, seed: int = 0) -> GaussianCloud:
    """``path`` read as 3DGS if it is one, else as a mesh (:func:`~clip_gs.gaussians.mesh.mesh_to_gaussians`),
    in the file's own frame. A ``.ply`` is first read as 3DGS; a mesh or point-cloud ``.ply``
    (:class:`NotGaussianDataError`) falls through to the mesh converter, any other error of a 3DGS
    file (truncation, bad values) is raised as is, and a ``.ply`` that is neither raises
    :class:`GaussianFormatError` with both reasons."""
    from clip_gs.gaussians.mesh import mesh_to_gaussians

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in MESH_EXTENSIONS and suffix != ".ply":
        return mesh_to_gaussians(path, num_gaussians=mesh_gaussians, seed=seed)
    try:
        return load_gaussians(path)
    except NotGaussianDataError as not_3dgs:
        if suffix not in MESH_EXTENSIONS:
            raise
        try:
            return mesh_to_gaussians(path, num_gaussians=mesh_gaussians, seed=seed)
        except MeshError as exc:
            raise GaussianFormatError(f"{path}: neither 3DGS ({not_3dgs}) nor a readable mesh ({exc})") from exc


def load_asset(
    path: str | os.PathLike[str],
    up: str = "auto",
    frame: str | None = MODEL_FRAME,
    mesh_gaussians: int = MESH_GAUSSIANS,
    seed: int = 0,
) -> GaussianCloud:
    """A 3DGS file (any registered format) or a mesh, as a cloud standing in ``frame``.

    Args:
        path: the file.
        up: the up axis of a file that declares none (``"+y"``, ``"-y"``, ``"+z"``, ``"-z"``), or
            ``"auto"`` for the per-format rule (:func:`~clip_gs.gaussians.frames.default_up_axis`);
            a ply that declares its axis is taken at its word.
        frame: the up axis to bring the cloud to (default ``"+y"``, the frame every clip-gs model
            records in ``CLIPGSConfig.up_axis``); None keeps the file's own frame.
        mesh_gaussians / seed: surface samples of a mesh and their seed (unused for 3DGS files).

    Returns:
        The cloud, rotated about the origin (means, rotations and SH bands) when the frames differ.

    Raises:
        GaussianFormatError: an invalid 3DGS file.
        MeshError: a mesh that cannot be converted.
        UnsupportedFormatError: neither a 3DGS file nor a mesh extension.
        ConfigError: an unknown ``up`` or ``frame``.
    """
    axis = resolve_up(path, up)
    cloud = read_asset(path, mesh_gaussians=mesh_gaussians, seed=seed)
    return cloud if frame is None else to_frame(cloud, axis, frame)


def save_asset(cloud: GaussianCloud, path: str | os.PathLike[str], up: str = MODEL_FRAME) -> Path:
    """Write a cloud standing with world up ``up`` so that :func:`load_asset` (``up="auto"``) reads it
    upright: a ``.ply`` declares its axis in its header; a format that cannot declare one (``.splat``,
    ``.spz``) is written in the frame the per-format rule assumes for it (y-down captures).

    Raises:
        ConfigError: an unknown ``up``; see :func:`~clip_gs.gaussians.save_gaussians` for the rest.
    """
    if up not in UP_AXES:
        raise ConfigError(f"up must be one of {list(UP_AXES)}, got {up!r}")
    path = Path(path)
    if path.suffix.lower() == ".ply":
        return save_gaussians(cloud, path, up_axis=up)
    return save_gaussians(to_frame(cloud, up, default_up_axis(path)), path)


def asset_loader(up: str = "auto", frame: str | None = MODEL_FRAME, mesh_gaussians: int = MESH_GAUSSIANS,
                 seed: int = 0):  # fmt: skip
    """:func:`load_asset` with these settings, as the picklable one-argument loader that
    :meth:`~clip_gs.CLIPGS.encode` and its loader workers take; the settings are checked here, once.

    Raises:
        ConfigError: an unknown ``up`` or ``frame``, ``mesh_gaussians`` not a positive int.
    """
    check_up(up)
    if frame is not None and frame not in UP_AXES:
        raise ConfigError(f"frame must be one of {list(UP_AXES)} or None, got {frame!r}")
    if isinstance(mesh_gaussians, bool) or not isinstance(mesh_gaussians, int) or mesh_gaussians <= 0:
        raise ConfigError(f"mesh_gaussians must be a positive int, got {mesh_gaussians!r}")
    return partial(load_asset, up=up, frame=frame, mesh_gaussians=mesh_gaussians, seed=seed)


__all__ = ["MESH_GAUSSIANS", "asset_loader", "find_asset_files", "load_asset", "read_asset", "save_asset"]
