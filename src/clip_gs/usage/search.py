"""Searching an embedding index by text, by image or by example, and contact sheets of the hits.

- ``text``: embedded by the index's teacher (the teacher recorded in the index, or the model's
  when a model is given); the text is used as written, without prompt templates.
- ``image``: read with PIL (RGB), embedded by the same teacher's ``encode_images``.
- ``like``: a 3DGS file or mesh embedded by the index's model (a model must be given), with the
  index's settings (seed, mesh samples, up axis unless ``up`` names another), so a file that is in
  the index finds itself first.

Every query is checked against the index's identities first
(:meth:`~clip_gs.index.EmbeddingIndex.check_query_source`): a query from another model or
teacher is refused with a :class:`~clip_gs.errors.ConfigError` naming both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import ClipGSError, ConfigError
from clip_gs.gaussians.assets import MESH_GAUSSIANS, asset_loader
from clip_gs.index import EmbeddingIndex, Hit
from clip_gs.model.loaded import LoadedModel, load_model, load_recorded_teacher
from clip_gs.teachers.base import Teacher

SHEET_GAUSSIANS = 100_000
"""Most Gaussians a hit is rendered with on a contact sheet (larger captures are resampled)."""


@dataclass(frozen=True)
class Query:
    """A search query: what it is (``kind``: ``text``, ``image`` or ``like``), its ``value``, and
    its ``embedding [E]`` with the identity of what embedded it (``model`` or ``teacher``)."""

    kind: str
    value: str
    embedding: Tensor
    model: str | None = None
    teacher: str | None = None


def read_image(path: str | os.PathLike) -> Tensor:
    """An image file as ``uint8 [H, W, 3]`` RGB (what ``Teacher.encode_images`` takes).

    Raises:
        ConfigError: a missing or unreadable image (the message names the file).
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the query image: {exc}") from exc
    return torch.from_numpy(pixels)


def _load_index(index: EmbeddingIndex | str | os.PathLike) -> EmbeddingIndex:
    return index if isinstance(index, EmbeddingIndex) else EmbeddingIndex.load(index)


def query_teacher(index: EmbeddingIndex, model: LoadedModel | None, teacher: str | Teacher | None) -> Teacher:
    """The teacher for text and image queries: the model's (when given; its own override applies),
    else the one the index records (``teacher`` overrides it, and must be that teacher when the
    index records one)."""
    if model is not None:
        return model.teacher()
    return load_recorded_teacher(index.teacher, teacher, what="the index")


def make_query(
    index: EmbeddingIndex,
    text: str | None = None,
    image: str | os.PathLike | None = None,
    like: str | os.PathLike | None = None,
    model: LoadedModel | None = None,
    teacher: str | Teacher | None = None,
    up: str | None = None,
) -> Query:
    """Embed exactly one of ``text``, ``image``, ``like`` for a search of ``index``; ``up`` is the
    up axis of a ``like`` file that declares none (None: the index's ``up`` setting).

    Raises:
        ConfigError: not exactly one query; ``like`` without a model; a model other than the
            index's (checked before anything is embedded); an unknown ``up``.
    """
    given = [(k, v) for k, v in (("text", text), ("image", image), ("like", like)) if v is not None]
    if len(given) != 1:
        raise ConfigError(f"give exactly one query (text, image or like), got {[k for k, _ in given] or 'none'}")
    kind, value = given[0]
    if model is not None:
        index.check_query_source(model=model.identity)
    if kind == "like":
        if model is None:
            raise ConfigError(f"a --like query is embedded by the index's model ({index.model}); pass --model MODEL")
        settings = index.settings
        seed = int(settings.get("seed", 0))
        up = str(settings.get("up", "auto")) if up is None else up
        loader = asset_loader(
            up=up,
            frame=model.model.config.up_axis,
            mesh_gaussians=int(settings.get("mesh_gaussians", MESH_GAUSSIANS)),
            seed=seed,
        )
        embedding = model.model.encode(str(value), seed=seed, loader=loader, progress=False)
        return Query(kind, str(value), embedding, model=model.identity)
    if kind == "text" and not str(value).strip():
        raise ConfigError("the text query is empty")
    the_teacher = query_teacher(index, model, teacher)
    index.check_query_source(teacher=str(the_teacher.identity))
    if kind == "text":
        embedding = the_teacher.encode_text([str(value)])[0]
    else:
        embedding = the_teacher.encode_images(read_image(value))[0]
    return Query(kind, str(value), embedding.float().cpu(), teacher=str(the_teacher.identity))


def search_index(
    index: EmbeddingIndex | str | os.PathLike,
    text: str | None = None,
    image: str | os.PathLike | None = None,
    like: str | os.PathLike | None = None,
    k: int = 5,
    model: LoadedModel | str | os.PathLike | None = None,
    teacher: str | Teacher | None = None,
    up: str | None = None,
) -> list[Hit]:
    """The ``k`` rows of an index nearest to one query (cosine), best first.

    Args:
        index: an :class:`EmbeddingIndex` or its file (``clip-gs embed``'s ``--out``).
        text / image / like: exactly one query (see the module docstring).
        k: hits (at most the index's size).
        model: the index's model (a :class:`LoadedModel` or folder / repo id); needed for ``like``.
        teacher: a teacher spec to use instead of the recorded one (must be the same teacher).
        up: the up axis of a ``like`` file that declares none (None: the index's setting).

    Raises:
        ConfigError: a bad query, a query from another model or teacher than the index's.
        DatasetError: an unreadable index file.
    """
    index = _load_index(index)
    if model is not None and not isinstance(model, LoadedModel):
        model = load_model(model, teacher=teacher)
    query = make_query(index, text, image, like, model, teacher, up)
    return index.search(query.embedding, k=k, model=query.model, teacher=query.teacher)[0]


def hits_sheet(
    hits: list[Hit],
    size: int = 192,
    columns: int | None = None,
    mesh_gaussians: int = MESH_GAUSSIANS,
    seed: int = 0,
    elevation: float = 20.0,
    up: str = "auto",
):
    """A contact sheet of the hits, best first: one view of each, labelled ``rank. score name``.

    Each hit is loaded from its path (meshes converted, at most :data:`SHEET_GAUSSIANS`
    Gaussians) and rendered with the package's rasterizer, upright by
    :func:`~clip_gs.gaussians.assets.load_asset` with ``up`` (as the index embedded them). A hit that cannot be loaded gets a grey tile
    labelled ``unreadable``, and is listed in the second return value.

    Returns:
        ``(PIL.Image, [(path, "ErrorType: message"), ...])``.

    Raises:
        ConfigError: no hits.
    """
    from clip_gs.gaussians.assets import load_asset
    from clip_gs.gaussians.frames import MODEL_FRAME
    from clip_gs.render import contact_sheet, render_view

    if not hits:
        raise ConfigError("no hits to draw")
    tiles, labels, failures = [], [], []
    for rank, hit in enumerate(hits, 1):
        name = Path(hit.path).name
        try:
            cloud = load_asset(hit.path, up=up, mesh_gaussians=mesh_gaussians, seed=seed)
            if cloud.num_gaussians > SHEET_GAUSSIANS:
                cloud = cloud.resample(SHEET_GAUSSIANS, seed=seed)
            tiles.append(render_view(cloud, size, MODEL_FRAME, elevation=elevation, azimuth=0.0))
            labels.append(f"{rank}. {hit.score:.3f} {name}")
        except ClipGSError as exc:
            failures.append((hit.path, f"{type(exc).__name__}: {exc}"))
            tiles.append(torch.full((size, size, 3), 0.6))
            labels.append(f"{rank}. {hit.score:.3f} {name} (unreadable)")
    return contact_sheet(torch.stack(tiles), columns=columns, labels=labels), failures


__all__ = ["SHEET_GAUSSIANS", "Query", "hits_sheet", "make_query", "query_teacher", "read_image", "search_index"]
