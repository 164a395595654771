"""The parametric shapes of the synthetic set (:mod:`clip_gs.data.synthetic`): triangle soups
``[F, 3, 3]`` in a canonical pose, with random proportions.

z is each shape's axis: a torus lies in the xy plane, a cylinder / cone / mug stands along z. The
proportions (torus tube radius, cylinder height, number of star points, ...) are drawn from the
caller's seeded generator and returned with the triangles. Colour, pose, captions and labels are
:mod:`clip_gs.data.synthetic`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from clip_gs.errors import ConfigError

Triangles = np.ndarray  # [F, 3, 3] float64 triangle soup



# ---------------------------------------------------------------------------- geometry builders
def _quads(grid: np.ndarray) -> Triangles:
    """Triangulate a grid of points ``[M, K, 3]`` into ``[2 (M-1)(K-1), 3, 3]`` triangles."""
    a, b, c, d = grid[:-1, :-1], grid[1:, :-1], grid[1:, 1:], grid[:-1, 1:]
    return np.concatenate([np.stack([a, b, c], -2).reshape(-1, 3, 3), np.stack([a, c, d], -2).reshape(-1, 3, 3)])


def _revolve(radius: np.ndarray, z: np.ndarray, segments: int = 48) -> Triangles:
    """Surface of revolution about z of the profile ``(radius[k], z[k])``."""
    phi = np.linspace(0.0, 2 * math.pi, segments + 1)[:, None]
    grid = np.stack(
        [radius[None] * np.cos(phi), radius[None] * np.sin(phi), np.broadcast_to(z[None], (len(phi), len(z)))], -1
    )
    return _quads(grid)


def _disk(outer: float, z: float, inner: float = 0.0, segments: int = 48) -> Triangles:
    """Flat annulus (a disk when ``inner == 0``) in the plane ``z``."""
    return _revolve(np.array([inner, outer]), np.array([z, z]), segments)


def _tube(
    centres: np.ndarray, normals: np.ndarray, binormals: np.ndarray, radius: float, segments: int = 12
) -> Triangles:
    """Tube of ``radius`` around the curve ``centres [M, 3]`` with cross-section frame (N, B) ``[M, 3]``."""
    v = np.linspace(0.0, 2 * math.pi, segments + 1)[None, :, None]
    grid = centres[:, None] + radius * (np.cos(v) * normals[:, None] + np.sin(v) * binormals[:, None])
    return _quads(grid)


def _prism(polygon: np.ndarray, half_height: float, kernel: np.ndarray) -> Triangles:
    """Extrude a simple polygon ``[P, 2]`` to ``z in [-h, h]``; caps are fans from ``kernel``,
    a point that sees every vertex (the polygon must be star-shaped about it)."""
    p0, p1 = polygon, np.roll(polygon, -1, axis=0)
    lo, hi = np.full((len(polygon), 1), -half_height), np.full((len(polygon), 1), half_height)
    a, b = np.hstack([p0, lo]), np.hstack([p1, lo])
    c, d = np.hstack([p1, hi]), np.hstack([p0, hi])
    sides = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    caps = []
    for z in (-half_height, half_height):
        k = np.broadcast_to(np.array([kernel[0], kernel[1], z]), (len(polygon), 3))
        zz = np.full((len(polygon), 1), z)
        caps.append(np.stack([k, np.hstack([p0, zz]), np.hstack([p1, zz])], 1))
    return np.concatenate([sides, *caps])


def _box(half: np.ndarray) -> Triangles:
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return _prism(square, 1.0, np.zeros(2)) * half


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _sphere(rng: np.random.Generator) -> tuple[Triangles, dict]:
    theta = np.linspace(0.0, math.pi, 33)
    return _revolve(np.sin(theta), np.cos(theta), 64), {"radius": 1.0}


def _cube(rng: np.random.Generator) -> tuple[Triangles, dict]:
    half = rng.uniform(0.85, 1.15, size=3)
    return _box(half), {"half_extents": half.tolist()}


def _torus(rng: np.random.Generator) -> tuple[Triangles, dict]:
    tube = _uniform(rng, 0.2, 0.45)
    v = np.linspace(0.0, 2 * math.pi, 25)
    return _revolve(1.0 + tube * np.cos(v), tube * np.sin(v), 64), {"major_radius": 1.0, "minor_radius": tube}


def _cylinder(rng: np.random.Generator) -> tuple[Triangles, dict]:
    r, h = _uniform(rng, 0.35, 0.7), _uniform(rng, 0.6, 1.2)
    side = _revolve(np.array([r, r]), np.array([-h, h]))
    return np.concatenate([side, _disk(r, -h), _disk(r, h)]), {"radius": r, "half_height": h}


def _cone(rng: np.random.Generator) -> tuple[Triangles, dict]:
    r, h = _uniform(rng, 0.5, 1.0), _uniform(rng, 1.0, 2.0)
    side = _revolve(np.array([r, 0.0]), np.array([0.0, h]))
    return np.concatenate([side, _disk(r, 0.0)]), {"radius": r, "height": h}


def _capsule(rng: np.random.Generator) -> tuple[Triangles, dict]:
    r, half_len = _uniform(rng, 0.3, 0.5), _uniform(rng, 0.4, 1.0)
    theta = np.linspace(0.0, math.pi / 2, 13)
    top_r, top_z = np.cos(theta), half_len / r + np.sin(theta)  # equator -> pole, in units of r
    profile_r = np.concatenate([top_r[::-1], top_r])
    profile_z = np.concatenate([-top_z[::-1], top_z])
    return _revolve(r * profile_r, r * profile_z), {"radius": r, "half_length": half_len}


def _ring(rng: np.random.Generator) -> tuple[Triangles, dict]:
    inner, t = _uniform(rng, 0.55, 0.8), _uniform(rng, 0.08, 0.2)
    parts = [
        _revolve(np.array([1.0, 1.0]), np.array([-t, t])),
        _revolve(np.array([inner, inner]), np.array([-t, t])),
        _disk(1.0, t, inner),
        _disk(1.0, -t, inner),
    ]
    return np.concatenate(parts), {"outer_radius": 1.0, "inner_radius": inner, "half_thickness": t}


def _pyramid(rng: np.random.Generator) -> tuple[Triangles, dict]:
    b, h = _uniform(rng, 0.6, 1.0), _uniform(rng, 0.8, 1.8)
    base = np.array([[-b, -b, 0.0], [b, -b, 0.0], [b, b, 0.0], [-b, b, 0.0]])
    apex = np.array([0.0, 0.0, h])
    sides = np.stack([base, np.roll(base, -1, 0), np.broadcast_to(apex, (4, 3))], 1)
    bottom = np.stack([base[[0, 0]], base[[1, 2]], base[[2, 3]]], 1)
    return np.concatenate([sides, bottom]), {"half_base": b, "height": h}


def _helix(rng: np.random.Generator) -> tuple[Triangles, dict]:
    turns, pitch, tube = _uniform(rng, 2.0, 3.5), _uniform(rng, 0.45, 0.8), _uniform(rng, 0.12, 0.2)
    t = np.linspace(0.0, 2 * math.pi * turns, int(48 * turns) + 1)
    c = pitch / (2 * math.pi)  # rise per radian
    centres = np.stack([np.cos(t), np.sin(t), c * t - c * t[-1] / 2], -1)
    tangent = np.stack([-np.sin(t), np.cos(t), np.full_like(t, c)], -1) / math.hypot(1.0, c)
    normal = np.stack([-np.cos(t), -np.sin(t), np.zeros_like(t)], -1)  # points to the axis
    binormal = np.cross(tangent, normal)
    return _tube(centres, normal, binormal, tube), {"turns": turns, "pitch": pitch, "tube_radius": tube}


def _star_prism(rng: np.random.Generator) -> tuple[Triangles, dict]:
    points, inner, h = int(rng.integers(5, 8)), _uniform(rng, 0.38, 0.55), _uniform(rng, 0.15, 0.45)
    angle = np.arange(2 * points) * math.pi / points + math.pi / 2
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    polygon = np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1)
    return _prism(polygon, h, np.zeros(2)), {"points": points, "inner_radius": inner, "half_height": h}


def _cross(rng: np.random.Generator) -> tuple[Triangles, dict]:
    w, h = _uniform(rng, 0.15, 0.3), _uniform(rng, 0.12, 0.3)
    arm = np.array([[w, -w], [1.0, -w], [1.0, w], [w, w]])  # the +x arm, ending at x = 1
    rot90 = np.array([[0.0, -1.0], [1.0, 0.0]])
    polygon = np.concatenate([arm @ np.linalg.matrix_power(rot90, k).T for k in range(4)])
    return _prism(polygon, h, np.zeros(2)), {"arm_half_width": w, "half_thickness": h}


def _l_shape(rng: np.random.Generator) -> tuple[Triangles, dict]:
    a, b = _uniform(rng, 1.2, 2.0), _uniform(rng, 0.8, 1.5)
    w, h = _uniform(rng, 0.35, 0.6), _uniform(rng, 0.2, 0.45)
    polygon = np.array([[0.0, 0.0], [a, 0.0], [a, w], [w, w], [w, b], [0.0, b]])
    params = {"long_leg": a, "short_leg": b, "width": w, "half_thickness": h}
    return _prism(polygon, h, np.array([w / 2, w / 2])), params


def _mug(rng: np.random.Generator) -> tuple[Triangles, dict]:
    r, height = _uniform(rng, 0.5, 0.7), _uniform(rng, 1.0, 1.6)
    wall, floor = 0.06, 0.08
    body = [
        _revolve(np.array([r, r]), np.array([0.0, height])),  # outer wall
        _revolve(np.array([r - wall, r - wall]), np.array([floor, height])),  # inner wall
        _disk(r, height, r - wall),  # rim
        _disk(r, 0.0),  # bottom
        _disk(r - wall, floor),  # inner floor
    ]
    loop, thickness = _uniform(rng, 0.25, 0.35) * height, 0.05 * height
    phi = np.linspace(-math.pi / 2, math.pi / 2, 25)  # the half loop outside the wall, in the xz plane
    radial = np.stack([np.cos(phi), np.zeros_like(phi), np.sin(phi)], -1)
    centres = np.array([r, 0.0, height / 2]) + loop * radial
    handle = _tube(centres, radial, np.broadcast_to([0.0, 1.0, 0.0], radial.shape), thickness)
    return np.concatenate([*body, handle]), {"radius": r, "height": height, "handle_radius": loop}


SHAPE_BUILDERS: dict[str, Callable[[np.random.Generator], tuple[Triangles, dict]]] = {
    "sphere": _sphere,
    "cube": _cube,
    "torus": _torus,
    "cylinder": _cylinder,
    "cone": _cone,
    "capsule": _capsule,
    "ring": _ring,
    "pyramid": _pyramid,
    "helix": _helix,
    "star_prism": _star_prism,
    "cross": _cross,
    "l_shape": _l_shape,
    "mug": _mug,
}
"""Shape name -> builder of its canonical triangle soup and drawn proportions."""


def shape_triangles(shape: str, rng: np.random.Generator) -> tuple[Triangles, dict]:
    """The canonical triangle soup ``[F, 3, 3]`` of ``shape`` with proportions drawn from ``rng``.

    Returns:
        ``(triangles, params)`` where ``params`` holds the drawn proportions.

    Raises:
        ConfigError: ``shape`` is not in :data:`SHAPE_BUILDERS`.
    """
    if shape not in SHAPE_BUILDERS:
        raise ConfigError(f"unknown synthetic shape class {shape!r}; choose one of {', '.join(SHAPE_BUILDERS)}")
    return SHAPE_BUILDERS[shape](rng)


__all__ = ["SHAPE_BUILDERS", "Triangles", "shape_triangles"]
