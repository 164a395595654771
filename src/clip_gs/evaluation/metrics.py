"""Zero-shot classification and cross-modal retrieval metrics on embeddings.

Everything here works on plain tensors (no model, no teacher, no Lightning): cosine similarities
of L2-normalised embeddings, ranks with ties counted against the query, fractions in [0, 1].

Ranks: for a query whose positives form a set P of gallery items, the rank is the number of
*non-positive* items scoring at least as high as the best positive (:func:`positive_ranks`);
the query is a hit at k when that rank is below k. A tie with a negative therefore counts as a
miss, so a constant (collapsed) embedding scores 0, never a lucky 1.

A NaN similarity counts as -inf, and a gallery item with the same vector as the best positive
always counts as a tie (matrix products may round equal dot products differently by position).

Scale: :func:`ranks_by_owner` is the one ranking implementation behind :func:`retrieval` and
:func:`retrieval_recall` (and :func:`positive_ranks` shares its counting code). It never holds
more than one tile of ``queries x gallery`` scores, sized from :data:`SCORE_BUDGET`, and
normalises its inputs tile by tile in float32 (inputs may be stored in float16), so image -> 3D
at Objaverse-LVIS scale (1.66M views x 46K objects) needs about a gigabyte beside the inputs
instead of hundreds. :func:`class_ranks` is the zero-shot rank rule (ties go to the lower class
index), chunked the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

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

SCORE_BUDGET = 2**26
"""Default memory budget of the chunked rankings, in scores (float32) per tile: 2^26 = 256 MiB.

:func:`ranks_by_owner` sizes its tiles so that ``queries x gallery`` scores, and each of its
float32 row buffers (``rows x E``), stay within it; :func:`class_ranks` compares at most this
many scores at once. See :func:`ranks_by_owner` for the full bound."""

MIN_QUERY_BLOCK = 1024
"""Queries per tile that :func:`ranks_by_owner` keeps at least when the gallery has to be split
(a wide matrix product runs near peak, and each gallery chunk is converted once per block)."""


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.detach().float(), dim=-1)


def _best_positive(scores: Tensor, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """``(best [q], column [q])``: each query's best positive score and a column holding it (-inf and
    -1 for a query without positives), from the ``(row, column)`` pairs of the positives in ``scores [q, w]``."""
    values = scores[rows, cols]
    q = scores.shape[0]
    best = torch.full((q,), float("-inf"), dtype=scores.dtype, device=scores.device)
    best.scatter_reduce_(0, rows, values, "amax")
    top = values == best[rows]
    column = torch.full((q,), -1, dtype=torch.long, device=scores.device)
    column.scatter_reduce_(0, rows[top], cols[top], "amax")
    return best, column


def _counted(scores: Tensor, best: Tensor, hashes: Tensor | None = None, best_hash: Tensor | None = None) -> Tensor:
    """The rank rule, ``[q, w]`` bool: the items that count against each query, those scoring >= its best
    positive and (given the items' vector ``hashes [w]``) those with the best positive's vector."""
    hit = scores >= best[:, None]
    if hashes is not None:
        hit |= hashes[None, :] == best_hash[:, None]
    return hit


def _tile_ranks(scores: Tensor, rows: Tensor, cols: Tensor, hashes: Tensor | None = None):
    """``(best [q], best_hash [q] | None, rank [q])`` of a tile ``scores [q, w]`` that holds every positive
    (the ``(row, column)`` pairs): the best positive, its vector's hash, and the negatives counted."""
    best, column = _best_positive(scores, rows, cols)
    best_hash = None if hashes is None else hashes[column.clamp_min(0)]
    hit = _counted(scores, best, hashes, best_hash)
    ties = torch.zeros_like(best, dtype=torch.long).index_add_(0, rows, hit[rows, cols].long())
    return best, best_hash, hit.sum(dim=1) - ties


def _no_nan_(scores: Tensor) -> Tensor:
    """NaN scores (from NaN embeddings) count as -inf: below everything, never a lucky hit. In place."""
    return scores.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def positive_ranks(sims: Tensor, positive: Tensor) -> Tensor:
    """Rank of each query's best positive among the negatives, from a dense similarity matrix.

    The definition :func:`ranks_by_owner` computes tile by tile (the same counting code). A NaN
    similarity counts as -inf.

    Args:
        sims: ``[Q, G]`` query-gallery similarities.
        positive: ``[Q, G]`` bool, True where the gallery item belongs to the query (at least one per row).

    Returns:
        ``[Q]`` int64: the number of non-positive gallery items scoring >= the row's best positive
        (0 = retrieved first; ties count against the query).
    """
    rows, cols = positive.nonzero(as_tuple=True)
    return _tile_ranks(_no_nan_(sims.clone()), rows, cols)[2]


_HASH_WEIGHTS = (
    torch.randint(-(2**31), 2**31, (2, 4096), generator=torch.Generator().manual_seed(0), dtype=torch.int32) | 1
)


def _row_hashes(rows: Tensor) -> Tensor:
    """``[m]`` int64: a 64-bit hash of the bits of each float32 row of ``rows [m, E]`` (-0.0 as 0.0):
    equal rows get equal hashes, different ones (all but surely) different hashes. Each 32-bit word
    goes through MurmurHash3's bijective finaliser (so every bit reaches the low bits), then two
    random weighted sums, wrapping in int32."""
    h = (rows + 0.0).view(torch.int32)  # a copy: mixed in place below
    for shift, factor in ((16, -2048144789), (13, -1028477387)):  # 0x85ebca6b, 0xc2b2ae35
        h ^= (h >> shift) & ((1 << (32 - shift)) - 1)  # a logical shift
        h *= factor
    h ^= (h >> 16) & 0xFFFF
    e = h.shape[1]
    weights = _HASH_WEIGHTS.repeat(1, -(-e // _HASH_WEIGHTS.shape[1]))[:, :e].to(rows.device)
    high, low = ((h * w).sum(dim=1, dtype=torch.int32) for w in weights)
    return (high.long() << 32) | (low.long() & 0xFFFFFFFF)


def _unit_rows_into(out: Tensor, rows: Tensor) -> None:
    """Write ``F.normalize(rows.float())`` into ``out[:len(rows)]`` (the same arithmetic, no float32
    temporary of ``rows``) and zeros into the rest of ``out`` (padding)."""
    m = rows.shape[0]
    head = out[:m]
    head.copy_(rows)
    head.div_(torch.linalg.vector_norm(head, dim=-1, keepdim=True).clamp_min_(1e-12))
    out[m:].zero_()


def _gather_rows(x: Tensor, index: Tensor, start: int, stop: int, contiguous: bool) -> Tensor:
    """Rows ``x[index[start:stop]]``: a view of ``x`` when ``index`` is an increasing run there."""
    if contiguous and stop > start:
        first = int(index[start])
        if int(index[stop - 1]) - first == stop - start - 1:
            return x[first : first + stop - start]
    return x.index_select(0, index[start:stop])


def tile_sizes(
    num_queries: int, gallery_size: int, dim: int, widest: int = 1, budget: int = SCORE_BUDGET,
    chunk: int | None = None, gallery_chunk: int | None = None,
) -> tuple[int, int]:  # fmt: skip
    """``(b, g)``: queries and gallery items per tile of :func:`ranks_by_owner`.

    Defaults: ``g = min(G, budget // max(E, min(Q, MIN_QUERY_BLOCK)))`` (the whole gallery when a
    block of up to :data:`MIN_QUERY_BLOCK` queries against it fits the budget, and a float32
    ``g x E`` buffer too), then ``b = min(Q, budget // g, budget // E)``. ``g`` is raised to
    ``widest`` (the most positives of one query) so that each query's positives fit in one tile.

    Raises:
        ConfigError: a budget or chunk size below 1.
    """
    if budget < 1 or (chunk is not None and chunk < 1) or (gallery_chunk is not None and gallery_chunk < 1):
        raise ConfigError(f"ranking needs budget, chunk and gallery_chunk >= 1, got {budget}, {chunk}, {gallery_chunk}")
    dim = max(dim, 1)
    if gallery_chunk is None:
        gallery_chunk = max(1, budget // max(dim, min(max(num_queries, 1), MIN_QUERY_BLOCK)))
    g = max(widest, min(gallery_chunk, gallery_size), 1)
    b = chunk if chunk is not None else max(1, min(budget // g, budget // dim))
    return max(1, min(b, num_queries)), g


@torch.no_grad()
def ranks_by_owner(
    queries: Tensor, query_owner: Tensor, gallery: Tensor, gallery_owner: Tensor, budget: int = SCORE_BUDGET,
    chunk: int | None = None, gallery_chunk: int | None = None,
) -> Tensor:  # fmt: skip
    """Cosine-similarity rank of each query's best positive, where the positives are the gallery
    items of the same owner: :func:`positive_ranks` of ``normalize(queries) @ normalize(gallery).T``
    with ``positive = query_owner[:, None] == gallery_owner[None, :]``, computed tile by tile.

    How: the queries are taken in blocks of at most ``b`` (ordered by owner), each block's rows
    normalised in float32 into a buffer; the gallery (ordered by owner) in chunks of ``g`` rows,
    normalised the same way (:func:`tile_sizes`). A block is first scored against the gallery window
    that holds all its positives, which gives each query's best positive and the negatives of that
    window; then against the rest of the gallery, chunk by chunk, counting the negatives. Every score
    is computed once, by matrix products of one shape (partial blocks and chunks are zero-padded).

    Exact ties: a BLAS kernel may round the same dot product differently at different positions of
    one product (MKL does at tile edges), so equal vectors can get scores one bit apart. A gallery
    item whose normalised vector equals the best positive's (by a 64-bit hash of its float32 bits,
    one pass over the gallery) therefore always counts against the query, whatever the rounding: a
    constant gallery embedding ranks every query after all its negatives (recall 0), never a lucky
    hit. A NaN score counts as -inf.

    Memory, besides the inputs, in bytes, at most::

        6 b g  +  (6 + s) g E  +  (4 + s) b E  +  8 (6 Q + 5 G) + 40 P

    a float32 ``[b, g]`` score tile and two bool ``[b, g]`` comparisons; the float32 gallery and query
    row buffers, a gathered copy of their rows (``s`` bytes per stored element, e.g. 2 for float16;
    0 when the rows are a contiguous run, e.g. no padding or left-out items) and the hashing
    temporaries (``< 2 g E``); int64 indices of the queries, the gallery (and its hashes) and the ``P``
    positive pairs of one block (``P <= b x`` most positives of one query). The defaults keep
    ``b g``, ``g E`` and ``b E`` within ``budget``, so this is at most ``(16 + 2 s) budget`` bytes
    (1.25 GiB for float16 at :data:`SCORE_BUDGET`) plus the indices; image -> 3D and 3D -> image at
    Objaverse-LVIS scale use ``b g = budget``, ``g E = budget``, ``b E <= budget / 45``, about
    ``(12 + s) budget`` (0.9 GiB; measured by ``benchmarks/bench_eval_memory.py``).

    Args:
        queries: ``[Q, E]`` query embeddings (any norm, any floating dtype, e.g. float16).
        query_owner: ``[Q]`` integer owner ids; a negative id leaves the query out.
        gallery: ``[G, E]`` gallery embeddings (the computation runs on their device).
        gallery_owner: ``[G]`` integer owner ids; a negative id leaves the item out of the gallery
            (neither positive nor negative: padding).
        budget: scores per tile (:func:`tile_sizes`).
        chunk: queries per tile ``b`` (default: from the budget).
        gallery_chunk: gallery items per tile ``g`` (default: from the budget; raised to the most
            positives of one query).

    Returns:
        ``[Q]`` int64 on the gallery's device: the number of non-positive gallery items scoring >= the
        query's best positive (0 = retrieved first; ties count against the query); -1 for the queries
        left out.

    Raises:
        ConfigError: mismatched shapes, a budget or chunk below 1, or a query without any positive
            in the gallery (names how many and the first).
    """
    if (queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]
            or tuple(query_owner.shape) != (queries.shape[0],) or tuple(gallery_owner.shape) != (gallery.shape[0],)):  # fmt: skip
        raise ConfigError(
            f"ranks_by_owner needs queries [Q, E], query_owner [Q], gallery [G, E] and gallery_owner [G], got "
            f"{list(queries.shape)}, {list(query_owner.shape)}, {list(gallery.shape)}, {list(gallery_owner.shape)}"
        )
    device, dim = gallery.device, gallery.shape[1]
    q_owner, g_owner = query_owner.to(device, torch.long), gallery_owner.to(device, torch.long)
    ranks = torch.full((queries.shape[0],), -1, dtype=torch.long, device=device)
    q_index, g_index = _by_owner(q_owner), _by_owner(g_owner)
    if not len(q_index):
        return ranks
    q_sorted, g_sorted = q_owner[q_index], g_owner[g_index]
    lo = torch.searchsorted(g_sorted, q_sorted, right=False)
    hi = torch.searchsorted(g_sorted, q_sorted, right=True)
    del q_sorted, g_sorted
    missing = (hi == lo).nonzero().squeeze(1)
    if len(missing):
        first = int(q_index[missing[0]])
        raise ConfigError(f"ranks_by_owner: {len(missing)} of {len(q_index)} queries have no positive in the gallery "
                          f"(first: query {first}, owner {int(q_owner[first])})")  # fmt: skip
    b, g = tile_sizes(len(q_index), len(g_index), dim, int((hi - lo).max()), budget, chunk, gallery_chunk)
    q_run, g_run = _increasing(q_index), _increasing(g_index)
    size = len(g_index)
    g_buf = torch.empty(g, dim, device=device)
    hashes = torch.empty(size, dtype=torch.long, device=device)  # [G'] of the normalised gallery rows
    for a, z in _spans(0, size, g):
        _unit_rows_into(g_buf, _gather_rows(gallery, g_index, a, z, g_run))
        for c, d in _spans(0, z - a, max(1, g // 8)):  # hashing temporaries: 1.5 g E bytes
            hashes[a + c : a + d] = _row_hashes(g_buf[c:d])
    q_buf = torch.empty(b, dim, device=device)
    tile = torch.empty(b, g, device=device)

    def score(start: int, stop: int) -> Tensor:  # [b, stop - start]: the block against gallery rows start:stop
        _unit_rows_into(g_buf, _gather_rows(gallery, g_index, start, stop, g_run))
        return _no_nan_(torch.mm(q_buf, g_buf.T, out=tile))[:, : stop - start]

    start = 0
    while start < len(q_index):
        # the block: at most b queries whose positives all lie in one window of at most g gallery items
        window_lo = int(lo[start])
        stop = min(start + b, start + int(torch.searchsorted(hi[start:], window_lo + g, right=True)))
        window_hi, n = int(hi[stop - 1]), stop - start
        _unit_rows_into(q_buf, _gather_rows(queries, q_index, start, stop, q_run))
        counts = hi[start:stop] - lo[start:stop]
        rows = torch.arange(n, device=device).repeat_interleave(counts)  # the positive pairs (row, column)
        cols = torch.arange(len(rows), device=device) + (
            lo[start:stop] - window_lo - counts.cumsum(0) + counts
        ).repeat_interleave(counts)
        best, best_hash, count = _tile_ranks(score(window_lo, window_hi)[:n], rows, cols, hashes[window_lo:window_hi])
        for a, z in (*_spans(0, window_lo, g), *_spans(window_hi, size, g)):
            count += _counted(score(a, z)[:n], best, hashes[a:z], best_hash).sum(dim=1)
        ranks[q_index[start:stop]] = count
        start = stop
    return ranks


def _by_owner(owner: Tensor) -> Tensor:
    """Positions of the non-negative owners, ordered by owner (stable: by position within an owner)."""
    index = (owner >= 0).nonzero().squeeze(1)
    return index[torch.argsort(owner[index], stable=True)]


def _increasing(index: Tensor) -> bool:
    return bool((index[1:] > index[:-1]).all()) if len(index) > 1 else True


def _spans(start: int, stop: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def _owners(n: int, valid: Tensor, device) -> Tensor:
    """``[n]`` owner ids ``0..n-1``, -1 where ``valid`` is False."""
    ids = torch.arange(n, device=device)
    return torch.where(valid.to(device), ids, torch.full_like(ids, -1))


def retrieval_recall(
    g: Tensor, t: Tensor, mask: Tensor, ks: Iterable[int] = (1, 5), budget: int = SCORE_BUDGET
) -> dict[str, Tensor]:
    """3D <-> text recall@k among the objects with a caption (what validation logs).

    Args:
        g: ``[M, E]`` 3D embeddings. t: ``[M, E]`` caption embeddings. mask: ``[M]`` bool (has a caption).
        budget: scores per tile of :func:`ranks_by_owner` (memory: see there).

    Returns:
        ``{"3d_to_text_r{k}", "text_to_3d_r{k}"}`` 0-d float tensors: share of objects whose own
        caption (resp. 3D embedding) is among the k most similar of the captioned objects; ties
        count against the object. Empty when no object has a caption.
    """
    mask = mask.bool()
    if not bool(mask.any()):
        return {}
    owner = _owners(len(mask), mask, t.device)
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


@torch.no_grad()
def class_ranks(scores: Tensor, targets: Tensor, budget: int = SCORE_BUDGET) -> Tensor:
    """Zero-shot rank of each sample's true class: the number of classes scoring higher, plus those
    scoring equal with a lower index (ties go to the lower class index, as ``argmax`` breaks them,
    so rank 0 is exactly ``scores.argmax(1) == targets``). Top-k accuracy is ``(ranks < k).mean()``.

    Compares ``max(1, budget // C)`` rows at a time (memory: ``budget`` bytes of comparisons beside
    the scores).

    Args:
        scores: ``[N, C]`` class scores (e.g. cosines or logits).
        targets: ``[N]`` integer true class indices in ``[0, C)``.
        budget: scores compared at once.

    Returns:
        ``[N]`` int64 on the device of ``scores``.

    Raises:
        ConfigError: mismatched shapes, a target outside ``[0, C)``, a budget below 1.
    """
    if scores.ndim != 2 or tuple(targets.shape) != (scores.shape[0],) or budget < 1:
        raise ConfigError(f"class_ranks needs scores [N, C], targets [N] and budget >= 1, got {list(scores.shape)}, "
                          f"{list(targets.shape)}, {budget}")  # fmt: skip
    n, c = scores.shape
    targets = targets.to(scores.device, torch.long)
    if n and (int(targets.min()) < 0 or int(targets.max()) >= c):
        raise ConfigError(f"class_ranks: targets must lie in [0, {c}), got {int(targets.min())}..{int(targets.max())}")
    ranks = torch.empty(n, dtype=torch.long, device=scores.device)
    classes = torch.arange(c, device=scores.device)[None, :]
    step = max(1, budget // max(c, 1))
    for start in range(0, n, step):
        part, target = scores[start : start + step], targets[start : start + step, None]
        own = part.gather(1, target)
        ranks[start : start + step] = ((part > own) | ((part == own) & (classes < target))).sum(dim=1)
    return ranks


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
(:func:`retrieval`); ``every-view`` is the definition reported before the choice was made explicit
(every view a query; a hit when any own view is in the top k)."""

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

    Ties count against the query (:func:`positive_ranks`). k may exceed the gallery (recall 1).
    Computed tile by tile (:func:`ranks_by_owner`, memory bounded by ``budget``) on the device of
    the embeddings; the views may be stored in float16 (they are normalised per tile in float32).

    Args:
        shape_embeddings: ``[N, E]`` 3D embeddings.
        text_embeddings: ``[N, E]`` one caption embedding per object.
        image_embeddings: ``[N, V, E]`` view embeddings.
        text_mask: ``[N]`` bool, False for objects without a caption (default: all True).
        image_mask: ``[N, V]`` bool, False for padding views (default: all True).
        ks: the k of recall@k.
        budget: scores per tile (:data:`SCORE_BUDGET`; memory: :func:`ranks_by_owner`).
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
    text_owner = _owners(n, text_mask, device)  # [N], -1 without a caption
    has_view = _owners(n, image_mask.any(dim=1), device)  # [N], -1 without a view
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
    "MIN_QUERY_BLOCK",
    "RECALL_K",
    "RETRIEVAL_DEFINITIONS",
    "SCORE_BUDGET",
    "ZEROSHOT_K",
    "ZeroShotResult",
    "class_ranks",
    "drawn_views",
    "positive_ranks",
    "ranks_by_owner",
    "retrieval",
    "retrieval_definitions",
    "retrieval_recall",
    "tile_sizes",
    "zero_shot",
]
