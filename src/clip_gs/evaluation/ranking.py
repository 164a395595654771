"""Ranking on embeddings: the rank of each query's best positive among the negatives, tile by tile,
and the zero-shot rank of a sample's true class.

Ranks: for a query whose positives form a set P of gallery items, the rank is the number of
*non-positive* items scoring at least as high as the best positive (:func:`positive_ranks`);
the query is a hit at k when that rank is below k. A tie with a negative therefore counts as a
miss, so a constant (collapsed) embedding scores 0, never a lucky 1.

A NaN similarity counts as -inf, and a gallery item with the same vector as the best positive
always counts as a tie (matrix products may round equal dot products differently by position).

Scale: :func:`ranks_by_owner` is the one ranking implementation behind the recalls of
:mod:`clip_gs.evaluation.metrics` (and :func:`positive_ranks` shares its counting code). It never
holds more than one tile of ``queries x gallery`` scores, sized from :data:`SCORE_BUDGET`, and
normalises its inputs tile by tile in float32 (inputs may be stored in float16), so image -> 3D
at Objaverse-LVIS scale (1.66M views x 46K objects) needs about a gigabyte beside the inputs
instead of hundreds. :func:`class_ranks` is the zero-shot rank rule (ties go to the lower class
index, top-k accuracy is ``(ranks < k).mean()``), chunked the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clip_gs.errors import ConfigError

SCORE_BUDGET = 2**26
"""Default memory budget of the chunked rankings, in scores (float32) per tile: 2^26 = 256 MiB.

:func:`ranks_by_owner` sizes its tiles so that ``queries x gallery`` scores, and each of its
float32 row buffers (``rows x E``), stay within it; :func:`class_ranks` compares at most this
many scores at once. See :func:`ranks_by_owner` for the full bound."""

MIN_QUERY_BLOCK = 1024
"""Queries per tile that :func:`ranks_by_owner` keeps at least when the gallery has to be split
(a wide matrix product runs near peak, and each gallery chunk is converted once per block)."""


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


def owner_ids(n: int, valid: Tensor, device) -> Tensor:
    """``[n]`` owner ids ``0..n-1``, -1 where ``valid`` is False."""
    ids = torch.arange(n, device=device)
    return torch.where(valid.to(device), ids, torch.full_like(ids, -1))



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


__all__ = [
    "MIN_QUERY_BLOCK",
    "SCORE_BUDGET",
    "class_ranks",
    "owner_ids",
    "positive_ranks",
    "ranks_by_owner",
    "tile_sizes",
]
