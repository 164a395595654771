"""The model's input encoding: which per-Gaussian channels the tokenizer sees, and the one
preprocessing function shared by ``encode``, the data module and evaluation.

``GaussianCloud`` holds the physical attributes (and their activated views); turning them into
the 19 channels the tokenizer reads is a decision of the model, made here and nowhere else:

========== ===== ===========================================================================
field      width value
========== ===== ===========================================================================
xyz        3     Gaussian centre (of the normalised object)
rgb        3     base colour ``clamp(0.5 + C0 f_dc, 0, 1)``
opacity    1     ``sigmoid(opacity_logit)``
scale      3     ``sigmoid(log_scale)`` (the paper) or ``exp(log_scale)``, per ``config.scale_activation``
rotation   9     row-major rotation matrix of the sign-canonical quaternion (q and -q are identical)
========== ===== ===========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.gaussians import GaussianCloud
from clip_gs.model.config import CLIPGSConfig


@dataclass(frozen=True)
class FeatureLayout:
    """Named channel slices of the per-Gaussian model input.

    The model reads its inputs through this layout (``FEATURE_LAYOUT["xyz"]``), never through
    literal column indices.
    """

    fields: tuple[tuple[str, int], ...]

    @property
    def num_channels(self) -> int:
        return sum(width for _, width in self.fields)

    def __getitem__(self, name: str) -> slice:
        start = 0
        for field, width in self.fields:
            if field == name:
                return slice(start, start + width)
            start += width
        raise KeyError(f"no feature field {name!r}; fields are {[f for f, _ in self.fields]}")

    def names(self) -> list[str]:
        return [name for name, _ in self.fields]


FEATURE_LAYOUT = FeatureLayout((("xyz", 3), ("rgb", 3), ("opacity", 1), ("scale", 3), ("rotation", 9)))
"""Channels of :func:`gaussian_features`: 3 + 3 + 1 + 3 + 9 = 19."""

SCALE_ACTIVATIONS = ("sigmoid", "exp")


def gaussian_features(cloud: GaussianCloud, scale_activation: str = "sigmoid") -> Tensor:
    """Per-Gaussian model input of ``cloud`` in :data:`FEATURE_LAYOUT` order.

    Args:
        cloud: ``[*B, N]`` Gaussians (usually normalised, see :func:`preprocess_cloud`).
        scale_activation: ``"sigmoid"`` (the paper: sigmoid of the stored log-scale, i.e.
            ``s / (1 + s)``) or ``"exp"`` (the scale itself).

    Returns:
        ``[*B, N, 19]`` in the cloud's dtype.

    Raises:
        ConfigError: an unknown ``scale_activation``.
    """
    if scale_activation == "sigmoid":
        scale = torch.sigmoid(cloud.log_scales)
    elif scale_activation == "exp":
        scale = cloud.scales
    else:
        raise ConfigError(f"scale_activation must be one of {SCALE_ACTIVATIONS}, got {scale_activation!r}")
    parts = {
        "xyz": cloud.means,
        "rgb": cloud.rgb,
        "opacity": cloud.opacity.unsqueeze(-1),
        "scale": scale,
        "rotation": cloud.rotation_matrices.flatten(-2),
    }
    return torch.cat([parts[name] for name in FEATURE_LAYOUT.names()], dim=-1)


def preprocess(
    cloud: GaussianCloud,
    num_gaussians: int,
    scale_activation: str = "sigmoid",
    seed: int = 0,
    transform: Callable[[GaussianCloud, int], GaussianCloud] | None = None,
) -> Tensor:
    """One object -> the encoder input ``[num_gaussians, 19]`` float32.

    The only preprocessing of the package: ``encode``, the data module and evaluation all call
    it (through :func:`preprocess_cloud` where a model config is at hand), so training and
    inference cannot preprocess differently. Steps: resample to ``num_gaussians`` (seeded, input
    order kept, unchanged when the count already matches), normalise to the unit sphere (Uni3D's
    ``pc_norm``), optionally augment (``transform(cloud, seed)``, e.g. a
    :class:`~clip_gs.data.transforms.Compose`: after normalising, so augmentations act about the
    centre of a unit object and scaling or translation is not undone, as Uni3D augments after
    ``pc_norm``), :func:`gaussian_features`.

    Raises:
        GaussianFormatError: a batched cloud (preprocess each object), or a degenerate one.
    """
    if cloud.batch_shape:
        raise GaussianFormatError(
            f"{cloud.source or 'cloud'}: preprocess_cloud takes one object; unbind() a batched cloud first"
        )
    sampled = cloud.resample(num_gaussians, seed=seed).to(dtype=torch.float32).normalized()
    if transform is not None:
        sampled = transform(sampled, seed)
    return gaussian_features(sampled, scale_activation)


def preprocess_cloud(cloud: GaussianCloud, config: CLIPGSConfig, seed: int = 0) -> Tensor:
    """:func:`preprocess` with ``config.num_gaussians`` and ``config.scale_activation``."""
    return preprocess(cloud, config.num_gaussians, config.scale_activation, seed)


__all__ = [
    "FEATURE_LAYOUT",
    "SCALE_ACTIVATIONS",
    "FeatureLayout",
    "gaussian_features",
    "preprocess",
    "preprocess_cloud",
]
