"""The demo's settings: one dataclass, filled from the command line or from environment variables.

Environment variables (what a Hugging Face Space sets in its settings page) name each field as
``CLIP_GS_DEMO_<FIELD>`` (``CLIP_GS_DEMO_MODEL``, ``CLIP_GS_DEMO_MAX_FILE_MB``, ...);
:meth:`DemoSettings.from_env` reads them, and the command line overrides them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from clip_gs.errors import ConfigError

ENV_PREFIX = "CLIP_GS_DEMO_"
"""Prefix of the environment variables :meth:`DemoSettings.from_env` reads."""

MAX_FILE_MB = 100.0
"""Default upload limit in MB (10**6 bytes): a 400K-Gaussian INRIA capture (about 100 MB) still
fits the 16 GB of a free Space's CPU machine, with room for several visitors."""


def default_cache_dir() -> Path:
    """``cache_root() / "demo"``: the demo's folder under clip-gs's one cache root
    (:func:`~clip_gs.storage.cache_root`; ``CLIP_GS_CACHE`` overrides it)."""
    from clip_gs.storage import cache_root

    return cache_root() / "demo"


_TEXT_FIELDS = ("model", "teacher", "cache_dir", "labels", "label_set")
"""Fields read from their variables as text (their default is None, so their type cannot tell)."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo serves and how.

    Attributes:
        model: the model shown first: an exported model folder or a Hub repo id (``None``: none;
            the page then says how to give one).
        teacher: a teacher spec to use instead of the one ``model`` records (as ``--teacher`` of
            ``clip-gs classify``; it must be that same teacher); other models a visitor loads use
            their own records.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ...
        up: the up axis of uploads that declare none (``auto``, ``+y``, ``-y``, ``+z``, ``-z``; see
            :func:`~clip_gs.gaussians.assets.load_asset`): how they are classified and previewed.
        host / port: where the server listens (127.0.0.1 by default: only this machine; a Space
            sets ``0.0.0.0``); ``port`` 0 lets Gradio pick a free one from 7860 up.
        max_file_mb: uploads larger than this (MB) are refused with a message.
        preview_size: width and height of each of the four preview views, in pixels.
        preview_gaussians: most Gaussians the CPU rasterizer previews (larger uploads are thinned,
            see :func:`~clip_gs.demo.service.preview_cloud`); gsplat on CUDA renders them all.
        k: labels shown by the zero-shot classifier and hits by a search.
        max_models: most models kept loaded at once; loading one more unloads the one used least
            recently (visitors can load any Hub repo, and a free Space has little memory).
        cache_dir: where the gallery, its index, the example files and computed label embeddings
            are written on first start (reused later); None: :func:`default_cache_dir`.
        seed: seed of the gallery's objects, of mesh sampling and of the model's resampling.
        labels: the configured model's default label set as comma-separated names (as ``--labels``).
        label_set: the configured model's default label set (as ``--label-set``): a registered set
            name or a label-list file, encoded once by the model's teacher on first start and cached
            as a label-embedding file, or a label-embedding file itself; classification over its
            names then needs no text tower. At most one of ``labels`` and ``label_set``.
    """

    model: str | None = None
    teacher: str | None = None
    device: str = "auto"
    up: str = "auto"
    host: str = "127.0.0.1"
    port: int = 0
    max_file_mb: float = MAX_FILE_MB
    preview_size: int = 160
    preview_gaussians: int = 20_000
    k: int = 5
    max_models: int = 2
    cache_dir: Path | None = None
    seed: int = 0
    labels: str | None = None
    label_set: str | None = None

    def __post_init__(self) -> None:
        from clip_gs.gaussians.frames import check_up

        check_up(self.up)
        if not self.max_file_mb > 0:
            raise ConfigError(f"max_file_mb must be > 0, got {self.max_file_mb}")
        for name in ("preview_size", "preview_gaussians", "k", "max_models"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port!r}")
        if self.labels and self.label_set:
            raise ConfigError(f"give the demo's labels ({self.labels[:40]!r}) or a label set ({self.label_set!r}), "
                              "not both")  # fmt: skip

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)

    @property
    def cache(self) -> Path:
        """The cache folder (:attr:`cache_dir` or :func:`default_cache_dir`)."""
        return Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> DemoSettings:
        """Settings from ``CLIP_GS_DEMO_*`` variables, then ``overrides`` (those that are not None).

        Raises:
            ConfigError: a variable whose value is not of its field's type.
        """
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            text = environ.get(ENV_PREFIX + f.name.upper())
            if text is None or text == "":
                continue
            kind = type(getattr(cls(), f.name)) if f.name not in _TEXT_FIELDS else str
            try:
                values[f.name] = kind(text)
            except ValueError as exc:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()}={text!r}: not a valid {kind.__name__}") from exc
        values |= {k: v for k, v in overrides.items() if v is not None}
        return replace(cls(), **values)


__all__ = ["ENV_PREFIX", "MAX_FILE_MB", "DemoSettings", "default_cache_dir"]
