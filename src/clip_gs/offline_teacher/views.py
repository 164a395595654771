"""Rendered views of synthetic objects: the image side of the offline teacher's data.

One function, :func:`render_views`, turns a list of ``(shape, seed)`` object specs into
``uint8 [N, V, S, S, 3]`` images with the package's own rasterizer. Everything is a
deterministic function of the object seeds (cameras are drawn from the object seed), so the
result does not depend on how many worker processes render it.

Seed ranges (disjoint, see :data:`TRAIN_SEED_LIMIT` / :data:`EVAL_SEED_START`):

- training objects: ``make_object(shape, seed)`` with ``0 <= seed < TRAIN_SEED_LIMIT``;
- evaluation objects (quality tests, ``python -m clip_gs.offline_teacher.evaluate``): seeds from
  ``EVAL_SEED_START`` upwards, never used by any build.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TRAIN_SEED_LIMIT = 10_000_000
"""Training object seeds lie in ``[0, TRAIN_SEED_LIMIT)``."""

EVAL_SEED_START = 50_000_000
"""Evaluation object seeds start here (disjoint from every training seed)."""

VIEW_SIZE = 64
"""Default rendered view size in pixels (the offline teacher's image size)."""

NUM_GAUSSIANS = 2048
"""Gaussians per synthetic object in the offline teacher's data."""


@dataclass(frozen=True)
class ViewSpec:
    """How views are drawn for one object.

    Attributes:
        size: image width = height in pixels.
        elevation: ``(low, high)`` degrees, drawn uniformly per view.
        radius: ``(low, high)`` camera distance, drawn uniformly per view.
        fov_deg: vertical field of view.
    """

    size: int = VIEW_SIZE
    elevation: tuple[float, float] = (-20.0, 60.0)
    radius: tuple[float, float] = (2.7, 3.4)
    fov_deg: float = 45.0


EVAL_VIEW = ViewSpec(elevation=(20.0, 20.0), radius=(3.0, 3.0))
"""The evaluation protocol's single view: elevation 20, radius 3 (the render defaults), random azimuth."""


def object_cameras(seed: int, num_views: int, spec: ViewSpec):
    """``num_views`` cameras around one object, drawn from ``seed`` (azimuth, elevation, radius)."""
    from clip_gs.render import Cameras, orbit_cameras

    rng = np.random.default_rng([seed, 7919])
    mats, ks = [], []
    for _ in range(num_views):
        cam = orbit_cameras(
            1,
            radius=float(rng.uniform(*spec.radius)),
            elevation_deg=float(rng.uniform(*spec.elevation)),
            fov_deg=spec.fov_deg,
            width=spec.size,
            height=spec.size,
            azimuth_start_deg=float(rng.uniform(0.0, 360.0)),
        )
        mats.append(cam.viewmats)
        ks.append(cam.Ks)
    return Cameras(torch.cat(mats), torch.cat(ks), spec.size, spec.size)


def render_object(
    shape: str,
    seed: int,
    num_views: int,
    spec: ViewSpec = ViewSpec(),
    num_gaussians: int = NUM_GAUSSIANS,
    **object_kwargs,
) -> tuple[np.ndarray, dict]:
    """Render one synthetic object (``object_kwargs`` go to :func:`clip_gs.data.synthetic.make_object`: ``color``, ``pattern``).

    Returns:
        ``(images uint8 [V, S, S, 3], labels)`` with labels ``label``, ``color``, ``secondary``,
        ``pattern``, ``caption``, ``seed``.
    """
    from clip_gs.data.synthetic import make_object
    from clip_gs.render import render_cloud

    obj = make_object(shape, seed=seed, num_gaussians=num_gaussians, **object_kwargs)
    out = render_cloud(obj.cloud, object_cameras(seed, num_views, spec), background=torch.ones(3))
    images = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = {
        "label": obj.label,
        "color": obj.color_name,
        "secondary": obj.secondary_color_name,
        "pattern": obj.pattern,
        "caption": obj.caption,
        "seed": seed,
    }
    return images, labels


def _render_chunk(args) -> list[tuple[np.ndarray, dict]]:
    items, num_views, spec, num_gaussians = args
    torch.set_num_threads(1)
    return [render_object(shape, seed, num_views, spec, num_gaussians) for shape, seed in items]


def render_views(
    objects: Sequence[tuple[str, int]],
    num_views: int = 1,
    spec: ViewSpec = ViewSpec(),
    num_gaussians: int = NUM_GAUSSIANS,
    workers: int = 1,
    progress: bool = True,
) -> tuple[torch.Tensor, list[dict]]:
    """Render ``num_views`` views of each ``(shape, seed)`` object.

    Args:
        objects: object specs for :func:`clip_gs.data.synthetic.make_object`.
        num_views: V views per object.
        spec: camera distribution.
        num_gaussians: Gaussians per object.
        workers: processes (each renders with one torch thread); results are identical for any count.
        progress: show a tqdm bar.

    Returns:
        ``(images uint8 [N, V, S, S, 3], labels)``, one labels dict per object (see :func:`render_object`).
    """
    from tqdm.auto import tqdm

    objects = [(str(s), int(seed)) for s, seed in objects]
    chunk = 8
    jobs = [(objects[i : i + chunk], num_views, spec, num_gaussians) for i in range(0, len(objects), chunk)]
    results: list[tuple[np.ndarray, dict]] = []
    bar = tqdm(total=len(objects), desc="render views", unit="obj", disable=not progress)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            for part in pool.imap(_render_chunk, jobs):
                results.extend(part)
                bar.update(len(part))
    else:
        threads = torch.get_num_threads()
        try:
            for job in jobs:
                part = _render_chunk(job)
                results.extend(part)
                bar.update(len(part))
        finally:
            torch.set_num_threads(threads)
    bar.close()
    images = (
        torch.from_numpy(np.stack([r[0] for r in results]))
        if results
        else torch.empty(0, num_views, spec.size, spec.size, 3, dtype=torch.uint8)
    )
    return images, [r[1] for r in results]


def cache_dir() -> Path:
    """Where rendered training views are cached: ``views/`` under :func:`~clip_gs.storage.cache_root`."""
    from clip_gs.storage import cache_root

    return cache_root() / "views"


def cached_render_views(
    objects: Sequence[tuple[str, int]],
    num_views: int,
    spec: ViewSpec = ViewSpec(),
    num_gaussians: int = NUM_GAUSSIANS,
    workers: int = 1,
    progress: bool = True,
    cache: Path | None | bool = None,
) -> tuple[torch.Tensor, list[dict]]:
    """:func:`render_views` through a tensor-file cache keyed by every argument that changes pixels.

    ``cache=False`` disables it; ``None`` uses :func:`cache_dir`.
    """
    if cache is False:
        return render_views(objects, num_views, spec, num_gaussians, workers, progress)
    key = json.dumps([list(map(list, objects)), num_views, spec.__dict__, num_gaussians], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache or cache_dir()) / f"views-{len(objects)}x{num_views}-{spec.size}px-{digest}.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
        return data["images"], json.loads(data["labels"])
    images, labels = render_views(objects, num_views, spec, num_gaussians, workers, progress)
    from clip_gs.storage import atomic_write

    buffer = io.BytesIO()
    torch.save({"images": images, "labels": json.dumps(labels)}, buffer)
    atomic_write(path, buffer.getvalue())
    return images, labels


def training_objects(seed: int, per_class: int) -> list[tuple[str, int]]:
    """The build's objects: ``per_class`` of each class, seeds ``seed * 100_000 + k`` (k < per_class).

    Raises:
        ConfigError: when the seeds would leave ``[0, TRAIN_SEED_LIMIT)``.
    """
    from clip_gs.data.synthetic import SHAPE_CLASSES
    from clip_gs.errors import ConfigError

    if per_class > 100_000 or seed < 0 or (seed + 1) * 100_000 > TRAIN_SEED_LIMIT:
        raise ConfigError(
            f"teacher build seed {seed} with {per_class} objects per class leaves the training seed range "
            f"[0, {TRAIN_SEED_LIMIT}); use 0 <= seed < {TRAIN_SEED_LIMIT // 100_000} and per_class <= 100000"
        )
    return [(shape, seed * 100_000 + k) for k in range(per_class) for shape in SHAPE_CLASSES]


def evaluation_objects(per_class: int, offset: int = 0, classes: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """Fresh objects for measuring quality: seeds ``EVAL_SEED_START + offset + k``."""
    from clip_gs.data.synthetic import SHAPE_CLASSES

    classes = SHAPE_CLASSES if classes is None else classes
    return [(shape, EVAL_SEED_START + offset + k) for k in range(per_class) for shape in classes]


__all__ = [
    "EVAL_SEED_START",
    "EVAL_VIEW",
    "NUM_GAUSSIANS",
    "TRAIN_SEED_LIMIT",
    "VIEW_SIZE",
    "ViewSpec",
    "cache_dir",
    "cached_render_views",
    "evaluation_objects",
    "object_cameras",
    "render_object",
    "render_views",
    "training_objects",
]
