"""Zero-shot classification and cross-modal retrieval metrics on embeddings.

Everything here works on plain tensors (no model, no teacher, no Lightning): cosine similarities
of L2-normalised embeddings, fractions in [0, 1]. The ranks behind them, their tie rules and
their memory bounds are :mod:`clip_gs.evaluation.ranking`'s: :func:`~clip_gs.evaluation.ranking.ranks_by_owner`
for :func:`retrieval` and :func:`retrieval_recall`, :func:`~clip_gs.evaluation.ranking.class_ranks`
for :func:`zero_shot`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.evaluation.ranking import SCORE_BUDGET, class_ranks, owner_ids, ranks_by_owner

ZEROSHOT_K = (1, 3, 5)
"""Top-k accuracies reported by zero-shot classification."""

RECALL_K = (1, 5, 10)
"""Recall@k reported by :func:`retrieval`."""

DIRECTIONS = ("text_to_3d", "3d_to_text", "image_to_3d", "3d_to_image")
"""The four retrieval directions, as named in reports."""

def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.detach().float(), dim=-1)


def retrieval_recall(
    g: Tensor, t: Tensor, mask: Tensor, ks: Iterable[int] = (1, 5), budget: int = SCORE_BUDGET
) -> dict[str, Tensor]:
    """3D <-> text recall@k among the objects with a caption (what validation logs).

    Args:
        g: ``[M, E]`` 3D embeddings. t: ``[M, E]`` caption embeddings. mask: ``[M]`` bool (has a caption).
        budget: scores per tile of :func:`~clip_gs.evaluation.ranking.ranks_by_owner` (memory: see there).

    Returns:
        ``{"3d_to_text_r{k}", "text_to_3d_r{k}"}`` 0-d float tensors: share of objects whose own
        caption (resp. 3D embedding) is among the k most similar of the captioned objects; ties
        count against the object. Empty when no object has a caption.
    """
    mask = mask.bool()
    if not bool(mask.any()):
        return {}
    owner = owner_ids(len(mask), mask, t.device)
    captioned = owner >= 0
    rank_g2t = ranks_by_owner(g, owner, t, owner, budget)[captioned]
    rank_t2g = ranks_by_owner(t, owner, g, owner, budget)[captioned]
    out = {}
    for k in ks:
        out[f"3d_to_text_r{k}"] = (rank_g2t < k).float().mean()
        out[f"text_to_3d_r{k}"] = (rank_t2g < k).float().mean()
    return out


# ---------------------------------------------------------------------------- zero-shot
@dataclass(frozen=True)
class ZeroShotResult:
    """What :func:`zero_shot` measured.

    Attributes:
        topk: ``{k: accuracy}`` (fraction of samples whose class is among the k best; k is capped
            at the number of classes C).
        per_class: ``{class name: top-1 accuracy}`` for every class with at least one sample
            (classes without samples have no accuracy and are not listed).
        confusion: ``[C, C]`` int64 counts, rows the true class, columns the top-1 prediction,
            in ``class_names`` order.
        predictions: ``[N]`` int64 top-1 class index of each sample.
        class_names: the C names.
    """

    topk: dict[int, float]
    per_class: dict[str, float]
    confusion: Tensor
    predictions: Tensor
    class_names: list[str]

    @property
    def num_samples(self) -> int:
        return int(self.confusion.sum())


def zero_shot(
    embeddings: Tensor,
    labels: Sequence[str],
    class_names: Sequence[str],
    class_weights: Tensor,
    ks: Iterable[int] = ZEROSHOT_K,
) -> ZeroShotResult:
    """Zero-shot classification of 3D embeddings against class text embeddings.

    Scores are cosines ``normalize(embeddings) @ normalize(class_weights).T``. A sample's rank is
    the number of classes scoring higher than its true class, plus those scoring equal with a
    lower index (ties go to the lower class index, as ``argmax`` breaks them), so top-1 agrees
    with the confusion matrix's prediction.

    Args:
        embeddings: ``[N, E]`` 3D embeddings (any norm).
        labels: N class names, each one of ``class_names``.
        class_names: C distinct names, the rows of ``class_weights``.
        class_weights: ``[C, E]`` class text embeddings (e.g. :func:`~clip_gs.teachers.zero_shot_weights`).
        ks: the k of the top-k accuracies (capped at C).

    Returns:
        :class:`ZeroShotResult`.

    Raises:
        DatasetError: a label that is not among the class names (names the sample and the label).
        ConfigError: mismatched shapes, no samples, duplicate class names, k < 1.
    """
    names = list(class_names)
    if embeddings.ndim != 2 or class_weights.ndim != 2 or embeddings.shape[1] != class_weights.shape[1]:
        raise ConfigError(
            f"zero_shot needs embeddings [N, E] and class_weights [C, E] of one width, got "
            f"{list(embeddings.shape)} and {list(class_weights.shape)}"
        )
    if len(names) != class_weights.shape[0] or len(set(names)) != len(names):
        raise ConfigError(
            f"{len(names)} class names (distinct: {len(set(names))}) for {class_weights.shape[0]} class weights"
        )
    if len(labels) != embeddings.shape[0] or not len(labels):
        raise ConfigError(f"zero_shot needs one label per embedding and at least one sample, got {len(labels)} labels "
                          f"for {embeddings.shape[0]} embeddings")  # fmt: skip
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"top-k needs k >= 1, got {ks}")
    index = {name: i for i, name in enumerate(names)}
    missing = [(i, label) for i, label in enumerate(labels) if label not in index]
    if missing:
        shown = ", ".join(f"sample {i}: {label!r}" for i, label in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DatasetError(f"zero-shot: {len(missing)} label(s) not among the {len(names)} class names: {shown}{more}")
    target = torch.tensor([index[label] for label in labels], dtype=torch.long)
    scores = (_unit(embeddings) @ _unit(class_weights).T).cpu()  # [N, C]
    rank = class_ranks(scores, target)  # [N]
    predictions = scores.argmax(dim=1)
    c = len(names)
    topk = {k: float((rank < min(k, c)).float().mean()) for k in ks}
    confusion = torch.bincount(target * c + predictions, minlength=c * c).reshape(c, c)
    per_class = {}
    for i, name in enumerate(names):
        total = int(confusion[i].sum())
        if total:
            per_class[name] = float(confusion[i, i]) / total
    return ZeroShotResult(topk, per_class, confusion, predictions, names)


# ---------------------------------------------------------------------------- retrieval
IMAGE_QUERIES = ("one-view", "every-view", "mean-view")
"""What an image query of image -> 3D is (:func:`retrieval`): one drawn view per object, every view, or
the mean of an object's views."""

IMAGE_GALLERIES = ("one-view", "any-view", "mean-view")
"""What the image gallery of 3D -> image is and what counts as a hit (:func:`retrieval`): each object's one
drawn view (a hit: that view), every view of every object (a hit: any of the object's own views), or
each object's mean view."""

RETRIEVAL_DEFINITIONS = {"one-view": ("one-view", "one-view"), "every-view": ("every-view", "any-view"),
                         "mean-view": ("mean-view", "mean-view")}  # fmt: skip
"""Named retrieval definitions, ``name -> (image_queries, image_gallery)``. ``one-view`` is the default
(:func:`retrieval`); ``every-view`` takes every view as a query and counts a hit when any own view is
in the top k."""

DEFAULT_IMAGE_QUERIES, DEFAULT_IMAGE_GALLERY = RETRIEVAL_DEFINITIONS["one-view"]


def retrieval_definitions(
    image_queries: str = DEFAULT_IMAGE_QUERIES, image_gallery: str = DEFAULT_IMAGE_GALLERY, view_seed: int = 0
) -> dict[str, dict[str, str]]:
    """What each direction of :func:`retrieval` measures, in words, for reports:
    ``{direction: {"queries": ..., "gallery": ..., "hit": ...}}`` (see :func:`retrieval`).

    Raises:
        ConfigError: an unknown ``image_queries`` / ``image_gallery``.
    """
    _check_image_options(image_queries, image_gallery)
    drawn = f"one view per object, drawn uniformly among its views with seed {view_seed}"
    views = {"one-view": drawn, "every-view": "every view of every object",
             "mean-view": "one per object: the mean of its view embeddings"}  # fmt: skip
    gallery = {"one-view": f"the image of each object with a view ({drawn}; the same view as image -> 3D's)",
               "any-view": "every view of every object", "mean-view": "the mean view embedding of each object with a view"}  # fmt: skip
    hit = {"one-view": "the object's own drawn view is among the k most similar images",
           "any-view": "any of the object's own views is among the k most similar images (the best own view ranked "
                       "among the other objects' views)",
           "mean-view": "the object's own mean view is among the k most similar"}  # fmt: skip
    ties = "; ties count against the query"
    return {
        "text_to_3d": {"queries": "the caption of each object that has one", "gallery": "the 3D embeddings of all objects",
                       "hit": "the caption's own object is among the k most similar" + ties},
        "3d_to_text": {"queries": "the 3D embedding of each object with a caption",
                       "gallery": "the captions of the objects that have one",
                       "hit": "the object's own caption is among the k most similar (an identical caption of another "
                              "object ties, so counts against)" + ties},
        "image_to_3d": {"queries": views[image_queries] + f" (image_queries={image_queries})",
                        "gallery": "the 3D embeddings of all objects",
                        "hit": "the image's own object is among the k most similar" + ties
                               + ("; the recall is the mean over all views" if image_queries == "every-view" else "")},
        "3d_to_image": {"queries": "the 3D embedding of each object with a view",
                        "gallery": gallery[image_gallery] + f" (image_gallery={image_gallery})",
                        "hit": hit[image_gallery] + ties},
    }  # fmt: skip


def _check_image_options(image_queries: str, image_gallery: str) -> None:
    if image_queries not in IMAGE_QUERIES or image_gallery not in IMAGE_GALLERIES:
        raise ConfigError(f"retrieval: image_queries must be one of {IMAGE_QUERIES} and image_gallery one of "
                          f"{IMAGE_GALLERIES}, got {image_queries!r} and {image_gallery!r}")  # fmt: skip


def drawn_views(image_mask: Tensor, seed: int = 0) -> Tensor:
    """``[N]`` int64: one view index per object, drawn uniformly among its valid views with ``seed``
    (-1 for an object without a view): the view the ``one-view`` definitions use.

    Args:
        image_mask: ``[N, V]`` bool, True for real views.
    """
    mask = image_mask.bool().cpu()
    counts = mask.sum(dim=1)
    u = torch.rand(mask.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    nth = (u * counts).long().clamp_max((counts - 1).clamp_min(0))  # the nth valid view, 0-based
    picked = (mask & (mask.cumsum(dim=1) == (nth + 1)[:, None])).float().argmax(dim=1)
    return torch.where(counts > 0, picked, torch.full_like(picked, -1))


def _object_images(images: Tensor, image_mask: Tensor, how: str, seed: int) -> Tensor:
    """``[N, E]`` float32: each object's drawn view (``one-view``) or the mean of its unit views (``mean-view``);
    zeros for an object without a view."""
    n, v, e = images.shape
    if how == "one-view":
        index = drawn_views(image_mask, seed).to(images.device)
        rows = images[torch.arange(n, device=images.device), index.clamp_min(0)].float()
        return torch.where((index >= 0)[:, None], rows, torch.zeros_like(rows))
    out = torch.zeros(n, e, device=images.device)
    mask = image_mask.to(images.device)
    for start in range(0, n, 1024):  # float32 copies of 1024 objects' views at a time
        chunk = F.normalize(images[start : start + 1024].float(), dim=-1) * mask[start : start + 1024, :, None]
        out[start : start + 1024] = chunk.sum(dim=1)
    return out


def retrieval(
    shape_embeddings: Tensor,
    text_embeddings: Tensor,
    image_embeddings: Tensor,
    text_mask: Tensor | None = None,
    image_mask: Tensor | None = None,
    ks: Iterable[int] = RECALL_K,
    budget: int = SCORE_BUDGET,
    image_queries: str = DEFAULT_IMAGE_QUERIES,
    image_gallery: str = DEFAULT_IMAGE_GALLERY,
    view_seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Recall@k of text -> 3D, 3D -> text, image -> 3D and 3D -> image over one set of N objects.

    Each object has one caption embedding and V view embeddings. The definitions (what
    :func:`retrieval_definitions` writes into reports):

    - ``text_to_3d``: queries, the caption of each object that has one; gallery, the 3D
      embeddings of all N objects; a hit when the caption's own object is in the top k.
    - ``3d_to_text``: queries, each object with a caption; gallery, the captions of those objects;
      a hit when the object's own caption is in the top k.
    - ``image_to_3d``: gallery, all N 3D embeddings; a hit when the image's own object is in the
      top k. The queries (``image_queries``): ``"one-view"`` (default) one view per object, drawn
      uniformly among its views with ``view_seed`` (:func:`drawn_views`); ``"every-view"`` every
      view (the recall is the mean over all valid views, so each view weighs equally);
      ``"mean-view"`` the mean of the object's unit view embeddings.
    - ``3d_to_image``: queries, each object with a view. The gallery and the hit
      (``image_gallery``): ``"one-view"`` (default) the same drawn view of each object, a hit when
      the object's own is in the top k; ``"any-view"`` every view of every object, a hit when
      **any** of the object's own views is in the top k (the rank is that of its best view among
      the other objects' views); ``"mean-view"`` each object's mean view.

    The default, one image per object in both directions, is the paired one-to-one setting that the
    paper's Table 1 (R@1 on Objaverse-GS) most plausibly reports; the paper does not define it, and
    UniGS's retrieval code (the closest public code) pairs each object with one image the same way.
    ``RETRIEVAL_DEFINITIONS["every-view"]`` names the every-view / any-view definitions.

    Ties count against the query (:func:`~clip_gs.evaluation.ranking.positive_ranks`). k may exceed the gallery (recall 1).
    Computed tile by tile (:func:`~clip_gs.evaluation.ranking.ranks_by_owner`, memory bounded by ``budget``) on the device of
    the embeddings; the views may be stored in float16 (they are normalised per tile in float32).

    Args:
        shape_embeddings: ``[N, E]`` 3D embeddings.
        text_embeddings: ``[N, E]`` one caption embedding per object.
        image_embeddings: ``[N, V, E]`` view embeddings.
        text_mask: ``[N]`` bool, False for objects without a caption (default: all True).
        image_mask: ``[N, V]`` bool, False for padding views (default: all True).
        ks: the k of recall@k.
        budget: scores per tile (:data:`~clip_gs.evaluation.ranking.SCORE_BUDGET`; memory: :func:`~clip_gs.evaluation.ranking.ranks_by_owner`).
        image_queries: :data:`IMAGE_QUERIES`. image_gallery: :data:`IMAGE_GALLERIES`.
        view_seed: the seed of the ``one-view`` draw.

    Returns:
        ``{direction: {"r{k}": recall}}`` for the four :data:`DIRECTIONS`.

    Raises:
        ConfigError: mismatched shapes, k < 1, an unknown ``image_queries`` / ``image_gallery``.
        DatasetError: no object with a caption, or no valid view.
    """
    _check_image_options(image_queries, image_gallery)
    n = shape_embeddings.shape[0]
    if (shape_embeddings.ndim != 2 or text_embeddings.shape != shape_embeddings.shape or image_embeddings.ndim != 3
            or image_embeddings.shape[0] != n or image_embeddings.shape[2] != shape_embeddings.shape[1]):  # fmt: skip
        raise ConfigError(
            f"retrieval needs shape [N, E], text [N, E] and image [N, V, E] embeddings, got {list(shape_embeddings.shape)}, "
            f"{list(text_embeddings.shape)}, {list(image_embeddings.shape)}"
        )
    v = image_embeddings.shape[1]
    text_mask = torch.ones(n, dtype=torch.bool) if text_mask is None else text_mask.bool().cpu()
    image_mask = torch.ones(n, v, dtype=torch.bool) if image_mask is None else image_mask.bool().cpu()
    if tuple(text_mask.shape) != (n,) or tuple(image_mask.shape) != (n, v):
        raise ConfigError(f"text_mask must be [{n}] and image_mask [{n}, {v}], got {list(text_mask.shape)}, "
                          f"{list(image_mask.shape)}")  # fmt: skip
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"recall@k needs k >= 1, got {ks}")
    if not bool(text_mask.any()):
        raise DatasetError(f"retrieval: none of the {n} objects has a caption")
    if not bool(image_mask.any()):
        raise DatasetError(f"retrieval: none of the {n} objects has a view embedding")
    device = shape_embeddings.device
    objects = torch.arange(n, device=device)  # owner ids: the object index, -1 leaves an item out
    text_owner = owner_ids(n, text_mask, device)  # [N], -1 without a caption
    has_view = owner_ids(n, image_mask.any(dim=1), device)  # [N], -1 without a view
    view_owner = torch.where(image_mask.to(device), objects[:, None], -1).reshape(-1)  # [N * V], -1 for padding
    flat = image_embeddings.reshape(n * v, -1)  # a view of the stored views (e.g. float16), never a float32 copy
    per_object = {how: _object_images(image_embeddings, image_mask, how, view_seed)
                  for how in {image_queries, image_gallery} - {"every-view", "any-view"}}  # [N, E] each  # fmt: skip
    rank = partial(ranks_by_owner, budget=budget)
    every_query, every_item = image_queries == "every-view", image_gallery == "any-view"
    queries, query_owner = (flat, view_owner) if every_query else (per_object[image_queries], has_view)
    gallery, gallery_owner = (flat, view_owner) if every_item else (per_object[image_gallery], has_view)
    ranks = {
        "text_to_3d": rank(text_embeddings, text_owner, shape_embeddings, objects),  # captions over all N shapes
        "3d_to_text": rank(shape_embeddings, text_owner, text_embeddings, text_owner),  # over the M captions
        "image_to_3d": rank(queries, query_owner, shape_embeddings, objects),  # images over all N shapes
        "3d_to_image": rank(shape_embeddings, has_view, gallery, gallery_owner),  # over the image gallery
    }
    ranks = {d: r[r >= 0] for d, r in ranks.items()}
    return {d: {f"r{k}": float((ranks[d] < k).float().mean()) for k in ks} for d in DIRECTIONS}


__all__ = [
    "DIRECTIONS",
    "IMAGE_GALLERIES",
    "IMAGE_QUERIES",
    "RECALL_K",
    "RETRIEVAL_DEFINITIONS",
    "ZEROSHOT_K",
    "ZeroShotResult",
    "drawn_views",
    "retrieval",
    "retrieval_definitions",
    "retrieval_recall",
    "zero_shot",
]
