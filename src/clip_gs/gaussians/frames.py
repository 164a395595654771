"""World frames of 3DGS objects: up axes, rigid rotations of clouds (SH bands included), and the one
rule that says which way a file stands.

A cloud's *frame* is named by its world up axis, one of :data:`UP_AXES` (``"+y"``, ``"-y"``,
``"+z"``, ``"-z"``), together with a fixed "front" direction per axis (where azimuth 0 of
:func:`~clip_gs.render.orbit_cameras` puts the camera). :func:`frame_rotation` is the rotation
taking one frame onto another (up onto up, front onto front), so rendering a cloud moved by
:func:`to_frame` with the target frame's orbit shows exactly what the source frame's orbit showed.

Which frame a file is in (:func:`default_up_axis`, the rule behind ``--up auto``):

- a ``.ply`` that declares one (``comment up_axis <axis>``, written by
  ``save_gaussians(..., up_axis=...)``): that axis, whatever ``--up`` says;
- any other 3DGS file (INRIA / COLMAP ``.ply``, ``.splat``, ``.spz``, compressed ``.ply``):
  :data:`CAPTURE_UP_AXIS` (``"-y"``): COLMAP's camera convention leaves reconstructions y-down;
- a mesh (``.obj``, ``.glb``, ``.gltf``, ``.stl``, ``.off``, a mesh ``.ply``): :data:`MESH_UP_AXIS`
  (``"+y"``, glTF's and most object datasets' convention);
- UniGS's Objaverse ``.pkl``: ``"+z"`` (:data:`~clip_gs.gaussians.formats.unigs_pkl.UNIGS_UP_AXIS`:
  its converter stood the GLBs up in Blender's frame before fitting).

Limits of the rule: a capture whose reconstruction was re-oriented (gravity-aligned, z-up, as
some pipelines and Blender-fitted sets leave them) is not y-down, and nothing in an undeclared file
says so; name its axis with ``up=`` (``--up``), or declare it in the file with
``save_gaussians(..., up_axis=...)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import ClipGSError, ConfigError
from clip_gs.gaussians.cloud import GaussianCloud, quaternions_to_matrices
from clip_gs.gaussians.sh import sh_basis

UP_AXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "+y": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),  # glTF: +Y up, the model faces +Z; az 90 -> +X
    "-y": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),  # COLMAP-style captures; az 90 -> +X
    "+z": ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),  # Blender: +Z up, front view from -Y; az 90 -> +X
    "-z": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),  # az 90 -> +X
}
"""For each world up axis: (up vector, "front" vector where azimuth 0 puts the camera). Azimuth turns
the camera right-handedly about the up axis (counter-clockwise seen from above), from front towards
``cross(up, front)``."""

UP_CHOICES = ("auto", *UP_AXES)
"""What an ``up`` setting takes: ``"auto"`` (:func:`default_up_axis`) or an axis of :data:`UP_AXES`."""

MODEL_FRAME = "+y"
"""The frame encoder inputs are brought into: Uni3D's and OpenShape's training data stand y-up
(recorded per model as ``CLIPGSConfig.up_axis``)."""

CAPTURE_UP_AXIS = "-y"
"""Up axis assumed for 3DGS files that declare none: INRIA / COLMAP captures (and the ``.splat``
and ``.spz`` files made from them, which clip-gs reads in the INRIA frame) are y-down."""

MESH_UP_AXIS = "+y"
"""Up axis of meshes (glTF and most object datasets are +Y up)."""

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".stl", ".off", ".ply")
"""Extensions tried as meshes when the file is not a 3DGS file (``.ply`` can be either)."""


def check_up(up: str, what: str = "up") -> str:
    """``up`` if it is one of :data:`UP_CHOICES`, else :class:`ConfigError` naming the choices."""
    if up not in UP_CHOICES:
        raise ConfigError(f"{what} must be one of {list(UP_CHOICES)}, got {up!r}")
    return up


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a b`` of wxyz quaternions (rotation by ``b``, then by ``a``).

    Args:
        a, b: ``[..., 4]`` wxyz, broadcast against each other.

    Returns:
        ``[..., 4]``; ``|a b| = |a| |b|``.
    """
    w1, x1, y1, z1 = a.unbind(-1)
    w2, x2, y2, z2 = b.unbind(-1)
    return torch.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        dim=-1,
    )


def _fibonacci_directions(count: int) -> Tensor:
    """``[count, 3]`` float64 unit vectors spread evenly over the sphere (fixed, not random)."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / count
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = torch.sqrt(1.0 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


_SH_FIT_DIRECTIONS = _fibonacci_directions(64)  # >= 2l + 1 = 7 in general position: exact fits up to l = 3


def sh_rotation_matrix(rotation: Tensor, degree: int) -> Tensor:
    """Block-diagonal matrix that rotates the SH coefficients of ``degree`` by ``rotation``.

    Real SH bands are closed under rotation, so for each band ``l`` there is a unique
    ``(2l + 1) x (2l + 1)`` matrix ``M_l`` with ``Y_l(R^T d) = M_l Y_l(d)`` for every direction.
    It is fitted here by least squares from :func:`~clip_gs.gaussians.sh.sh_basis` at 64 fixed
    directions (float64; exact to rounding since both sides lie in the band's span).

    Args:
        rotation: ``[3, 3]`` rotation matrix R.
        degree: SH degree 0..3.

    Returns:
        ``[K, K]`` float64 (``K = (degree + 1)^2``), ``T`` with ``T[0, 0] = 1``, such that
        coefficients ``c' = T c`` (``c: [K, 3]``) satisfy
        ``eval_sh(c', d) == eval_sh(c, R^T d)``.
    """
    dirs = _SH_FIT_DIRECTIONS
    rot = rotation.detach().to(device="cpu", dtype=torch.float64)
    before = sh_basis(dirs, degree)  # [S, K]: Y(d_s)
    after = sh_basis(dirs @ rot, degree)  # rows R^T d_s: Y(R^T d_s) = M Y(d_s)
    k = before.shape[-1]
    out = torch.zeros(k, k, dtype=torch.float64)
    out[0, 0] = 1.0
    for band in range(1, degree + 1):
        s = slice(band * band, (band + 1) ** 2)
        # before_l @ M_l^T = after_l  ->  the coefficient map is M_l^T
        out[s, s] = torch.linalg.lstsq(before[:, s], after[:, s]).solution
    return out


# ------------------------------------------------------------------ deterministic operations
def rotate_cloud(cloud: GaussianCloud, quat: Tensor) -> GaussianCloud:
    """Rotate a cloud (single or batched) about the origin by one rotation.

    Args:
        cloud: ``means [*B, N, 3]``, ``quats [*B, N, 4]``, ``sh [*B, N, K, 3]``.
        quat: ``[4]`` wxyz rotation quaternion r (normalised here; r and -r are the same rotation).

    Returns:
        The cloud with ``means @ R^T``, quaternions ``r q`` (norms kept) and every SH band of
        degree >= 1 rotated (:func:`sh_rotation_matrix`); opacities and scales unchanged.
    """
    r = quat.detach().to(device="cpu", dtype=torch.float64)
    r = r / r.norm()
    rot = quaternions_to_matrices(r)
    sh = cloud.sh
    if cloud.sh_degree > 0:
        sh_rot = sh_rotation_matrix(rot, cloud.sh_degree).to(sh)
        sh = torch.einsum("ij,...jc->...ic", sh_rot, sh)
    return cloud.replace(
        means=cloud.means @ rot.to(cloud.means).T,
        quats=quaternion_multiply(r.to(cloud.quats), cloud.quats),
        sh=sh,
    )


def frame_rotation(source: str, target: str = MODEL_FRAME) -> Tensor:
    """The rotation taking frame ``source`` onto frame ``target`` (up onto up, front onto front).

    Returns:
        ``[4]`` float64 wxyz quaternion (for :func:`rotate_cloud`); the identity when the frames agree.

    Raises:
        ConfigError: an axis not in :data:`UP_AXES`.
    """
    for axis in (source, target):
        if axis not in UP_AXES:
            raise ConfigError(f"up axis must be one of {list(UP_AXES)}, got {axis!r}")

    def basis(axis: str) -> Tensor:
        up, front = (torch.tensor(v, dtype=torch.float64) for v in UP_AXES[axis])
        return torch.stack([up, front, torch.linalg.cross(up, front)], dim=1)  # columns

    rot = basis(target) @ basis(source).T
    return _matrix_to_quaternion(rot)


def _matrix_to_quaternion(rot: Tensor) -> Tensor:
    """wxyz quaternion of a proper rotation matrix (Shepperd's method; float64)."""
    m = rot.to(torch.float64)
    trace = m.trace()
    candidates = torch.stack([trace, m[0, 0], m[1, 1], m[2, 2]])
    i = int(candidates.argmax())
    if i == 0:
        s = math.sqrt(1.0 + float(trace)) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif i == 1:
        s = math.sqrt(1.0 + float(m[0, 0] - m[1, 1] - m[2, 2])) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif i == 2:
        s = math.sqrt(1.0 + float(m[1, 1] - m[0, 0] - m[2, 2])) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + float(m[2, 2] - m[0, 0] - m[1, 1])) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    return torch.tensor([float(v) for v in q], dtype=torch.float64)


def to_frame(cloud: GaussianCloud, up: str, frame: str = MODEL_FRAME) -> GaussianCloud:
    """``cloud`` (standing with world up ``up``) rotated about the origin into ``frame``;
    the same object when the two agree. See :func:`frame_rotation` and :func:`rotate_cloud`."""
    if up == frame:
        return cloud
    return rotate_cloud(cloud, frame_rotation(up, frame))


def _ply_header(path: Path):
    """The header of a ``.ply`` (None for any other file, or one whose header cannot be read: its loader
    reports that)."""
    from clip_gs.gaussians.formats.ply_header import read_ply_header

    if path.suffix.lower() != ".ply":
        return None
    try:
        return read_ply_header(path)
    except (ClipGSError, OSError):
        return None


def default_up_axis(path: str | os.PathLike[str]) -> str:
    """The world up axis of a file whose user names none (``up="auto"``); the rule and its limits
    are in this module's docstring."""
    from clip_gs.gaussians.formats.ply import declared_up_axis

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        from clip_gs.gaussians.formats.unigs_pkl import UNIGS_UP_AXIS

        return UNIGS_UP_AXIS
    if suffix == ".ply":
        header = _ply_header(path)
        if header is None:
            return CAPTURE_UP_AXIS
        declared = declared_up_axis(header)
        if declared is not None:
            return declared
        vertex = header.element("vertex")
        splat = header.element("chunk") is not None or (vertex is not None and "f_dc_0" in vertex.property_names)
        return CAPTURE_UP_AXIS if splat else MESH_UP_AXIS
    return MESH_UP_AXIS if suffix in MESH_EXTENSIONS else CAPTURE_UP_AXIS


def resolve_up(path: str | os.PathLike[str], up: str = "auto") -> str:
    """The up axis ``path`` stands in: the axis the file declares wins (it is taken at its word);
    otherwise ``up``, or :func:`default_up_axis` for ``"auto"``. A ply's header is read once.

    Raises:
        ConfigError: ``up`` not in :data:`UP_CHOICES`.
    """
    from clip_gs.gaussians.formats.ply import declared_up_axis

    check_up(up)
    if up == "auto":
        return default_up_axis(path)
    header = _ply_header(Path(path))
    declared = declared_up_axis(header) if header is not None else None
    return declared if declared is not None else up


def frame_viewmats(viewmats: Tensor, up: str, frame: str = MODEL_FRAME) -> Tensor:
    """World-to-camera matrices ``viewmats: [C, 4, 4]`` of a scene standing in ``up``, for the same
    scene moved by :func:`to_frame` into ``frame``: ``V @ [[R^T, 0], [0, 1]]``, so every camera sees
    what it saw before."""
    if up == frame:
        return viewmats
    rot = quaternions_to_matrices(frame_rotation(up, frame))
    inverse = torch.eye(4, dtype=torch.float64)
    inverse[:3, :3] = rot.T
    return viewmats @ inverse.to(viewmats)
