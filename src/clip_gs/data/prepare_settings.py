"""What ``prepare`` does with each object: :class:`PrepareSettings` (recorded in the manifest and
the work folder's settings record) and the split an object goes to (:func:`split_of`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from clip_gs.errors import ConfigError

CAPTION_TEMPLATE = "a 3D model of a {}."
"""Caption of an object with a label but no caption (labels from folder names)."""

MESH_GAUSSIANS = 10_000
"""Gaussians sampled on each mesh (the paper's objects have 10K-20K; SH degree 0)."""

GAUSSIAN_KINDS = ("surface", "fitted")
"""What meshes become (:attr:`PrepareSettings.gaussians`)."""


@dataclass(frozen=True)
class PrepareSettings:
    """What ``prepare`` does with each object (recorded in the manifest).

    Attributes:
        views: orbit views rendered per object (default 8; the paper renders 36).
        elevation_deg: camera elevation of the views; azimuths are regular from 0.
        image_size: view size in pixels; None takes the teacher's ``image_size``.
        background: RGB in [0, 1] behind the object (white by default, as the offline teacher saw).
        up: world up axis of file inputs that declare none; ``"auto"`` takes
            :func:`~clip_gs.gaussians.frames.default_up_axis` per file. Every object is stored in the model
            frame (+Y up, :func:`~clip_gs.gaussians.assets.load_asset`), its cameras moved with it.
        mesh_gaussians: Gaussians sampled on meshes (:data:`MESH_GAUSSIANS`).
        synthetic_gaussians: Gaussians per synthetic object.
        synthetic_pose: pose of synthetic objects (:data:`clip_gs.data.synthetic.POSES`): ``random``
            (any rotation) or ``upright`` (standing on +Y, turned about it, as real assets stand).
        val_fraction / test_fraction: share of objects in each split, decided by a seeded hash of
            the id (stable when objects are added), unless the captions file gives a split.
        seed: seed of the split hash, the mesh sampling and the synthetic set.
        caption_template: caption of labelled objects without one (:data:`CAPTION_TEMPLATE`).
        gaussians: what a **mesh** becomes: ``"surface"`` (surface samples, fast) or ``"fitted"``
            (the paper's way: :func:`~clip_gs.data.fitted.fit_mesh` optimises at most
            ``mesh_gaussians`` Gaussians against Blender renders, and the teacher's views are
            Blender renders of the mesh, not of the Gaussians). 3DGS files and synthetic objects
            are Gaussians already and are stored as they are either way.
        fit_iterations, fit_views, fit_size: the fit's schedule, training views and view size
            (the paper: 5,000, 36 and 512).
        render_samples: Cycles samples per pixel of the fit's Blender views (the paper does not say;
            :data:`~clip_gs.render.blender.DEFAULT_SAMPLES`, chosen by measurement).
        max_gaussians: cap on the stored Gaussians of any object (None: none); a larger cloud is
            resampled to it by :func:`cap_gaussians` (seeded by ``seed``; the record keeps the
            original count), so that a multi-million-Gaussian scene does not become a record of
            hundreds of MB.
    """

    views: int = 8
    elevation_deg: float = 20.0
    image_size: int | None = None
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    up: str = "auto"
    mesh_gaussians: int = MESH_GAUSSIANS
    synthetic_gaussians: int = 2048
    synthetic_pose: str = "random"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    caption_template: str = CAPTION_TEMPLATE
    max_gaussians: int | None = None
    gaussians: str = "surface"
    fit_iterations: int = 1000
    fit_views: int = 36
    fit_size: int = 128
    render_samples: int = 16

    def __post_init__(self) -> None:
        if self.gaussians not in GAUSSIAN_KINDS:
            raise ConfigError(f"gaussians must be one of {', '.join(GAUSSIAN_KINDS)}, got {self.gaussians!r}")
        if self.render_samples < 1:
            raise ConfigError(f"render_samples must be >= 1, got {self.render_samples}")
        if self.views < 1:
            raise ConfigError(f"views must be >= 1, got {self.views}")
        if self.max_gaussians is not None and self.max_gaussians < 1:
            raise ConfigError(f"max_gaussians must be >= 1 or None, got {self.max_gaussians}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ConfigError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if "{}" not in self.caption_template:
            raise ConfigError(f"caption_template must contain '{{}}', got {self.caption_template!r}")
        from clip_gs.data.synthetic import POSES

        if self.synthetic_pose not in POSES:
            raise ConfigError(f"synthetic_pose must be one of {', '.join(POSES)}, got {self.synthetic_pose!r}")


def split_of(item_id: str, settings: PrepareSettings) -> str:
    """The split of ``item_id``: a seeded hash mapped to [0, 1), against the split fractions."""
    digest = hashlib.sha256(f"{settings.seed}:{item_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "little") / 2**64
    if u < settings.test_fraction:
        return "test"
    if u < settings.test_fraction + settings.val_fraction:
        return "val"
    return "train"


__all__ = ["CAPTION_TEMPLATE", "GAUSSIAN_KINDS", "MESH_GAUSSIANS", "PrepareSettings", "split_of"]
