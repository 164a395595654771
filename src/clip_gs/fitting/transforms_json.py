"""The one reader of a posed-image folder's ``transforms.json`` (NeRF / Blender / instant-ngp layout).

:func:`read_transforms` returns only validated values; every rule below is refused with a
:class:`~clip_gs.errors.PosedImagesError` naming the file and the frame or field:

- **The file**: at most :data:`MAX_TRANSFORMS_BYTES`, UTF-8, standard JSON (no ``NaN`` / ``Infinity``
  constants, no key repeated in one object), and it must lie inside the folder once symbolic links
  are resolved.
- **Top level**: an object with a non-empty list ``frames``.
- **A frame**: an object with ``file_path`` and ``transform_matrix``. ``file_path`` is a non-empty
  relative path; ``.png``, ``.jpg`` then ``.jpeg`` are tried when it names no file. The image it
  names must lie inside the folder after ``..`` and symbolic links are resolved (absolute paths are
  refused): nothing outside the input is read.
- **transform_matrix**: camera-to-world in OpenGL / Blender axes, 4 x 4 (or 3 x 4, the last row then
  being ``0 0 0 1``) of JSON numbers (booleans are not numbers), and rigid: the rotation part is
  orthonormal within :data:`ROTATION_TOLERANCE` with determinant +1, the last row is exactly
  ``0 0 0 1``, and the camera lies within :data:`MAX_COORDINATE` of the origin on each axis.
- **Intrinsics** (a frame's field overrides the top level's): ``fl_x`` (``fl_y`` defaults to it), else
  ``camera_angle_x`` (``camera_angle_y``, else square pixels); ``cx``, ``cy`` default to the image
  centre. Angles are radians in (0, pi). Every focal length, given or derived from an angle, is
  finite and lies within [:data:`MIN_FOCAL_RATIO`, :data:`MAX_FOCAL_RATIO`] times the image side it
  measures (``fx`` the width, ``fy`` the height): a field of view between about 0.06 and 177.7
  degrees. The principal point lies inside the image (``[0, w] x [0, h]``). ``w`` and ``h``, when
  given, equal the image's size. Those that need the image size are checked by
  :meth:`FrameSpec.intrinsics`.
- **Lens**: the fit renders pinhole cameras, so distortion coefficients (:data:`DISTORTION_FIELDS`)
  must be 0 when given, and ``camera_model``, when given, one of :data:`PINHOLE_MODELS`.
- **clip_gs.world** (written by clip-gs beside views of a mesh): a 4 x 4 uniform scale > 0 plus a
  translation (last row ``0 0 0 1``), the frame a starting mesh is moved into.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import PosedImagesError
from clip_gs.strict_json import unique_keys

TRANSFORMS_NAME = "transforms.json"
MAX_TRANSFORMS_BYTES = 16 << 20
"""Largest ``transforms.json`` read (about 30,000 frames as instant-ngp writes them)."""
ROTATION_TOLERANCE = 1e-3
"""Largest entry of ``|R^T R - I|`` for the rotation part of a ``transform_matrix``."""
MAX_COORDINATE = 1e6
"""Largest camera coordinate (absolute): float32 cameras keep 0.06 units of precision there."""
MIN_FOCAL_RATIO = 0.01
"""Smallest focal length over the image side it measures (a field of view of 177.7 degrees)."""
MAX_FOCAL_RATIO = 1000.0
"""Largest focal length over the image side it measures (a field of view of 0.06 degrees)."""
WORLD_TOLERANCE = 1e-9
"""Relative tolerance of ``clip_gs.world``'s linear part to a uniform scale."""
DISTORTION_FIELDS = ("k1", "k2", "k3", "k4", "p1", "p2")
PINHOLE_MODELS = ("PINHOLE", "SIMPLE_PINHOLE", "OPENCV")
"""``camera_model`` names whose zero-distortion cameras are pinholes (OPENCV's distortion is checked apart)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LENS_FIELDS = ("fl_x", "fl_y", "cx", "cy", "camera_angle_x", "camera_angle_y", "w", "h")


@dataclass(frozen=True, eq=False)
class FrameSpec:
    """One validated frame: its image file, camera-to-world matrix and lens fields."""

    where: str
    """The frame, for messages (``.../transforms.json frame 3``)."""
    image: Path
    """The image file, resolved, inside the folder."""
    c2w: Tensor
    """``[4, 4]`` float64 camera-to-world, OpenGL / Blender axes, rigid."""
    lens: dict[str, float]
    """The intrinsic fields present (``fl_x``, ``fl_y``, ``cx``, ``cy``, ``camera_angle_x``, ``camera_angle_y``,
    ``w``, ``h``), validated, the frame's over the top level's."""

    def intrinsics(self, width: int, height: int) -> Tensor:
        """``[3, 3]`` float64 pinhole intrinsics for an image of ``width x height`` pixels.

        Raises:
            PosedImagesError: ``w`` / ``h`` differ from the image's size; no focal length or angle;
                a focal length or principal point outside the module's bounds.
        """
        lens, where = self.lens, self.where
        for field, size in (("w", width), ("h", height)):
            if field in lens and lens[field] != size:
                raise PosedImagesError(
                    f"{where}: {field} is {lens[field]:g} but the image {self.image.name} is {width}x{height}"
                )
        if "fl_x" in lens:
            fx = lens["fl_x"]
            fy = lens.get("fl_y", fx)
        elif "camera_angle_x" in lens:
            fx = _focal_of_angle(lens["camera_angle_x"], width)
            fy = _focal_of_angle(lens["camera_angle_y"], height) if "camera_angle_y" in lens else fx
        else:
            raise PosedImagesError(f"{where}: no intrinsics (fl_x or camera_angle_x)")
        for field, focal, side in (("fx", fx, width), ("fy", fy, height)):
            if not (math.isfinite(focal) and MIN_FOCAL_RATIO * side <= focal <= MAX_FOCAL_RATIO * side):
                raise PosedImagesError(
                    f"{where}: focal length {field}={focal:g} px is impossible for an image side of {side} px "
                    f"(it must lie in [{MIN_FOCAL_RATIO:g}, {MAX_FOCAL_RATIO:g}] x the side)"
                )
        cx, cy = lens.get("cx", width / 2), lens.get("cy", height / 2)
        if not (0.0 <= cx <= width and 0.0 <= cy <= height):
            raise PosedImagesError(f"{where}: principal point ({cx:g}, {cy:g}) lies outside the {width}x{height} image")
        return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class TransformsSpec:
    """A validated ``transforms.json``: where it is, its frames, and the frame clip-gs recorded."""

    path: Path
    frames: tuple[FrameSpec, ...]
    world: Tensor | None
    """``[4, 4]`` float64 ``clip_gs.world`` (uniform scale plus translation), or None when absent."""


def _focal_of_angle(angle: float, side: int) -> float:
    # the angle's range is checked on reading; the focal length's range by the caller
    return 0.5 * side / math.tan(0.5 * angle)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _load_json(path: Path) -> object:
    try:
        with open(path, "rb") as file:
            # read(n) reserves n bytes: ask for no more than the file holds (one more shows growth)
            data = file.read(min(os.fstat(file.fileno()).st_size, MAX_TRANSFORMS_BYTES) + 1)
    except OSError as exc:
        raise PosedImagesError(f"{path}: cannot read ({exc})") from exc
    if len(data) > MAX_TRANSFORMS_BYTES:
        raise PosedImagesError(f"{path}: larger than {MAX_TRANSFORMS_BYTES >> 20} MiB, the most read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PosedImagesError(f"{path}: not UTF-8 text ({exc})") from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError, MemoryError) as exc:  # JSONDecodeError is a ValueError
        raise PosedImagesError(f"{path}: not valid JSON ({exc})") from exc


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: object, where: str, field: str) -> float:
    """A finite JSON number as a float."""
    if not _is_number(value):
        raise PosedImagesError(f"{where}: {field} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PosedImagesError(f"{where}: {field} must be finite, got {_shown(value)}")
    return number


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _matrix(value: object, where: str, field: str) -> Tensor:
    """A 4 x 4 (or 3 x 4, completed with ``0 0 0 1``) matrix of finite JSON numbers, float64."""
    shape_ok = (isinstance(value, list) and len(value) in (3, 4)
                and all(isinstance(row, list) and len(row) == 4 for row in value))  # fmt: skip
    if not shape_ok:
        raise PosedImagesError(f"{where}: {field} must be a 4 x 4 (or 3 x 4) list of rows, got {_shown(value)}")
    rows = [[_number(x, where, f"{field}[{i}][{j}]") for j, x in enumerate(row)] for i, row in enumerate(value)]
    if len(rows) == 3:
        rows.append([0.0, 0.0, 0.0, 1.0])
    matrix = torch.tensor(rows, dtype=torch.float64)
    if matrix[3].tolist() != [0.0, 0.0, 0.0, 1.0]:
        raise PosedImagesError(f"{where}: {field}'s last row must be 0 0 0 1, got {matrix[3].tolist()}")
    return matrix


def _rigid(value: object, where: str) -> Tensor:
    c2w = _matrix(value, where, "transform_matrix")
    rot = c2w[:3, :3]
    error = float((rot.T @ rot - torch.eye(3, dtype=torch.float64)).abs().max())
    if error > ROTATION_TOLERANCE or float(torch.linalg.det(rot)) <= 0:
        raise PosedImagesError(
            f"{where}: transform_matrix is not a rigid camera-to-world transform (its rotation part is off a "
            f"rotation by {error:.3g}, determinant {float(torch.linalg.det(rot)):.3g}; scaled, sheared, mirrored "
            "or singular cameras are refused)"
        )
    if float(c2w[:3, 3].abs().max()) > MAX_COORDINATE:
        raise PosedImagesError(f"{where}: camera at {c2w[:3, 3].tolist()} lies beyond +-{MAX_COORDINATE:g}")
    return c2w


def _lens(fields: dict, where: str) -> dict[str, float]:
    """The intrinsic fields present in ``fields`` (validated), and the lens rules."""
    lens = {}
    for field in _LENS_FIELDS:
        if field in fields:
            lens[field] = _number(fields[field], where, field)
    for field in ("camera_angle_x", "camera_angle_y"):
        if field in lens and not 0.0 < lens[field] < math.pi:
            raise PosedImagesError(f"{where}: {field} is {lens[field]:g} rad; a field of view lies in (0, pi)")
    for field in ("fl_x", "fl_y"):
        if field in lens and lens[field] <= 0:
            raise PosedImagesError(f"{where}: {field} is {lens[field]:g}; a focal length is positive")
    for field in ("w", "h"):
        if field in lens and (lens[field] < 1 or lens[field] != int(lens[field])):
            raise PosedImagesError(f"{where}: {field} is {lens[field]:g}; an image size is a positive whole number")
    for field in DISTORTION_FIELDS:
        if field in fields and _number(fields[field], where, field) != 0.0:
            raise PosedImagesError(
                f"{where}: lens distortion {field}={fields[field]!r}; the fit renders pinhole cameras, so undistort "
                "the images first"
            )
    if "camera_model" in fields and fields["camera_model"] not in PINHOLE_MODELS:
        raise PosedImagesError(
            f"{where}: camera_model {_shown(fields['camera_model'])} is not a pinhole (one of {list(PINHOLE_MODELS)})"
        )
    return lens


def _inside(path: Path, root: Path, where: str, shown: str) -> Path:
    """``path`` resolved; refused unless it lies inside ``root`` (itself resolved)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symbolic-link loop, a NUL byte
        raise PosedImagesError(f"{where}: cannot resolve {shown} ({exc})") from exc
    if not resolved.is_relative_to(root):
        raise PosedImagesError(f"{where}: {shown} leaves the folder {root} (resolves to {resolved}); refused")
    return resolved


def _frame_image(folder: Path, root: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PosedImagesError(f"{where}: file_path must be a non-empty relative path, got {_shown(value)}")
    shown = f"file_path {value!r}"
    if Path(value).is_absolute():
        raise PosedImagesError(f"{where}: {shown} is absolute; frame paths are relative to the folder")
    path = folder / value
    _inside(path, root, where, shown)
    candidates = [path] if path.suffix else []
    candidates += [path.with_name(path.name + suffix) for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        resolved = _inside(candidate, root, where, shown)
        if resolved.is_file():
            return resolved
    raise PosedImagesError(f"{where}: frame image {value!r} not found")


def _world(spec: dict, where: str) -> Tensor | None:
    record = spec.get("clip_gs")
    if record is None:
        return None
    if not isinstance(record, dict):
        raise PosedImagesError(f"{where}: clip_gs must be an object, got {_shown(record)}")
    if "world" not in record:
        return None
    world = _matrix(record["world"], where, "clip_gs.world")
    scale = float(world[0, 0])
    uniform = torch.allclose(world[:3, :3], scale * torch.eye(3, dtype=torch.float64), rtol=0.0,
                             atol=WORLD_TOLERANCE * abs(scale))  # fmt: skip
    if not (scale > 0 and uniform):
        raise PosedImagesError(f"{where}: clip_gs.world must be a uniform scale > 0 plus a translation")
    return world


def read_transforms(folder: str | os.PathLike) -> TransformsSpec:
    """Read and validate ``folder/transforms.json`` (the rules are in the module docstring).

    Raises:
        PosedImagesError: no such file, or a rule broken (names the file and the frame or field).
    """
    folder = Path(folder)
    path = folder / TRANSFORMS_NAME
    if not folder.is_dir() or not path.is_file():
        raise PosedImagesError(f"{folder}: no {TRANSFORMS_NAME} (a folder of posed images needs one)")
    root = folder.resolve()
    _inside(path, root, str(path), "the file")
    spec = _load_json(path)
    frames = spec.get("frames") if isinstance(spec, dict) else None
    if not isinstance(frames, list) or not frames:
        raise PosedImagesError(f"{path}: no frames (a non-empty list 'frames' is needed)")
    top = _lens(spec, str(path))
    parsed = []
    for index, frame in enumerate(frames):
        where = f"{path} frame {index}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise PosedImagesError(f"{where}: needs 'file_path' and 'transform_matrix'")
        image = _frame_image(folder, root, frame["file_path"], where)
        c2w = _rigid(frame["transform_matrix"], where)
        parsed.append(FrameSpec(where, image, c2w, {**top, **_lens(frame, where)}))
    return TransformsSpec(path, tuple(parsed), _world(spec, str(path)))


__all__ = [
    "DISTORTION_FIELDS",
    "IMAGE_SUFFIXES",
    "MAX_COORDINATE",
    "MAX_FOCAL_RATIO",
    "MAX_TRANSFORMS_BYTES",
    "MIN_FOCAL_RATIO",
    "PINHOLE_MODELS",
    "ROTATION_TOLERANCE",
    "TRANSFORMS_NAME",
    "WORLD_TOLERANCE",
    "FrameSpec",
    "TransformsSpec",
    "read_transforms",
]
