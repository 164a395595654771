"""Zero-shot classification and cross-modal retrieval metrics on embeddings.

Everything here works on plain tensors (no model, no teacher, no Lightning): cosine similarities
of L2-normalised embeddings, ranks with ties counted against the query, fractions in [0, 1].

Ranks: for a query whose positives form a set P of gallery items, the rank is the number of
*non-positive* items scoring at least as high as the best positive (:func:`positive_ranks`);
the query is a hit at k when that rank is below k. A tie with a negative therefore counts as a
miss, so a constant (collapsed) embedding scores 0, never a lucky 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError

ZEROSHOT_K = (1, 3, 5)
"""Top-k accuracies reported by zero-shot classification."""

RECALL_K = (1, 5, 10)
"""Recall@k reported by :func:`retrieval`."""

DIRECTIONS = ("text_to_3d", "3d_to_text", "image_to_3d", "3d_to_image")
"""The four retrieval directions, as named in reports."""


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.detach().float(), dim=-1)


def positive_ranks(sims: Tensor, positive: Tensor) -> Tensor:
    """Rank of each query's best positive among the negatives.

    Args:
        sims: ``[Q, G]`` query-gallery similarities.
        positive: ``[Q, G]`` bool, True where the gallery item belongs to the query (at least one per row).

    Returns:
        ``[Q]`` int64: the number of non-positive gallery items scoring >= the row's best positive
        (0 = retrieved first; ties count against the query).
    """
    best = sims.masked_fill(~positive, float("-inf")).amax(dim=1)
    return ((sims >= best[:, None]) & ~positive).sum(dim=1)


def retrieval_recall(g: Tensor, t: Tensor, mask: Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, Tensor]:
    """3D <-> text recall@k among the objects with a caption (what validation logs).

    Args:
        g: ``[M, E]`` 3D embeddings. t: ``[M, E]`` caption embeddings. mask: ``[M]`` bool (has a caption).

    Returns:
        ``{"3d_to_text_r{k}", "text_to_3d_r{k}"}`` 0-d float tensors: share of objects whose own
        caption (resp. 3D embedding) is among the k most similar of the captioned objects; ties
        count against the object. Empty when no object has a caption.
    """
    mask = mask.bool()
    g, t = _unit(g[mask]), _unit(t[mask])
    if len(g) == 0:
        return {}
    sims = g @ t.T  # [M', M']
    own = torch.eye(len(g), dtype=torch.bool, device=sims.device)
    rank_g2t = positive_ranks(sims, own)
    rank_t2g = positive_ranks(sims.T, own)
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
        raise ConfigError(f"{len(names)} class names (distinct: {len(set(names))}) for {class_weights.shape[0]} class weights")
    if len(labels) != embeddings.shape[0] or not len(labels):
        raise ConfigError(f"zero_shot needs one label per embedding and at least one sample, got {len(labels)} labels "
                          f"for {embeddings.shape[0]} embeddings")  # fmt: skip
    ks = sorted(set(int(k) for k in ks))
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
    own = scores.gather(1, target[:, None])  # [N, 1]
    lower = torch.arange(len(names))[None, :] < target[:, None]
    rank = ((scores > own) | ((scores == own) & lower)).sum(dim=1)  # [N]
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
def retrieval(
    shape_embeddings: Tensor,
    text_embeddings: Tensor,
    image_embeddings: Tensor,
    text_mask: Tensor | None = None,
    image_mask: Tensor | None = None,
    ks: Iterable[int] = RECALL_K,
) -> dict[str, dict[str, float]]:
    """Recall@k of text -> 3D, 3D -> text, image -> 3D and 3D -> image over one gallery of N objects.

    Each object has one caption embedding and V view embeddings. How they are used:

    - ``text_to_3d``: each caption (of the objects that have one) is a query over all N 3D
      embeddings; a hit when its own object is in the top k.
    - ``3d_to_text``: each object with a caption is a query over the captions of those objects;
      a hit when its own caption is in the top k.
    - ``image_to_3d``: **every view is a query** over all N 3D embeddings (the recall is the mean
      over all valid views, so each view weighs equally); a hit when its object is in the top k.
    - ``3d_to_image``: each object is a query over the gallery of all views of all objects; a hit
      when **any** of its own views is in the top k (the rank is that of its best view among the
      other objects' views).

    Ties count against the query (:func:`positive_ranks`). k may exceed the gallery (recall 1).

    Args:
        shape_embeddings: ``[N, E]`` 3D embeddings.
        text_embeddings: ``[N, E]`` one caption embedding per object.
        image_embeddings: ``[N, V, E]`` view embeddings.
        text_mask: ``[N]`` bool, False for objects without a caption (default: all True).
        image_mask: ``[N, V]`` bool, False for padding views (default: all True).
        ks: the k of recall@k.

    Returns:
        ``{direction: {"r{k}": recall}}`` for the four :data:`DIRECTIONS`.

    Raises:
        ConfigError: mismatched shapes, k < 1.
        DatasetError: no object with a caption, or no valid view.
    """
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
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ConfigError(f"recall@k needs k >= 1, got {ks}")
    if not bool(text_mask.any()):
        raise DatasetError(f"retrieval: none of the {n} objects has a caption")
    if not bool(image_mask.any()):
        raise DatasetError(f"retrieval: none of the {n} objects has a view embedding")
    g = _unit(shape_embeddings).cpu()
    t = _unit(text_embeddings).cpu()
    views = _unit(image_embeddings).cpu()

    captioned = text_mask.nonzero().squeeze(1)  # [M]
    owner = torch.arange(n)
    ranks: dict[str, Tensor] = {}
    # text -> 3D: captions of the captioned objects against all N shapes
    ranks["text_to_3d"] = positive_ranks(t[captioned] @ g.T, captioned[:, None] == owner[None, :])
    # 3D -> text: captioned objects against the M captions
    eye = torch.eye(len(captioned), dtype=torch.bool)
    ranks["3d_to_text"] = positive_ranks(g[captioned] @ t[captioned].T, eye)
    # image -> 3D: every valid view against all N shapes
    flat = views.reshape(n * v, -1)[image_mask.reshape(-1)]  # [Vt, E]
    view_owner = owner[:, None].expand(n, v).reshape(-1)[image_mask.reshape(-1)]  # [Vt]
    ranks["image_to_3d"] = positive_ranks(flat @ g.T, view_owner[:, None] == owner[None, :])
    # 3D -> image: objects with at least one view against all valid views; any own view counts
    has_view = image_mask.any(dim=1).nonzero().squeeze(1)
    ranks["3d_to_image"] = positive_ranks(g[has_view] @ flat.T, has_view[:, None] == view_owner[None, :])
    return {d: {f"r{k}": float((ranks[d] < k).float().mean()) for k in ks} for d in DIRECTIONS}


__all__ = [
    "DIRECTIONS",
    "RECALL_K",
    "ZEROSHOT_K",
    "ZeroShotResult",
    "positive_ranks",
    "retrieval",
    "retrieval_recall",
    "zero_shot",
]
