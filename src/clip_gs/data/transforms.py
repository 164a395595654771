"""Composable, seeded augmentations of 3DGS objects (:class:`~clip_gs.gaussians.GaussianCloud`).

Every transform is a plain callable ``transform(cloud, seed) -> cloud`` with no hidden state and
no global RNG: the same ``(cloud, seed)`` always gives the same output, on any device (random
parameters are drawn on the CPU in float64 from a ``torch.Generator`` seeded with ``seed``, then
cast to the cloud's device and dtype). Constructor arguments are plain floats / ints / strings,
so they map one-to-one onto config fields.

Seeds (all derived with ``numpy.random.SeedSequence``, 63-bit results, well mixed, and pure
functions of their integer inputs, so a resumed run repeats exactly):

- :func:`sample_seed` ``(base_seed, epoch, index)``: the seed of one training sample.
- :func:`element_seed` ``(seed, b)``: a batched cloud (batch shape ``[B]``, or any ``*B``
  flattened row-major) is transformed element by element, element ``b`` with
  ``element_seed(seed, b)``. So ``transform(batch, seed)`` equals stacking
  ``transform(batch.unbind()[b], element_seed(seed, b))``: each element gets its own parameters.
- :class:`Compose` runs step ``i`` with ``step_seed(seed, i)``.

Geometric conventions: rotations and scaling act about the world origin (apply them to
normalised clouds, whose origin is the object's centre); +Y is up, as in
:func:`~clip_gs.render.orbit_cameras`. A rotation ``R`` maps means ``x -> R x``, quaternions
``q -> r q`` (Hamilton product with R's quaternion ``r``), covariances ``Sigma -> R Sigma R^T``
and rotates the SH bands so that the colour seen from direction ``d`` is the old colour seen
from ``R^T d``; rendering the rotated cloud from camera ``V`` equals rendering the original
from ``V @ [[R, 0], [0, 1]]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.gaussians.cloud import SH_C0, GaussianCloud
from clip_gs.gaussians.frames import UP_AXES, rotate_cloud

# ------------------------------------------------------------------ seeds
_SEED_MAX = 2**63 - 1
_DOMAIN_SAMPLE, _DOMAIN_ELEMENT, _DOMAIN_STEP = 0x5EED_0001, 0x5EED_0002, 0x5EED_0003  # separate streams


def _check_seed_part(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _mix(domain: int, **parts: object) -> int:
    keys = [_check_seed_part(name, value) for name, value in parts.items()]
    state = np.random.SeedSequence([domain, *keys]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & _SEED_MAX


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``base_seed``.

    A pure, well-mixed function (``numpy.random.SeedSequence``) of three non-negative ints,
    returning an int in ``[0, 2**63)``: nearby inputs give unrelated seeds, and a resumed run
    draws exactly what the original run drew.
    """
    return _mix(_DOMAIN_SAMPLE, base_seed=base_seed, epoch=epoch, index=index)


def element_seed(seed: int, index: int) -> int:
    """The seed of element ``index`` (flat, row-major) of a batched cloud transformed with ``seed``."""
    return _mix(_DOMAIN_ELEMENT, seed=seed, index=index)


def step_seed(seed: int, step: int) -> int:
    """The seed :class:`Compose` gives its ``step``-th transform (0-based) when called with ``seed``."""
    return _mix(_DOMAIN_STEP, seed=seed, step=step)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(_check_seed_part("seed", seed))


def scale_cloud(cloud: GaussianCloud, factor: float | Tensor) -> GaussianCloud:
    """Scale a cloud uniformly about the origin: ``means * s``, ``log_scales + log s`` (covariances ``s^2 Sigma``).

    Args:
        factor: s > 0, a float or a 0-d tensor.
    """
    s = torch.as_tensor(factor, dtype=torch.float64)
    if not bool(s > 0):
        raise ConfigError(f"scale factor must be > 0, got {float(s)}")
    log_s = torch.log(s).to(cloud.log_scales)
    return cloud.replace(means=cloud.means * s.to(cloud.means), log_scales=cloud.log_scales + log_s)


def translate_cloud(cloud: GaussianCloud, offset: Tensor) -> GaussianCloud:
    """Move every mean by ``offset: [3]`` (covariances, colours, opacities unchanged)."""
    return cloud.replace(means=cloud.means + offset.to(cloud.means))


def color_affine(cloud: GaussianCloud, gain: Tensor, offset: Tensor) -> GaussianCloud:
    """Apply ``c -> gain * c + offset`` per RGB channel to the raw SH colour of every view direction.

    With ``c(d) = 0.5 + sum_k Y_k(d) sh_k`` (the colour the renderer clamps at 0), the result has
    ``c'(d) = gain * c(d) + offset`` exactly for every direction d: the DC coefficient becomes
    ``(gain * (0.5 + SH_C0 dc) + offset - 0.5) / SH_C0`` and the higher bands are multiplied by
    ``gain``. The ``rgb`` view (``clamp(0.5 + SH_C0 dc, 0, 1)``) therefore maps to
    ``clamp(gain * u + offset, 0, 1)`` with ``u`` the unclamped base colour.

    Args:
        gain: ``[3]`` per-channel factors; offset: ``[3]`` per-channel offsets.
    """
    gain, offset = gain.to(cloud.sh), offset.to(cloud.sh)
    dc = (gain * (0.5 + SH_C0 * cloud.sh[..., 0, :]) + offset - 0.5) / SH_C0
    rest = cloud.sh[..., 1:, :] * gain
    return cloud.replace(sh=torch.cat([dc.unsqueeze(-2), rest], dim=-2))


# ------------------------------------------------------------------ random transforms
def _check_float(owner: str, name: str, value: object, low: float, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> None:  # fmt: skip
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ConfigError(f"{owner}: {name} must lie in {interval}, got {value!r}")


class CloudTransform:
    """Base of the transforms: ``transform(cloud, seed) -> cloud``.

    Subclasses implement :meth:`apply_one` for an unbatched cloud. ``__call__`` accepts a single
    cloud (``[N, ...]``) or a batched one (``[*B, N, ...]``, every element real Gaussians, no
    padding): element ``b`` (flat, row-major) is transformed with :func:`element_seed` ``(seed, b)``
    and the results are stacked back into the batch shape.
    """

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        raise NotImplementedError

    def __call__(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        if not isinstance(cloud, GaussianCloud):
            raise GaussianFormatError(f"{type(self).__name__} needs a GaussianCloud, got {type(cloud).__name__}")
        _check_seed_part("seed", seed)
        if not cloud.batch_shape:
            return self.apply_one(cloud, seed)
        outs = [self.apply_one(element, element_seed(seed, b)) for b, element in enumerate(_elements(cloud))]
        return _stack(outs, cloud.batch_shape, cloud.source)


def _elements(cloud: GaussianCloud) -> list[GaussianCloud]:
    """The elements of a batched cloud ``[*B, N, ...]`` in flat row-major order."""
    nb = len(cloud.batch_shape)
    flat = {name: getattr(cloud, name).flatten(0, nb - 1) for name in GaussianCloud._TENSOR_FIELDS}
    count = math.prod(cloud.batch_shape)
    return [GaussianCloud(**{name: t[b] for name, t in flat.items()}, source=cloud.source) for b in range(count)]


def _stack(clouds: list[GaussianCloud], batch_shape: torch.Size, source: str | None) -> GaussianCloud:
    """Inverse of :func:`_elements` for unbatched clouds of equal N and SH degree (no padding)."""
    fields = {}
    for name in GaussianCloud._TENSOR_FIELDS:
        stacked = torch.stack([getattr(c, name) for c in clouds])
        fields[name] = stacked.reshape(*batch_shape, *stacked.shape[1:])
    return GaussianCloud(**fields, source=source)


@dataclass(frozen=True)
class RandomRotation(CloudTransform):
    """Random rigid rotation about the origin (see the module docstring for what it does to a cloud).

    Args:
        mode: ``"up"`` (default): about the world up axis by an angle uniform in
            ``[-max_angle_deg, max_angle_deg]``; ``"so3"``: uniform over all rotations (Haar
            measure: a normalised 4D Gaussian quaternion), ``max_angle_deg`` unused.
        up: the up axis for ``mode="up"``, one of ``"+y"`` (default, as ``orbit_cameras``),
            ``"-y"``, ``"+z"``, ``"-z"``.
        max_angle_deg: in [0, 180]; 180 (default) gives every angle.
    """

    mode: str = "up"
    up: str = "+y"
    max_angle_deg: float = 180.0

    def __post_init__(self) -> None:
        if self.mode not in ("up", "so3"):
            raise ConfigError(f"RandomRotation: mode must be 'up' or 'so3', got {self.mode!r}")
        if self.up not in UP_AXES:
            raise ConfigError(f"RandomRotation: up must be one of {sorted(UP_AXES)}, got {self.up!r}")
        _check_float("RandomRotation", "max_angle_deg", self.max_angle_deg, 0.0, 180.0)

    def quaternion(self, seed: int) -> Tensor:
        """``[4]`` float64 wxyz unit quaternion of the rotation drawn for ``seed`` (unbatched)."""
        gen = _generator(seed)
        if self.mode == "so3":
            q = torch.randn(4, generator=gen, dtype=torch.float64)
            return q / q.norm()
        angle = math.radians(self.max_angle_deg) * (2.0 * torch.rand((), generator=gen, dtype=torch.float64) - 1.0)
        axis = torch.tensor(UP_AXES[self.up][0], dtype=torch.float64)
        return torch.cat([torch.cos(angle / 2).reshape(1), torch.sin(angle / 2) * axis])

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        return rotate_cloud(cloud, self.quaternion(seed))


@dataclass(frozen=True)
class RandomScale(CloudTransform):
    """Uniform scaling about the origin by ``s`` log-uniform in ``[min_scale, max_scale]``.

    ``means * s``, ``log_scales + log s`` (covariances ``s^2 Sigma``); colours and opacities
    unchanged. ``min_scale == max_scale`` scales by that constant.

    Args:
        min_scale: > 0, default 0.8.
        max_scale: >= min_scale, default 1.25.
    """

    min_scale: float = 0.8
    max_scale: float = 1.25

    def __post_init__(self) -> None:
        _check_float("RandomScale", "min_scale", self.min_scale, 0.0, low_open=True)
        _check_float("RandomScale", "max_scale", self.max_scale, self.min_scale)

    def factor(self, seed: int) -> float:
        """The scale factor drawn for ``seed`` (unbatched)."""
        u = float(torch.rand((), generator=_generator(seed), dtype=torch.float64))
        low, high = math.log(self.min_scale), math.log(self.max_scale)
        return math.exp(low + u * (high - low))

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        return scale_cloud(cloud, self.factor(seed))


@dataclass(frozen=True)
class RandomTranslation(CloudTransform):
    """Move the whole cloud by an offset uniform in ``[-max_offset, max_offset]^3``.

    Args:
        max_offset: >= 0, default 0.1 (in the cloud's units; a normalised cloud has radius 1).
    """

    max_offset: float = 0.1

    def __post_init__(self) -> None:
        _check_float("RandomTranslation", "max_offset", self.max_offset, 0.0)

    def offset(self, seed: int) -> Tensor:
        """``[3]`` float64 offset drawn for ``seed`` (unbatched)."""
        return self.max_offset * (2.0 * torch.rand(3, generator=_generator(seed), dtype=torch.float64) - 1.0)

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        return translate_cloud(cloud, self.offset(seed))


@dataclass(frozen=True)
class PositionJitter(CloudTransform):
    """Add independent Gaussian noise ``N(0, sigma^2)`` to every coordinate of every mean.

    Shapes, colours, opacities and covariances are unchanged.

    Args:
        sigma: standard deviation, >= 0, default 0.005 (cloud units).
    """

    sigma: float = 0.005

    def __post_init__(self) -> None:
        _check_float("PositionJitter", "sigma", self.sigma, 0.0)

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        noise = torch.randn(cloud.means.shape, generator=_generator(seed), dtype=torch.float64)
        return cloud.replace(means=cloud.means + (self.sigma * noise).to(cloud.means))


@dataclass(frozen=True)
class ColorJitter(CloudTransform):
    """Random per-channel gain and a brightness offset, in RGB space, for the whole object.

    Draws ``gain_c`` uniform in ``[1 - gain, 1 + gain]`` for each channel c and one ``offset``
    uniform in ``[-brightness, brightness]`` shared by the three channels, then applies
    :func:`color_affine`: the raw colour of every view direction maps to
    ``gain_c * c + offset`` (DC: ``(gain_c (0.5 + SH_C0 dc) + offset - 0.5) / SH_C0``; higher SH
    bands: multiplied by ``gain_c``). Geometry and opacity are unchanged.

    Args:
        gain: in [0, 1), default 0.1.
        brightness: >= 0, default 0.05.
    """

    gain: float = 0.1
    brightness: float = 0.05

    def __post_init__(self) -> None:
        _check_float("ColorJitter", "gain", self.gain, 0.0, 1.0, high_open=True)
        _check_float("ColorJitter", "brightness", self.brightness, 0.0)

    def parameters(self, seed: int) -> tuple[Tensor, Tensor]:
        """``(gain [3], offset [3])`` float64 drawn for ``seed`` (unbatched); the offset's channels are equal."""
        u = torch.rand(4, generator=_generator(seed), dtype=torch.float64) * 2.0 - 1.0
        return 1.0 + self.gain * u[:3], (self.brightness * u[3]).expand(3)

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        return color_affine(cloud, *self.parameters(seed))


@dataclass(frozen=True)
class ColorDrop(CloudTransform):
    """With probability ``p``, the whole object's colour becomes a flat ``grey`` (SH DC set so that
    ``rgb == grey``, higher SH bands zeroed); otherwise the object is unchanged. Uni3D's training
    drops colour this way for half the samples (``rgb = 0.4`` where its loader keeps none), so the
    encoder also serves colourless sets such as ModelNet40, which Uni3D evaluates in grey 0.4.

    Args:
        p: drop probability in [0, 1], default 0.5 (Uni3D).
        grey: the flat colour in [0, 1], default 0.4 (Uni3D).
    """

    p: float = 0.5
    grey: float = 0.4

    def __post_init__(self) -> None:
        _check_float("ColorDrop", "p", self.p, 0.0, 1.0)
        _check_float("ColorDrop", "grey", self.grey, 0.0, 1.0)

    def drops(self, seed: int) -> bool:
        """Whether the sample of ``seed`` loses its colour."""
        return bool(torch.rand((), generator=_generator(seed), dtype=torch.float64) < self.p)

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        if not self.drops(seed):
            return cloud
        sh = torch.zeros_like(cloud.sh)
        sh[..., 0, :] = (self.grey - 0.5) / SH_C0
        return cloud.replace(sh=sh)


@dataclass(frozen=True)
class Resample(CloudTransform):
    """Exactly ``num_gaussians`` Gaussians via :meth:`GaussianCloud.resample` (seeded subset or
    duplicates, input order kept).

    Batched clouds are handled per element (element b resampled with its own
    :func:`element_seed`); all elements get the same count, so the result has batch shape ``*B``
    and ``N = num_gaussians``.

    Args:
        num_gaussians: > 0, default 1024.
    """

    num_gaussians: int = 1024

    def __post_init__(self) -> None:
        if not isinstance(self.num_gaussians, int) or isinstance(self.num_gaussians, bool) or self.num_gaussians <= 0:
            raise ConfigError(f"Resample: num_gaussians must be a positive int, got {self.num_gaussians!r}")

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        return cloud.resample(self.num_gaussians, seed=seed)


@dataclass(frozen=True)
class Compose(CloudTransform):
    """Apply ``transforms`` in order; step ``i`` gets :func:`step_seed` ``(seed, i)``.

    On a batched cloud the composition is applied per element (element b gets
    ``element_seed(seed, b)`` and its steps ``step_seed(element_seed(seed, b), i)``), like every
    transform.

    Args:
        transforms: a sequence of transforms (callables ``(cloud, seed) -> cloud``); stored as a tuple.
    """

    transforms: Sequence[CloudTransform] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transforms", tuple(self.transforms))
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise ConfigError(f"Compose: transform {i} is not callable ({type(t).__name__})")

    def apply_one(self, cloud: GaussianCloud, seed: int) -> GaussianCloud:
        for i, transform in enumerate(self.transforms):
            cloud = transform(cloud, step_seed(seed, i))
        return cloud


__all__ = [
    "CloudTransform",
    "ColorDrop",
    "ColorJitter",
    "Compose",
    "PositionJitter",
    "RandomRotation",
    "RandomScale",
    "RandomTranslation",
    "Resample",
    "color_affine",
    "element_seed",
    "sample_seed",
    "scale_cloud",
    "step_seed",
    "translate_cloud",
]
