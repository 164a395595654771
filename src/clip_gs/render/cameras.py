"""Pinhole cameras and orbit views around a unit-sphere-normalised object.

Conventions (the same as gsplat, so both rasterizer backends read the same tensors):

- **Camera frame: OpenCV.** x right, y down, z forward (the viewing direction). A camera-space
  point with z > 0 is in front of the camera.
- ``viewmats: [C, 4, 4]`` are **world-to-camera** rigid transforms: ``p_cam = R p_world + t``.
- ``Ks: [C, 3, 3]`` are pinhole intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixel
  units, where pixel column ``j`` / row ``i`` has its centre at ``(j + 0.5, i + 0.5)``: the image
  spans ``[0, width] x [0, height]`` and ``cx = width / 2`` puts the optical axis at the image
  centre.

:func:`orbit_cameras` additionally fixes the world's up axis (default ``"+y"``: glTF and most
object datasets are +Y up) and where azimuth 0 lies; see its docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from clip_gs.errors import RenderError
from clip_gs.gaussians.frames import UP_AXES

OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
"""``[4, 4]`` flip of the camera's y and z axes: OpenCV (y down, z forward) <-> OpenGL / Blender (y up,
z backward); ``c2w_gl = c2w_cv @ OPENCV_TO_OPENGL`` and back (it is its own inverse)."""

_UP_ALIASES = {"y": "+y", "z": "+z"}


@dataclass(frozen=True, eq=False)
class Cameras:
    """A batch of C pinhole cameras sharing one image size (OpenCV convention, see module doc).

    Args:
        viewmats: ``[C, 4, 4]`` world-to-camera transforms.
        Ks: ``[C, 3, 3]`` intrinsics in pixels.
        width: image width in pixels.
        height: image height in pixels.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if not isinstance(self.viewmats, Tensor) or self.viewmats.ndim != 3 or self.viewmats.shape[1:] != (4, 4):
            raise RenderError(f"viewmats must be a [C, 4, 4] tensor, got {_shape(self.viewmats)}")
        if not isinstance(self.Ks, Tensor) or self.Ks.ndim != 3 or self.Ks.shape[1:] != (3, 3):
            raise RenderError(f"Ks must be a [C, 3, 3] tensor, got {_shape(self.Ks)}")
        if self.viewmats.shape[0] != self.Ks.shape[0]:
            raise RenderError(f"{self.viewmats.shape[0]} viewmats but {self.Ks.shape[0]} Ks")
        if self.viewmats.shape[0] == 0:
            raise RenderError("Cameras needs at least one camera")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise RenderError(f"{name} must be a positive int, got {value!r}")

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    @property
    def centers(self) -> Tensor:
        """``[C, 3]`` camera centres in world coordinates, ``-R^T t``."""
        rot = self.viewmats[:, :3, :3]
        trans = self.viewmats[:, :3, 3]
        return -(rot.transpose(1, 2) @ trans.unsqueeze(-1)).squeeze(-1)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """Move / cast the camera tensors."""
        return Cameras(self.viewmats.to(device=device, dtype=dtype), self.Ks.to(device=device, dtype=dtype),
                       self.width, self.height)  # fmt: skip

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        """A sub-batch of cameras (an int index keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)


def _shape(value: object) -> str:
    return str(list(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def look_at_viewmats(eyes: Tensor, targets: Tensor, up: Tensor) -> Tensor:
    """World-to-camera OpenCV transforms for cameras at ``eyes`` looking at ``targets``.

    The camera's y axis (image down) is the projection of ``-up`` onto the image plane, so
    ``up`` points up in the image.

    Args:
        eyes: ``[C, 3]`` camera centres.
        targets: ``[C, 3]`` points to look at.
        up: ``[3]`` world up vector (need not be unit); must not be parallel to a view direction.

    Returns:
        ``[C, 4, 4]`` world-to-camera matrices.
    """
    forward = targets - eyes
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    norm = right.norm(dim=-1, keepdim=True)
    if bool((norm < 1e-6).any()):
        raise RenderError("a view direction is parallel to the up vector; the camera roll is undefined")
    right = right / norm
    down = torch.linalg.cross(forward, right, dim=-1)
    rot = torch.stack([right, down, forward], dim=1)  # rows: camera axes in world coordinates
    viewmats = torch.zeros(eyes.shape[0], 4, 4, dtype=eyes.dtype, device=eyes.device)
    viewmats[:, :3, :3] = rot
    viewmats[:, :3, 3] = -(rot @ eyes.unsqueeze(-1)).squeeze(-1)
    viewmats[:, 3, 3] = 1.0
    return viewmats


def pinhole_intrinsics(fov_deg: float, width: int, height: int, num_views: int = 1,
                       dtype: torch.dtype = torch.float32) -> Tensor:  # fmt: skip
    """``[num_views, 3, 3]`` intrinsics with square pixels and the optical axis at the image centre.

    ``fov_deg`` is the **vertical** field of view: ``fy = fx = (height / 2) / tan(fov / 2)``,
    ``cx = width / 2``, ``cy = height / 2``.
    """
    if not 0.0 < fov_deg < 180.0:
        raise RenderError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    k = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return k.expand(num_views, 3, 3).clone()


def _up_axis(num_views: int, radius: float, up: str) -> str:
    """Check what every camera ring or sphere needs; the canonical key of ``up`` in :data:`UP_AXES`."""
    if num_views < 1:
        raise RenderError(f"num_views must be >= 1, got {num_views}")
    if radius <= 0:
        raise RenderError(f"radius must be > 0, got {radius}")
    key = _UP_ALIASES.get(up, up)
    if key not in UP_AXES:
        raise RenderError(f"up must be one of {sorted(UP_AXES) + sorted(_UP_ALIASES)}, got {up!r}")
    return key


def _looking_at_origin(azimuths: Tensor, across, along, radius: float, key: str, fov_deg: float, width: int,
                       height: int, dtype: torch.dtype) -> Cameras:  # fmt: skip
    """Cameras at ``radius (across (cos(az) front + sin(az) up x front) + along up)`` (float64 ``[C]``
    azimuths in radians; ``across``, ``along``: the cosine and sine of each elevation, scalars or ``[C]``),
    all looking at the origin with the world's up axis up in the image."""
    up_vec, front = (torch.tensor(v, dtype=torch.float64) for v in UP_AXES[key])
    side = torch.linalg.cross(up_vec, front)
    horizontal = torch.cos(azimuths)[:, None] * front + torch.sin(azimuths)[:, None] * side
    eyes = radius * (across * horizontal + along * up_vec)
    viewmats = look_at_viewmats(eyes, torch.zeros_like(eyes), up_vec)
    Ks = pinhole_intrinsics(fov_deg, width, height, azimuths.shape[0], dtype=torch.float64)
    return Cameras(viewmats.to(dtype), Ks.to(dtype), width, height)


def orbit_cameras(
    num_views: int,
    radius: float = 3.0,
    elevation_deg: float = 20.0,
    fov_deg: float = 45.0,
    width: int = 224,
    height: int = 224,
    azimuth_start_deg: float = 0.0,
    random: bool = False,
    seed: int | None = None,
    up: str = "+y",
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Cameras on a circle around the origin, all looking at it, for an object in the unit sphere.

    Geometry, for ``up = "+y"`` (the default; glTF assets are +Y up and face +Z): a camera at
    azimuth ``az`` and elevation ``el`` sits at
    ``radius * (cos(el) sin(az), sin(el), cos(el) cos(az))``: azimuth 0 looks at the object's
    front from +Z, azimuth 90 from +X (azimuth turns counter-clockwise seen from above, i.e.
    right-handed about the up axis), positive elevation looks down from above. Other up axes use
    the same rule with the (up, front) pair of :data:`UP_AXES`:
    ``position = radius * (cos(el) (cos(az) front + sin(az) up x front) + sin(el) up)``.
    The world up direction always points up in the image (smaller pixel row).

    The defaults (radius 3, vertical fov 45 degrees) keep the whole unit sphere in view
    (``radius * sin(fov / 2) > 1``).

    Args:
        num_views: number of cameras C >= 1.
        radius: distance of every camera centre from the origin, > 0.
        elevation_deg: angle above the horizontal plane, in (-90, 90).
        fov_deg: vertical field of view.
        width, height: image size in pixels.
        azimuth_start_deg: azimuth of the first view; regular views follow at
            ``360 / num_views`` steps.
        random: draw the azimuths uniformly in [0, 360) from ``seed`` instead (``azimuth_start_deg``
            is then an offset added to them).
        seed: seed of the ``torch.Generator`` for ``random=True`` (required then).
        up: world up axis, one of ``"+y"`` (alias ``"y"``), ``"-y"``, ``"+z"`` (alias ``"z"``), ``"-z"``.
        dtype: floating dtype of the returned tensors.

    Returns:
        :class:`Cameras` with C views.
    """
    key = _up_axis(num_views, radius, up)
    if not -90.0 < elevation_deg < 90.0:
        raise RenderError(f"elevation_deg must lie in (-90, 90) (no roll at the poles), got {elevation_deg}")
    if random:
        if seed is None:
            raise RenderError("orbit_cameras(random=True) needs an explicit seed")
        generator = torch.Generator().manual_seed(seed)
        azimuths = torch.rand(num_views, generator=generator, dtype=torch.float64) * 360.0
    else:
        azimuths = torch.arange(num_views, dtype=torch.float64) * (360.0 / num_views)
    azimuths = torch.deg2rad(azimuths + azimuth_start_deg)
    elevation = math.radians(elevation_deg)
    return _looking_at_origin(azimuths, math.cos(elevation), math.sin(elevation), radius, key, fov_deg, width,
                              height, dtype)  # fmt: skip


def sphere_cameras(
    num_views: int,
    radius: float = 2.6,
    fov_deg: float = 45.0,
    width: int = 128,
    height: int = 128,
    turn: float = 0.0,
    max_elevation_deg: float = 75.0,
    up: str = "+y",
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Cameras spread evenly over a sphere around the origin (a Fibonacci lattice), all looking at it:
    the views an object is rendered and fitted from (:mod:`clip_gs.fitting`).

    View ``i`` sits at height ``sin(el_i)``, ``el_i`` spread evenly in sine between
    ``-max_elevation_deg`` and ``+max_elevation_deg`` (no view looks straight down the up axis),
    and at azimuth ``360 (i + turn) / phi^2`` degrees (the golden angle), so any number of views
    covers the sphere without clusters. ``turn`` rotates the whole set about the up axis: a set with
    ``turn=0.5`` lies between the views of ``turn=0`` (held-out views). Deterministic: no seed.

    Args:
        num_views: C >= 1.
        radius: camera distance; the default 2.6 with fov 45 keeps the unit sphere in view.
        up: world up axis (as in :func:`orbit_cameras`).

    Returns:
        :class:`Cameras` with C views.
    """
    key = _up_axis(num_views, radius, up)
    if not 0.0 <= max_elevation_deg < 90.0:
        raise RenderError(f"max_elevation_deg must lie in [0, 90), got {max_elevation_deg}")
    index = torch.arange(num_views, dtype=torch.float64)
    limit = math.sin(math.radians(max_elevation_deg))
    heights = limit * (1.0 - 2.0 * (index + 0.5) / num_views) if num_views > 1 else torch.zeros(1, dtype=torch.float64)
    golden = math.pi * (3.0 - math.sqrt(5.0))  # the golden angle, radians
    azimuths = golden * (index + turn)
    return _looking_at_origin(azimuths, torch.sqrt(1.0 - heights**2)[:, None], heights[:, None], radius, key, fov_deg,
                              width, height, dtype)  # fmt: skip


__all__ = [
    "OPENCV_TO_OPENGL",
    "UP_AXES",
    "Cameras",
    "look_at_viewmats",
    "orbit_cameras",
    "pinhole_intrinsics",
    "sphere_cameras",
]
