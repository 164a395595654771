"""A deterministic synthetic 3DGS set: labelled, captioned Gaussian clouds of parametric shapes.

Each object is built in four steps, all driven by one seeded ``numpy`` generator:

1. **Shape** (:mod:`clip_gs.data.synthetic_shapes`): a triangle soup of one of
   :data:`SHAPE_CLASSES` in a canonical pose (z is the shape's axis: a torus lies in the xy plane,
   a cylinder / cone / mug stands along z), with random proportions (torus tube radius, cylinder
   height, number of star points, ...; the drawn values are returned in
   :attr:`SyntheticObject.params`).
2. **Surface samples**: area-weighted points with their face normals
   (:func:`clip_gs.gaussians.surface.sample_triangles`, the same sampler as the mesh converter).
3. **Colour**: a primary colour from :data:`PALETTE` and a surface pattern from :data:`PATTERNS`,
   evaluated in the canonical frame so the pattern follows the object:

   - ``solid``: every Gaussian has the primary colour.
   - ``striped``: 4-7 equal-width bands across the object's extent along one canonical axis,
     alternating primary / secondary.
   - ``dotted``: 10-20 dots (surface points chosen at random) of radius 0.12-0.18 of the object's
     radius in the secondary colour on the primary colour.
   - ``two_tone``: the half beyond the middle of the extent along one canonical axis is secondary.

4. **Pose and Gaussians**: a rotation (:attr:`SyntheticObject.rotation`, see :data:`POSES`), flat
   disk Gaussians along the normals (:func:`clip_gs.gaussians.surface.surface_disks`, the one disk
   implementation), normalised into the unit sphere.

Everything is vectorised; building one object of 2,048 Gaussians takes a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from clip_gs.data.synthetic_shapes import shape_triangles
from clip_gs.errors import ConfigError
from clip_gs.gaussians.cloud import GaussianCloud, quaternions_to_matrices
from clip_gs.gaussians.surface import (
    DEFAULT_SCALE_FACTOR,
    DEFAULT_THICKNESS_RATIO,
    disk_radius,
    face_normals,
    sample_triangles,
    surface_disks,
    triangle_areas,
)
from clip_gs.teachers.prompts import article

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.98, 0.86, 0.12),
    "green": (0.12, 0.65, 0.22),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.10, 0.30, 0.90),
    "purple": (0.55, 0.20, 0.75),
    "pink": (1.00, 0.52, 0.72),
    "brown": (0.50, 0.30, 0.10),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
    "black": (0.08, 0.08, 0.08),
}
"""Named colours (sRGB in [0, 1]); the names are the words the captions use."""

PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "two_tone")
"""Surface patterns; see the module docstring for their definitions."""

SHAPE_NOUNS: dict[str, str] = {
    "sphere": "sphere",
    "cube": "cube",
    "torus": "torus",
    "cylinder": "cylinder",
    "cone": "cone",
    "capsule": "capsule",
    "ring": "ring",
    "pyramid": "pyramid",
    "helix": "helix",
    "star_prism": "star prism",
    "cross": "cross",
    "l_shape": "L-shaped block",
    "mug": "mug",
}
"""The classes, in label-index order, and the noun each uses in captions (the shapes:
:data:`~clip_gs.data.synthetic_shapes.SHAPE_BUILDERS`)."""

SHAPE_CLASSES: tuple[str, ...] = tuple(SHAPE_NOUNS)
"""Class names, in label-index order."""


def _check_shape(shape: str) -> str:
    if shape not in SHAPE_NOUNS:
        raise ConfigError(f"unknown synthetic shape class {shape!r}; choose one of {', '.join(SHAPE_CLASSES)}")
    return shape


# ---------------------------------------------------------------------------- colour and pose
POSES: tuple[str, ...] = ("random", "upright", "canonical")
"""How a synthetic object is posed in the world (+Y is up, as :mod:`clip_gs.data.prepare` renders it):

- ``random``: a uniformly random rotation (any side may face up);
- ``upright``: the shape's axis (canonical z) along +Y, turned about +Y by a uniform angle, as
  objects stand in Objaverse or ModelNet (a torus lies flat, a cone and a mug stand);
- ``canonical``: no rotation (the shape's axis along world z).
"""

_Z_TO_Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # canonical z -> world +y


def _rotation_from_draw(draw: np.ndarray, pose: str) -> np.ndarray:
    """The rotation of ``pose`` from one draw of 4 standard normals (every pose uses the same draw,
    so the pose leaves the object's other random choices unchanged). ``upright`` turns about +Y
    by ``atan2(draw[1], draw[0])``, uniform in (-pi, pi] for independent standard normals."""
    if pose == "canonical":
        return np.eye(3)
    if pose == "upright":
        angle = math.atan2(draw[1], draw[0])
        c, s = math.cos(angle), math.sin(angle)
        yaw = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        return yaw @ _Z_TO_Y
    quat = torch.from_numpy(draw)
    return quaternions_to_matrices(quat / quat.norm()).numpy()


def pattern_mask(
    pattern: str, points: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Which surface points take the secondary colour.

    Args:
        pattern: one of :data:`PATTERNS`.
        points: ``[N, 3]`` canonical-frame surface points.
        rng: the object's generator (the axis, stripe count, dot placement are drawn from it).

    Returns:
        ``(mask [N] bool, axis [3] or None, details)``: the canonical axis the stripes / split
        run along (``None`` for solid and dotted) and the drawn pattern parameters.
    """
    axis_index = int(rng.integers(0, 3))
    axis = np.eye(3)[axis_index]
    proj = points @ axis
    lo, hi = proj.min(), proj.max()
    if pattern == "solid":
        return np.zeros(len(points), dtype=bool), None, {}
    if pattern == "striped":
        count = int(rng.integers(4, 8))
        band = np.minimum(((proj - lo) / (hi - lo) * count).astype(np.int64), count - 1)
        return band % 2 == 1, axis, {"stripes": count}
    if pattern == "two_tone":
        return proj > (lo + hi) / 2, axis, {}
    if pattern == "dotted":
        count = int(rng.integers(10, 21))
        centre = points.mean(axis=0)
        size = np.linalg.norm(points - centre, axis=1).max()
        radius = float(rng.uniform(0.12, 0.18)) * size
        dots = points[rng.choice(len(points), size=min(count, len(points)), replace=False)]
        dist2 = ((points[:, None, :] - dots[None]) ** 2).sum(-1)  # [N, count]
        return dist2.min(axis=1) < radius * radius, None, {"dots": count, "dot_radius": radius / size}
    raise ConfigError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")


def make_caption(shape: str, color: str, pattern: str, secondary: str | None) -> str:
    """Template caption, e.g. ``"a blue torus with white stripes"``.

    Templates: solid ``"a {color} {noun}"``; striped ``"a {color} {noun} with {secondary} stripes"``;
    dotted ``"a {color} {noun} with {secondary} dots"``; two-tone
    ``"a two-tone {color} and {secondary} {noun}"``.
    The article becomes "an" before a vowel sound (:func:`~clip_gs.teachers.prompts.article`).
    """
    noun = SHAPE_NOUNS[_check_shape(shape)]
    if pattern == "solid":
        body = f"{color} {noun}"
    elif pattern == "striped":
        body = f"{color} {noun} with {secondary} stripes"
    elif pattern == "dotted":
        body = f"{color} {noun} with {secondary} dots"
    elif pattern == "two_tone":
        body = f"two-tone {color} and {secondary} {noun}"
    else:
        raise ConfigError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    return f"{article(body)} {body}"


def make_captions(shape: str, color: str, pattern: str, secondary: str | None) -> tuple[str, str, str]:
    """The captions of a synthetic object, from the most to the least specific: the full caption
    (:func:`make_caption`), the primary colour and class (``"a blue torus"``) and the class alone
    (``"a torus"``).

    Why three: the full caption's colour words match the object's colours, which a 3D encoder
    learns within a few steps, while its shape is what zero-shot classification needs. A
    contrastive batch can be solved by colour alone unless colours repeat; "a torus" can only be
    matched by shape. Training draws one caption per object and step (a choice of this package:
    the paper has one caption per object); evaluation uses the first, the full caption.
    """
    noun = SHAPE_NOUNS[_check_shape(shape)]
    return (
        make_caption(shape, color, pattern, secondary),
        make_caption(shape, color, "solid", None),
        f"{article(noun)} {noun}",
    )


# ---------------------------------------------------------------------------- objects
@dataclass(frozen=True, eq=False)
class SyntheticObject:
    """One labelled synthetic 3DGS object.

    Attributes:
        cloud: the Gaussians, normalised into the unit sphere.
        label: the class name (one of :data:`SHAPE_CLASSES`).
        label_index: ``SHAPE_CLASSES.index(label)``.
        color_name: primary colour, a key of :data:`PALETTE`.
        secondary_color_name: the pattern colour; ``None`` for ``solid``.
        pattern: one of :data:`PATTERNS`.
        caption: template caption naming colour(s), pattern and class (:func:`make_caption`).
        captions: ``(caption, colour + class, class)`` (:func:`make_captions`), what ``prepare`` stores.
        seed: the seed the object was made from.
        rotation: ``[3, 3]`` rotation applied to the canonical shape (world = R @ canonical).
        pattern_axis: ``[3]`` world-frame direction the stripes / two-tone split run along, or ``None``.
        params: drawn shape proportions and pattern parameters.
    """

    cloud: GaussianCloud
    label: str
    label_index: int
    color_name: str
    secondary_color_name: str | None
    pattern: str
    caption: str
    captions: tuple[str, ...]
    seed: int
    rotation: Tensor
    pattern_axis: Tensor | None
    params: dict = field(default_factory=dict)


def make_object(
    shape: str,
    seed: int,
    num_gaussians: int = 2048,
    color: str | None = None,
    pattern: str | None = None,
    pose: str = "random",
    opacity: float = 0.95,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    thickness_ratio: float = DEFAULT_THICKNESS_RATIO,
) -> SyntheticObject:
    """Build one synthetic object; a deterministic function of all arguments.

    Args:
        shape: one of :data:`SHAPE_CLASSES`.
        seed: seed of every random choice (proportions, colours, pattern, pose, sampling). The
            class index is mixed in, so the same seed gives unrelated draws for different classes.
        num_gaussians: N.
        color: primary colour name from :data:`PALETTE`; drawn from the seed when ``None``.
        pattern: one of :data:`PATTERNS`; drawn from the seed when ``None``.
        pose: one of :data:`POSES` (default ``"random"``: a uniformly random rotation). The
            rotation is drawn the same way for every pose, so the pose changes nothing else.
        opacity, scale_factor, thickness_ratio: disk parameters, as in
            :func:`clip_gs.gaussians.mesh.mesh_to_gaussians`.

    Raises:
        ConfigError: unknown shape (the message lists the classes), colour or pattern, or bad N.
    """
    label_index = SHAPE_CLASSES.index(_check_shape(shape))
    if color is not None and color not in PALETTE:
        raise ConfigError(f"unknown colour {color!r}; choose one of {', '.join(PALETTE)}")
    if pattern is not None and pattern not in PATTERNS:
        raise ConfigError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    if pose not in POSES:
        raise ConfigError(f"unknown pose {pose!r}; choose one of {', '.join(POSES)}")
    if isinstance(num_gaussians, bool) or not isinstance(num_gaussians, int) or num_gaussians <= 0:
        raise ConfigError(f"num_gaussians must be a positive int, got {num_gaussians!r}")

    rng = np.random.default_rng([seed, label_index])
    names = list(PALETTE)
    # draw every choice unconditionally so that fixing one leaves the others as they were
    drawn_color = names[int(rng.integers(len(names)))]
    drawn_pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    secondary_offset = int(rng.integers(1, len(names)))
    color = color or drawn_color
    pattern = pattern or drawn_pattern
    secondary = names[(names.index(color) + secondary_offset) % len(names)] if pattern != "solid" else None
    rotation = _rotation_from_draw(rng.standard_normal(4), pose)

    triangles, params = shape_triangles(shape, rng)
    face, _, points = sample_triangles(triangles, num_gaussians, rng)
    normals = face_normals(triangles[face])
    mask, axis, details = pattern_mask(pattern, points, rng)
    rgb = np.where(mask[:, None], PALETTE[secondary] if secondary else 0.0, np.asarray(PALETTE[color]))

    area = float(triangle_areas(triangles).sum())
    cloud = surface_disks(
        points @ rotation.T,
        normals @ rotation.T,
        rgb,
        radius=disk_radius(area, num_gaussians, scale_factor),
        thickness_ratio=thickness_ratio,
        opacity=opacity,
        source=f"synthetic:{shape}:{seed}",
    ).normalized()
    return SyntheticObject(
        cloud=cloud,
        label=shape,
        label_index=label_index,
        color_name=color,
        secondary_color_name=secondary,
        pattern=pattern,
        caption=make_caption(shape, color, pattern, secondary),
        captions=make_captions(shape, color, pattern, secondary),
        seed=seed,
        rotation=torch.as_tensor(rotation, dtype=torch.float32),
        pattern_axis=None if axis is None else torch.as_tensor(rotation @ axis, dtype=torch.float32),
        params={**params, **details},
    )


def object_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` of a dataset with ``seed`` (independent streams per item)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


class SyntheticGaussianDataset(Dataset):
    """A map-style dataset of synthetic objects, balanced over classes.

    Item ``i`` has class ``classes[i % len(classes)]`` and is ``make_object(class, object_seed(seed, i))``:
    a deterministic function of ``(seed, i)``, independent of the order items are read in.

    Args:
        num_objects: dataset length.
        num_gaussians: Gaussians per object.
        seed: dataset seed.
        classes: subset of :data:`SHAPE_CLASSES` (default: all), in the order items cycle through.
            Labels (``label_index``) always index the full :data:`SHAPE_CLASSES`.
        **object_kwargs: forwarded to :func:`make_object` (``color``, ``pattern``, ``pose``, ...).
    """

    def __init__(
        self,
        num_objects: int,
        num_gaussians: int = 2048,
        seed: int = 0,
        classes: Sequence[str] | None = None,
        **object_kwargs,
    ) -> None:
        if num_objects <= 0:
            raise ConfigError(f"num_objects must be positive, got {num_objects}")
        self.classes = tuple(SHAPE_CLASSES if classes is None else classes)
        if not self.classes:
            raise ConfigError("classes must not be empty")
        for name in self.classes:
            _check_shape(name)
        self.num_objects = num_objects
        self.num_gaussians = num_gaussians
        self.seed = seed
        self.object_kwargs = object_kwargs

    def __len__(self) -> int:
        return self.num_objects

    def label_of(self, index: int) -> str:
        """The class of item ``index`` without building it."""
        return self.classes[index % len(self.classes)]

    def __getitem__(self, index: int) -> SyntheticObject:
        if not -self.num_objects <= index < self.num_objects:
            raise IndexError(f"index {index} out of range for {self.num_objects} synthetic objects")
        index %= self.num_objects
        return make_object(
            self.label_of(index),
            object_seed(self.seed, index),
            num_gaussians=self.num_gaussians,
            **self.object_kwargs,
        )


__all__ = [
    "PALETTE",
    "PATTERNS",
    "POSES",
    "SHAPE_CLASSES",
    "SHAPE_NOUNS",
    "SyntheticGaussianDataset",
    "SyntheticObject",
    "make_caption",
    "make_captions",
    "make_object",
    "object_seed",
    "pattern_mask",
]
