"""What a 3DGS file format is to :mod:`clip_gs.gaussians.io`: :class:`GaussianFormat`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clip_gs.gaussians.cloud import GaussianCloud


@dataclass(frozen=True)
class GaussianFormat:
    """A 3DGS file format known to :func:`~clip_gs.gaussians.io.load_gaussians` /
    :func:`~clip_gs.gaussians.io.save_gaussians`.

    Attributes:
        name: short name used in messages and as ``format=`` argument (``"ply"``, ``"splat"``).
        extensions: lower-case file extensions with the dot (``(".ply",)``).
        sniff: ``head bytes -> bool``, True when the content is this format.
        read: ``(path, **options) -> GaussianCloud``; raises :class:`GaussianFormatError` on bad input.
        write: ``(cloud, path, **options) -> None`` or None when the format is read-only.
    """

    name: str
    extensions: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    read: Callable[..., GaussianCloud]
    write: Callable[..., None] | None = None


__all__ = ["GaussianFormat"]
