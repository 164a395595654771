"""Mesh -> 3DGS conversion: flat surface-disk Gaussians sampled on a triangle mesh.

The conversion follows the usual recipe for turning a textured mesh into a Gaussian "splat" of
its surface (as done to build 3DGS versions of mesh datasets):

1. Load the file as a scene with ``trimesh`` and bake every node transform, so multi-node glTF
   files and multi-material OBJ files become one list of world-space sub-meshes.
2. Sample ``num_gaussians`` surface points area-weighted over **all** sub-meshes jointly
   (:func:`~clip_gs.gaussians.surface.sample_triangles`), so each sub-mesh receives points in
   proportion to its area.
3. Colour every point from, in order of preference: the texture at the interpolated UV (PBR
   ``baseColorTexture * baseColorFactor``, or the OBJ ``map_Kd``), vertex colours interpolated
   with the barycentrics (or face colours), the material's constant colour (PBR
   ``baseColorFactor`` or OBJ ``Kd``), else :data:`NEUTRAL_GREY` with a :class:`MeshColorWarning`
   naming the file. A file the mesh names that cannot be used (a missing or unreadable ``mtllib``
   or ``map_Kd``, a texture that cannot be decoded) is also a :class:`MeshColorWarning` naming the
   mesh and that file: the colour then comes from the next source in this list (for an OBJ whose
   material library is missing, trimesh's default material grey).
4. Put a flat disk Gaussian at every point (:func:`~clip_gs.gaussians.surface.surface_disks`):
   local z axis along the face normal, tangent scale from the sampling density, a thin normal scale.
5. Normalise to the unit sphere (:meth:`GaussianCloud.normalized`).

Steps 2 and 4 are :mod:`clip_gs.gaussians.surface`, shared with :mod:`clip_gs.data.synthetic`;
this module holds the file side: loading, the files a mesh names, and colour lookup.

Files read (:func:`_checked_resolver`): the mesh itself and the files it names (material
libraries, textures, glTF buffers), regular files only (:mod:`clip_gs.gaussians.files`: a FIFO is
never opened, a device never read), and only inside the mesh's folder (symlinks resolved).

Colour conventions (choices where the formats are loose):

- Texture and material colours are used as stored (sRGB display values, as 3DGS stores colour);
  texture alpha and material alpha are ignored (opacity comes from the ``opacity`` argument).
- Textures wrap (``GL_REPEAT``) and are sampled bilinearly at texel centres. UVs follow trimesh's
  convention (OBJ: ``v = 0`` is the **bottom** image row; trimesh flips glTF UVs on load).
- For an OBJ material with ``map_Kd`` the texture alone gives the colour: exporters such as
  Blender write a default ``Kd 0.8`` next to the map, and trimesh defaults a missing ``Kd`` to
  0.4, so multiplying would darken correct textures. PBR (glTF) materials multiply the texture by
  ``baseColorFactor`` and by ``COLOR_0`` vertex colours when present, as the glTF spec says.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from clip_gs.errors import ClipGSError, ConfigError, MeshError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.files import open_regular_file, read_regular_file
from clip_gs.gaussians.surface import (
    DEFAULT_SCALE_FACTOR,
    DEFAULT_THICKNESS_RATIO,
    disk_radius,
    face_normals,
    sample_triangles,
    surface_disks,
    triangle_areas,
)

if TYPE_CHECKING:
    import trimesh

NEUTRAL_GREY = (0.5, 0.5, 0.5)
"""Colour given to surfaces with no texture, vertex colours or material colour."""


class MeshColorWarning(UserWarning):
    """Colour information was missing or unusable: a (part of a) mesh was given
    :data:`NEUTRAL_GREY`, a texture without UVs was ignored, or a material library or texture
    the mesh names is missing, unreadable or undecodable."""


class NeutralGreyWarning(MeshColorWarning):
    """The :class:`MeshColorWarning` for a (part of a) mesh given :data:`NEUTRAL_GREY` because it
    has no colour at all: a benchmark of colourless meshes (ModelNet) summarises these in one line."""


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", ".webp", ".gif")
"""Files named by a mesh that are checked to decode as images when they are read."""


# ---------------------------------------------------------------------------- colour lookup
def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup with repeat wrap.

    UV convention (trimesh / OBJ): ``u`` runs left to right, ``v`` runs **bottom to top**
    (``v = 0`` is the last image row). Texel ``(row i, column j)`` has its centre at
    ``u = (j + 0.5) / W``, ``v = 1 - (i + 0.5) / H``. Coordinates outside [0, 1] wrap
    (``GL_REPEAT``), including the bilinear neighbours at the borders.

    Args:
        image: ``[H, W, C]`` image (rows top to bottom), any numeric dtype; only the 4 texels
            around each lookup are read and cast, so a large uint8 texture is never copied.
        uv: ``[N, 2]``.

    Returns:
        ``[N, C]`` float64, in the image's value range.
    """
    h, w = image.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    xa, xb = np.mod(x0, w), np.mod(x0 + 1, w)
    ya, yb = np.mod(y0, h), np.mod(y0 + 1, h)
    img = np.asarray(image)

    def texel(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return img[rows, cols].astype(np.float64)

    top = texel(ya, xa) * (1 - fx) + texel(ya, xb) * fx
    bottom = texel(yb, xa) * (1 - fx) + texel(yb, xb) * fx
    return top * (1 - fy) + bottom * fy


def _lookup_rgb(image, uv: np.ndarray) -> np.ndarray:
    """Bilinear RGB in [0, 1] of a PIL image (any mode) at ``uv [N, 2]``."""
    return sample_texture(np.asarray(image.convert("RGB")), uv) / 255.0


def _texture_rgb(part: _Part, image, uv: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """:func:`_lookup_rgb`, or None with a note when the image data cannot be decoded."""
    try:
        return _lookup_rgb(image, uv)
    except (OSError, ValueError, SyntaxError) as exc:  # what PIL raises on truncated or corrupt image data
        name = getattr(image, "info", {}).get("file_path") or "its texture"
        notes.append(f"{part.name}: {name} cannot be decoded ({exc}); the next colour source is used")
        return None


def _color_to_float(color) -> np.ndarray:
    """trimesh colour (uint8 or float, RGB or RGBA, any leading shape) -> float RGB in [0, 1]."""
    arr = np.asarray(color)
    out = arr[..., :3].astype(np.float64)
    if arr.dtype.kind in "ui":
        out = out / 255.0
    return out


@dataclass(frozen=True)
class _Part:
    """One world-space sub-mesh of a scene."""

    name: str
    vertices: np.ndarray  # [V, 3]
    faces: np.ndarray  # [F, 3]
    visual: object


def _part_colors(
    part: _Part, face_index: np.ndarray, bary: np.ndarray, notes: list[str]
) -> tuple[np.ndarray | None, str]:
    """Colours of points sampled on one part; ``(None, reason)`` when the part has no colour.

    Problems that make the lookup fall back to a lesser source (a texture without UVs) are
    appended to ``notes`` so the caller can warn about them.
    """
    import trimesh

    visual = part.visual
    corners = part.faces[face_index]  # [n, 3] vertex indices

    def interpolate(per_vertex: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nkd->nd", bary, per_vertex[corners])

    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        uv = visual.uv
        has_uv = uv is not None and len(uv) == len(part.vertices)
        vertex_rgb = None
        color_attr = getattr(visual, "vertex_attributes", {}).get("color")
        if color_attr is not None and len(color_attr) == len(part.vertices):
            vertex_rgb = interpolate(_color_to_float(color_attr))
        image = (
            material.baseColorTexture
            if isinstance(material, trimesh.visual.material.PBRMaterial)
            else getattr(material, "image", None)
        )
        if image is not None and not has_uv:
            notes.append(f"{part.name} has a texture but no per-vertex UVs; the texture is ignored")
        if isinstance(material, trimesh.visual.material.PBRMaterial):
            factor = material.baseColorFactor
            factor_rgb = None if factor is None else _color_to_float(factor).reshape(3)
            texture = material.baseColorTexture
            rgb = None
            if texture is not None and has_uv:
                rgb = _texture_rgb(part, texture, interpolate(np.asarray(uv, dtype=np.float64)[:, :2]), notes)
            if rgb is not None:
                if factor_rgb is not None:
                    rgb = rgb * factor_rgb
                return (rgb if vertex_rgb is None else rgb * vertex_rgb), "texture"
            if vertex_rgb is not None:
                return (vertex_rgb if factor_rgb is None else vertex_rgb * factor_rgb), "vertex colours"
            if factor_rgb is not None:
                return np.broadcast_to(factor_rgb, (len(face_index), 3)).copy(), "material colour"
            return None, "PBR material without baseColorTexture, COLOR_0 or baseColorFactor"
        if material is not None:  # SimpleMaterial (OBJ/MTL)
            image = getattr(material, "image", None)
            rgb = None
            if image is not None and has_uv:
                rgb = _texture_rgb(part, image, interpolate(np.asarray(uv, dtype=np.float64)[:, :2]), notes)
            if rgb is not None:
                return rgb, "texture"
            if vertex_rgb is not None:
                return vertex_rgb, "vertex colours"
            diffuse = getattr(material, "diffuse", None)
            if diffuse is not None:
                rgb = _color_to_float(diffuse).reshape(3)
                return np.broadcast_to(rgb, (len(face_index), 3)).copy(), "material colour"
        if vertex_rgb is not None:
            return vertex_rgb, "vertex colours"
        return None, "texture visual without an image or material colour"
    if isinstance(visual, trimesh.visual.ColorVisuals):
        kind = visual.kind
        if kind == "vertex":
            return interpolate(_color_to_float(visual.vertex_colors)), "vertex colours"
        if kind == "face":
            return _color_to_float(visual.face_colors)[face_index], "face colours"
        return None, "no texture, vertex colours or material"
    return None, f"unsupported visual {type(visual).__name__}"


# ---------------------------------------------------------------------------- loading
MeshLike = Union[str, os.PathLike, "trimesh.Trimesh", "trimesh.Scene"]  # trimesh is imported lazily (slow import)


def _checked_resolver(path: Path, problems: list[str]):
    """A trimesh resolver for the files a mesh names (material libraries, textures, buffers).

    It keeps trimesh's rules (names are looked up inside the mesh's folder, symlinks resolved;
    one escaping the folder is refused) and adds: only regular files are read
    (:func:`~clip_gs.gaussians.files.read_regular_file`), and an image (:data:`IMAGE_EXTENSIONS`)
    must decode with PIL (within PIL's own pixel-count limit). Every name that cannot be used is
    described in ``problems``, for the caller to warn about; the loader sees an ``OSError`` as for
    a missing file.
    """
    import io

    import trimesh
    from PIL import Image

    class CheckedResolver(trimesh.resolvers.FilePathResolver):
        def namespaced(self, namespace: str):
            return _checked_resolver(Path(self.parent) / namespace / "_", problems)

        def get(self, name: str) -> bytes:
            stripped = name.strip()
            located = None
            for candidate in (stripped, stripped.lstrip("/"), os.path.split(name)[-1]):
                try:
                    where = self.absolute(candidate)
                except ValueError:
                    continue
                if os.path.lexists(where):
                    located = where
                    break
            kind = "material library" if stripped.lower().endswith(".mtl") else "file"
            kind = "texture" if stripped.lower().endswith(IMAGE_EXTENSIONS) else kind
            if located is None:
                try:
                    self.absolute(stripped)
                    why = "is missing"
                except ValueError:
                    why = "lies outside the mesh's folder and is not read"
                problems.append(f"{kind} {stripped!r} named by the mesh {why}")
                raise FileNotFoundError(stripped)
            try:
                data = read_regular_file(located, MeshError)
            except MeshError as exc:
                problems.append(f"{kind} {stripped!r} named by the mesh cannot be read ({exc})")
                raise OSError(str(exc)) from exc
            if kind == "texture":
                try:
                    with Image.open(io.BytesIO(data)) as image:
                        image.load()
                except Exception as exc:  # PIL raises several types (and DecompressionBombError)
                    problems.append(f"texture {stripped!r} named by the mesh cannot be decoded ({exc})")
                    raise OSError(f"{stripped}: cannot be decoded") from exc
            return data

    return CheckedResolver(str(path))


def _load_parts(mesh: MeshLike) -> tuple[list[_Part], str, list[str]]:
    """World-space sub-meshes of a file / Trimesh / Scene, a name for messages, and the problems
    met with the files the mesh names (see :func:`_checked_resolver`)."""
    import trimesh

    problems: list[str] = []
    if isinstance(mesh, str | os.PathLike):
        path = Path(mesh)
        source = path.name
        if not path.exists():
            raise MeshError(f"{path}: no such mesh file")
        try:
            with open_regular_file(path, MeshError) as fh:
                scene = trimesh.load_scene(
                    fh,
                    file_type=path.suffix.lstrip(".").lower(),
                    resolver=_checked_resolver(path, problems),
                    process=False,  # keep raw data: we report bad vertices
                )
        except ClipGSError:
            raise
        except Exception as exc:  # trimesh raises many types; never let them escape raw
            raise MeshError(f"{path}: cannot read mesh ({type(exc).__name__}: {exc})") from exc
    elif isinstance(mesh, trimesh.Scene):
        scene = mesh
        source = str(mesh.metadata.get("file_name") or "<trimesh.Scene>")
    elif isinstance(mesh, trimesh.Trimesh):
        scene = trimesh.Scene(mesh)
        source = str(mesh.metadata.get("file_name") or "<trimesh.Trimesh>")
    else:
        raise MeshError(f"expected a path, trimesh.Trimesh or trimesh.Scene, got {type(mesh).__name__}")

    try:
        dumped = scene.dump()
    except Exception as exc:
        raise MeshError(f"{source}: cannot apply the scene's node transforms ({type(exc).__name__}: {exc})") from exc
    parts = []
    for i, geom in enumerate(dumped):
        if not isinstance(geom, trimesh.Trimesh):
            continue  # paths and point clouds have no surface to sample
        faces = np.asarray(geom.faces, dtype=np.int64).reshape(-1, 3)
        if len(faces) == 0:
            continue
        name = str(geom.metadata.get("name") or f"part {i}")
        parts.append(_Part(name, np.asarray(geom.vertices, dtype=np.float64), faces, geom.visual))
    if not parts:
        raise MeshError(f"{source}: the mesh has no triangle faces (nothing to sample)")
    return parts, source, problems


def mesh_unit_transform(mesh: MeshLike) -> torch.Tensor:
    """``[4, 4]`` float64 similarity that puts a mesh's bounding-box centre at the origin and its
    farthest vertex (of faces) at distance 1: the frame in which meshes are rendered and fitted
    (:mod:`clip_gs.fitting`). It depends on the vertices only, never on a sampling.

    Raises:
        MeshError: unreadable file, no faces, non-finite vertices, or all vertices at one point.
    """
    parts, source, _ = _load_parts(mesh)
    vertices = np.concatenate([part.vertices[np.unique(part.faces)] for part in parts])
    if not np.isfinite(vertices).all():
        raise MeshError(f"{source}: non-finite vertex coordinates")
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = float(np.linalg.norm(vertices - centre, axis=1).max())
    if not radius > 0:
        raise MeshError(f"{source}: every vertex sits at one point")
    transform = np.eye(4)
    transform[:3, :3] /= radius
    transform[:3, 3] = -centre / radius
    return torch.from_numpy(transform)


def mesh_to_gaussians(
    mesh: MeshLike,
    num_gaussians: int = 10_000,
    seed: int = 0,
    opacity: float = 0.95,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    thickness_ratio: float = DEFAULT_THICKNESS_RATIO,
    normalize: bool = True,
) -> GaussianCloud:
    """Convert a mesh into flat disk Gaussians on its surface.

    Args:
        mesh: a file trimesh can read (OBJ with MTL and textures, glTF/GLB, PLY, STL, OFF, ...)
            or a ``trimesh.Trimesh`` / ``trimesh.Scene``. Scenes are flattened with every node
            transform applied.
        num_gaussians: N, the number of Gaussians (surface samples).
        seed: seed of the sampling (faces, positions inside faces).
        opacity: opacity of every Gaussian, in (0, 1).
        scale_factor: tangent sigma in units of ``sqrt(total_area / (N pi))``
            (:func:`~clip_gs.gaussians.surface.disk_radius`).
        thickness_ratio: normal sigma as a fraction of the tangent sigma.
        normalize: centre and scale into the unit sphere (:meth:`GaussianCloud.normalized`).

    Returns:
        A float32 :class:`GaussianCloud` of N Gaussians, SH degree 0, ``source`` = the file name.

    Raises:
        MeshError: unreadable or unknown file, no faces, non-finite vertices or zero area.
        ConfigError: invalid ``num_gaussians``, ``opacity``, ``scale_factor`` or ``thickness_ratio``.

    Warns:
        MeshColorWarning: when (part of) the mesh has no colour and is given :data:`NEUTRAL_GREY`,
            has a texture but no UVs, or names a material library or texture that is missing,
            unreadable or undecodable (each time naming the file; the next colour source is used).
    """
    if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, int) or num_gaussians <= 0:
        raise ConfigError(f"num_gaussians must be a positive int, got {num_gaussians!r}")
    if not (math.isfinite(scale_factor) and scale_factor > 0):
        raise ConfigError(f"scale_factor must be positive, got {scale_factor}")
    if not 0 < opacity < 1:
        raise ConfigError(f"opacity must lie strictly inside (0, 1), got {opacity}")
    if not 0 < thickness_ratio <= 1:
        raise ConfigError(f"thickness_ratio must lie in (0, 1], got {thickness_ratio}")
    parts, source, problems = _load_parts(mesh)

    for part in parts:
        if not np.isfinite(part.vertices).all():
            bad = int((~np.isfinite(part.vertices)).any(axis=-1).sum())
            raise MeshError(f"{source}: {part.name} has {bad} vertex(es) with non-finite coordinates")
        if part.faces.min() < 0 or part.faces.max() >= len(part.vertices):
            raise MeshError(f"{source}: {part.name} has face indices outside its {len(part.vertices)} vertices")
    triangles = [part.vertices[part.faces] for part in parts]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(triangles)])
    offsets = np.cumsum([0] + [len(t) for t in triangles])
    all_tri = np.concatenate(triangles)
    total_area = float(triangle_areas(all_tri).sum())
    if not (math.isfinite(total_area) and total_area > 0):
        raise MeshError(f"{source}: the surface has zero total area (all faces are degenerate)")

    rng = np.random.default_rng(seed)
    face_index, bary, points = sample_triangles(all_tri, num_gaussians, rng)
    normals = face_normals(all_tri[face_index])

    rgb = np.empty((num_gaussians, 3))
    grey_parts: list[str] = []
    notes: list[str] = [f"{problem}; the next colour source is used" for problem in problems]
    sampled_owner = owner[face_index]
    for i, part in enumerate(parts):
        mask = sampled_owner == i
        if not mask.any():
            continue
        colours, reason = _part_colors(part, face_index[mask] - offsets[i], bary[mask], notes)
        if colours is None:
            grey_parts.append(f"{part.name} ({reason})")
            colours = np.broadcast_to(np.asarray(NEUTRAL_GREY), (int(mask.sum()), 3))
        rgb[mask] = colours
    for note in notes:
        warnings.warn(f"{source}: {note}", MeshColorWarning, stacklevel=2)
    if grey_parts:
        warnings.warn(
            f"{source}: no colour information for {', '.join(grey_parts)}; using neutral grey {NEUTRAL_GREY}",
            NeutralGreyWarning,
            stacklevel=2,
        )
    if not np.isfinite(rgb).all():
        raise MeshError(f"{source}: colour lookup produced non-finite values (bad UVs or colours)")

    cloud = surface_disks(
        points,
        normals,
        rgb,
        radius=disk_radius(total_area, num_gaussians, scale_factor),
        thickness_ratio=thickness_ratio,
        opacity=opacity,
        source=source,
    )
    return cloud.normalized() if normalize else cloud


__all__ = [
    "NEUTRAL_GREY",
    "MeshColorWarning",
    "NeutralGreyWarning",
    "mesh_to_gaussians",
    "mesh_unit_transform",
    "sample_texture",
]
