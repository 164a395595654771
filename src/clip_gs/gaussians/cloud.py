"""`GaussianCloud`: the one typed container for 3D Gaussian Splatting objects.

This module is the single place where the attribute layout of a Gaussian lives. Every other
module asks a :class:`GaussianCloud` for named views (``rgb``, ``opacity``, ``scales``,
``rotations``, ``rotation_matrices``, ``covariances()`` ...) instead of indexing raw columns.
What the model feeds its tokenizer is the model's decision (:mod:`clip_gs.model.features`).

Storage follows the INRIA 3DGS ``.ply`` convention (pre-activation values):

============== ================== ==========================================================
field          shape              meaning
============== ================== ==========================================================
means          ``[*B, N, 3]``     Gaussian centres
sh             ``[*B, N, K, 3]``  SH coefficients, K = (degree+1)^2, DC first, RGB last axis
opacity_logits ``[*B, N]``        opacity before the sigmoid
log_scales     ``[*B, N, 3]``     scale before the exp
quats          ``[*B, N, 4]``     rotation quaternion **wxyz**, unnormalised as stored
============== ================== ==========================================================

``*B`` is an optional batch shape: :meth:`GaussianCloud.stack` builds a batched cloud from
objects of equal Gaussian count, and every view and operation works on batched clouds per object.
There is no padding, so no batched operation can mix padding into an object's statistics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from clip_gs.errors import ConfigError, GaussianFormatError

SH_C0 = 0.28209479177387814
"""Zeroth-order real spherical-harmonic constant, 1 / (2 sqrt(pi))."""

MAX_SH_DEGREE = 3


def sh_coeff_count(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (DC included)."""
    return (degree + 1) ** 2


def canonical_quaternions(quats: Tensor) -> Tensor:
    """Normalise quaternions and fix their sign so q and -q map to the same value.

    The sign is chosen so that the first non-zero component in w, x, y, z order is positive
    (w >= 0 in the common case, with ties at w == 0 broken by x, then y, then z).

    Args:
        quats: ``[..., 4]`` wxyz, any non-zero norm.

    Returns:
        ``[..., 4]`` unit quaternions, wxyz.
    """
    # divide by the largest component first so tiny (but non-zero) quaternions do not underflow
    q = quats / quats.abs().amax(dim=-1, keepdim=True)
    q = q / q.norm(dim=-1, keepdim=True)
    sign = torch.zeros_like(q[..., 0])
    for i in range(3, -1, -1):  # later components only decide when earlier ones are zero
        comp = q[..., i]
        sign = torch.where(comp != 0, torch.sign(comp), sign)
    return q * sign.unsqueeze(-1)


def quaternions_to_matrices(quats: Tensor) -> Tensor:
    """Rotation matrices from unit quaternions.

    Args:
        quats: ``[..., 4]`` unit quaternions, wxyz.

    Returns:
        ``[..., 3, 3]`` rotation matrices R such that ``R @ v`` rotates column vector v.
    """
    w, x, y, z = quats.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


@dataclass(frozen=True, eq=False)
class GaussianCloud:
    """A 3DGS object (or a batch of them) in raw INRIA storage convention.

    Construction validates shapes, dtypes and finiteness and raises
    :class:`~clip_gs.errors.GaussianFormatError` naming ``source`` on any violation. Instances are
    immutable; every operation returns a new cloud.

    Args:
        means: ``[*B, N, 3]`` centres.
        sh: ``[*B, N, K, 3]`` SH coefficients, ``K = (degree + 1) ** 2`` with degree 0..3.
        opacity_logits: ``[*B, N]`` opacities before the sigmoid.
        log_scales: ``[*B, N, 3]`` scales before the exp.
        quats: ``[*B, N, 4]`` rotations, wxyz, any non-zero norm.
        source: where the data came from (file name), used in error messages and ``repr``.
    """

    means: Tensor
    sh: Tensor
    opacity_logits: Tensor
    log_scales: Tensor
    quats: Tensor
    source: str | None = None

    _TENSOR_FIELDS: ClassVar[tuple[str, ...]] = ("means", "sh", "opacity_logits", "log_scales", "quats")

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        for name in self._TENSOR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise GaussianFormatError(f"{where}{name} must be a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise GaussianFormatError(f"{where}{name} must be floating point, got {value.dtype}")
        if self.means.ndim < 2 or self.means.shape[-1] != 3:
            raise GaussianFormatError(f"{where}means must have shape [*B, N, 3], got {list(self.means.shape)}")
        *batch, n = self.means.shape[:-1]
        lead = [*batch, n]
        expected = {
            "opacity_logits": lead,
            "log_scales": [*lead, 3],
            "quats": [*lead, 4],
        }
        for name, shape in expected.items():
            got = list(getattr(self, name).shape)
            if got != shape:
                raise GaussianFormatError(f"{where}{name} must have shape {shape} (N={n}), got {got}")
        sh_shape = list(self.sh.shape)
        if self.sh.ndim != len(lead) + 2 or sh_shape[: len(lead)] != lead or sh_shape[-1] != 3:
            raise GaussianFormatError(f"{where}sh must have shape {[*lead, 'K', 3]}, got {sh_shape}")
        k = sh_shape[-2]
        if k not in {sh_coeff_count(d) for d in range(MAX_SH_DEGREE + 1)}:
            raise GaussianFormatError(
                f"{where}sh has {k} coefficients per channel; expected (degree+1)^2 for degree 0..3 (1, 4, 9 or 16)"
            )
        if n == 0:
            raise GaussianFormatError(f"{where}the cloud is empty (0 Gaussians)")
        devices = {getattr(self, name).device for name in self._TENSOR_FIELDS}
        if len(devices) > 1:
            raise GaussianFormatError(f"{where}all tensors must be on one device, got {sorted(map(str, devices))}")
        for name in self._TENSOR_FIELDS:
            bad = ~torch.isfinite(getattr(self, name))
            if bool(bad.any()):
                count = int(bad.sum())
                raise GaussianFormatError(f"{where}{name} has {count} non-finite value(s) (NaN or Inf)")
        zero = self.quats.abs().amax(dim=-1) == 0
        if bool(zero.any()):
            raise GaussianFormatError(f"{where}{int(zero.sum())} rotation quaternion(s) are all zero")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_activated(
        cls,
        means: Tensor,
        rgb: Tensor,
        opacity: Tensor,
        scales: Tensor,
        quats: Tensor,
        sh_degree: int = 0,
        source: str | None = None,
    ) -> GaussianCloud:
        """Build a cloud from activated values (the inverse of the named views).

        Args:
            means: ``[*B, N, 3]``.
            rgb: ``[*B, N, 3]`` base colour; stored as SH DC ``(rgb - 0.5) / SH_C0``.
            opacity: ``[*B, N]`` strictly inside (0, 1).
            scales: ``[*B, N, 3]`` strictly positive.
            quats: ``[*B, N, 4]`` wxyz.
            sh_degree: degree of the stored SH; higher-order coefficients are zero.
        """
        where = f"{source}: " if source else ""
        if bool(((opacity <= 0) | (opacity >= 1)).any()):
            raise GaussianFormatError(f"{where}opacity must lie strictly inside (0, 1)")
        if bool((scales <= 0).any()):
            raise GaussianFormatError(f"{where}scales must be strictly positive")
        if not 0 <= sh_degree <= MAX_SH_DEGREE:
            raise GaussianFormatError(f"{where}sh_degree must be 0..{MAX_SH_DEGREE}, got {sh_degree}")
        sh = rgb.new_zeros(*rgb.shape[:-1], sh_coeff_count(sh_degree), 3)
        sh[..., 0, :] = (rgb - 0.5) / SH_C0
        return cls(
            means=means,
            sh=sh,
            opacity_logits=torch.logit(opacity),
            log_scales=torch.log(scales),
            quats=quats,
            source=source,
        )

    # ------------------------------------------------------------------ basic facts
    @property
    def num_gaussians(self) -> int:
        """N, the number of Gaussians (per batch element)."""
        return self.means.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        """The leading batch shape ``*B`` (empty for a single object)."""
        return self.means.shape[:-2]

    @property
    def sh_degree(self) -> int:
        return math.isqrt(self.sh.shape[-2]) - 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def __len__(self) -> int:
        return self.num_gaussians

    def __repr__(self) -> str:
        batch = f", batch_shape={tuple(self.batch_shape)}" if self.batch_shape else ""
        source = f", source={self.source!r}" if self.source else ""
        return (
            f"GaussianCloud(num_gaussians={self.num_gaussians:,}, sh_degree={self.sh_degree}{batch}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, device={self.device}{source})"
        )

    # ------------------------------------------------------------------ activated views
    @property
    def sh_dc(self) -> Tensor:
        """``[*B, N, 3]`` the DC SH coefficient (``f_dc`` in the ply)."""
        return self.sh[..., 0, :]

    @property
    def rgb(self) -> Tensor:
        """``[*B, N, 3]`` base colour in [0, 1]: ``clamp(0.5 + SH_C0 * f_dc, 0, 1)``."""
        return (0.5 + SH_C0 * self.sh_dc).clamp(0.0, 1.0)

    @property
    def opacity(self) -> Tensor:
        """``[*B, N]`` opacity in (0, 1): sigmoid of the stored logit."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def scales(self) -> Tensor:
        """``[*B, N, 3]`` positive scales: exp of the stored log-scales."""
        return torch.exp(self.log_scales)

    @property
    def rotations(self) -> Tensor:
        """``[*B, N, 4]`` unit quaternions, wxyz, sign-canonical (see :func:`canonical_quaternions`)."""
        return canonical_quaternions(self.quats)

    @property
    def rotation_matrices(self) -> Tensor:
        """``[*B, N, 3, 3]`` rotation matrices (identical for q and -q)."""
        return quaternions_to_matrices(self.rotations)

    def covariances(self) -> Tensor:
        """``[*B, N, 3, 3]`` 3D covariances ``R S S^T R^T`` with ``S = diag(scales)``."""
        m = self.rotation_matrices * self.scales.unsqueeze(-2)
        return m @ m.transpose(-1, -2)

    # ------------------------------------------------------------------ operations
    def replace(self, **changes) -> GaussianCloud:
        """A copy with some fields replaced (validated like a new cloud)."""
        return dataclasses.replace(self, **changes)

    def _map(self, fn) -> GaussianCloud:
        return self.replace(**{name: fn(getattr(self, name)) for name in self._TENSOR_FIELDS})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GaussianCloud:
        """Move all tensors to ``device`` and / or cast them to the floating ``dtype``; the cloud
        itself when both already match (no copy, no re-validation)."""
        same_device = device is None or torch.device(device) == self.device
        if same_device and (dtype is None or dtype == self.dtype):
            return self
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def index(self, indices: Tensor) -> GaussianCloud:
        """Select Gaussians of an unbatched cloud by ``indices: [M]`` (long) or a bool mask ``[N]``."""
        if self.batch_shape:
            raise GaussianFormatError("index() works on an unbatched cloud; index each batch element")
        return self._map(lambda t: t[indices])

    def normalized(self) -> GaussianCloud:
        """Centre on the mean position and scale into the unit sphere (Uni3D's ``pc_norm``).

        Positions become ``(x - mean) / r`` with ``r`` the largest distance from the mean;
        log-scales shift by ``-log(r)`` so the Gaussians keep their size relative to the object.
        Works per object on batched clouds. Normalising twice changes nothing (up to rounding).

        Raises:
            GaussianFormatError: if all Gaussians sit at one point (r == 0).
        """
        centre = self.means.mean(dim=-2, keepdim=True)
        centred = self.means - centre
        radius = centred.norm(dim=-1).amax(dim=-1, keepdim=True)  # [*B, 1]
        if bool((radius == 0).any()):
            raise GaussianFormatError(
                f"{self.source or 'cloud'}: all Gaussians sit at one point; cannot normalise to the unit sphere"
            )
        return self.replace(
            means=centred / radius.unsqueeze(-1),
            log_scales=self.log_scales - torch.log(radius).unsqueeze(-1),
        )

    def resample(self, num_gaussians: int, seed: int = 0) -> GaussianCloud:
        """Sample exactly ``num_gaussians`` Gaussians, keeping the input order.

        - N == num_gaussians: the cloud is returned unchanged (no hidden shuffle).
        - N > num_gaussians: a seeded random subset without replacement, in input order.
        - N < num_gaussians: every Gaussian plus ``num_gaussians - N`` seeded duplicates, in input
          order (duplicates sit next to their original).

        Args:
            num_gaussians: target count, > 0.
            seed: seed of the ``torch.Generator`` that makes the choice.
        """
        if self.batch_shape:
            raise GaussianFormatError("resample() works on an unbatched cloud; resample before stacking")
        if num_gaussians <= 0:
            raise ConfigError(f"num_gaussians must be positive, got {num_gaussians}")
        n = self.num_gaussians
        if n == num_gaussians:
            return self
        generator = torch.Generator().manual_seed(seed)
        if n > num_gaussians:
            chosen = torch.randperm(n, generator=generator)[:num_gaussians]
        else:
            extra = torch.randint(0, n, (num_gaussians - n,), generator=generator)
            chosen = torch.cat([torch.arange(n), extra])
        indices = torch.sort(chosen).values.to(self.device)
        return self.index(indices)

    @classmethod
    def stack(cls, clouds: Sequence[GaussianCloud]) -> GaussianCloud:
        """Stack unbatched clouds of equal Gaussian count into one batched cloud ``[B, N, ...]``.

        Clouds of different counts are refused rather than padded: a padded batch would let
        padding enter per-object statistics (``normalized()`` takes the centroid and radius over
        all N). Bring them to a common count first, e.g. ``[c.resample(n, seed) for c in clouds]``.
        All clouds must share the SH degree; they are moved to the first cloud's device and dtype.
        The batch's ``source`` names every input.

        Raises:
            GaussianFormatError: no clouds, batched inputs, unequal counts or SH degrees; the
                message names the offending sources.
        """
        if not clouds:
            raise GaussianFormatError("stack() needs at least one cloud")
        if any(c.batch_shape for c in clouds):
            raise GaussianFormatError("stack() takes unbatched clouds")
        degrees = {c.sh_degree for c in clouds}
        if len(degrees) > 1:
            raise GaussianFormatError(f"cannot stack clouds of different SH degrees {sorted(degrees)}")
        counts = {c.num_gaussians for c in clouds}
        if len(counts) > 1:
            detail = ", ".join(f"{c.source or f'#{i}'}: {c.num_gaussians}" for i, c in enumerate(clouds))
            raise GaussianFormatError(
                f"cannot stack clouds of different Gaussian counts ({detail}); "
                "resample them to one count first (GaussianCloud.resample)"
            )
        first = clouds[0]
        fields = {
            name: torch.stack([getattr(c, name).to(device=first.device, dtype=first.dtype) for c in clouds])
            for name in cls._TENSOR_FIELDS
        }
        sources = {c.source for c in clouds}
        source = first.source if len(sources) == 1 else ", ".join(str(s) for s in sorted(sources, key=str))
        return cls(**fields, source=source)

    def unbind(self) -> list[GaussianCloud]:
        """Split a cloud with batch shape ``[B]`` into B unbatched clouds."""
        if len(self.batch_shape) != 1:
            raise GaussianFormatError(f"unbind() needs batch shape [B], got {list(self.batch_shape)}")
        parts = {name: getattr(self, name).unbind(0) for name in self._TENSOR_FIELDS}
        return [
            GaussianCloud(**{name: parts[name][i] for name in self._TENSOR_FIELDS}, source=self.source)
            for i in range(self.batch_shape[0])
        ]
