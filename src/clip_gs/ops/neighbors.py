"""k nearest neighbours, batched gather and FPS + kNN grouping.

Distances are exact squared Euclidean distances computed as ``(dx * dx + dy * dy) + dz * dz`` in the
input dtype by every function here (the same rounding as :mod:`clip_gs.ops.sampling`). The fast path
does not use the ``|a|^2 + |b|^2 - 2 a.b`` matmul expansion: its cancellation error reorders near-equal
neighbours, and the kNN sets must equal the reference's. Neighbours are sorted by ascending distance,
ties broken by the lowest point index (a stable sort), on every device.

Results are indices (and detached distances): these functions run under ``torch.no_grad()``. Gather
the points with :func:`gather` (differentiable) when a gradient is needed.
"""

from __future__ import annotations

import torch

from clip_gs.errors import ConfigError
from clip_gs.ops.sampling import (
    check_count,
    check_point_batch,
    farthest_point_sample,
    farthest_point_sample_reference,
)


def _check_knn_args(query: torch.Tensor, points: torch.Tensor, k: int) -> None:
    batch_q, _ = check_point_batch("query", query)
    batch_p, num_points = check_point_batch("points", points)
    if batch_q != batch_p:
        raise ConfigError(f"query and points have different batch sizes: {batch_q} vs {batch_p}")
    if query.dtype != points.dtype or query.device != points.device:
        raise ConfigError(
            f"query ({query.dtype}, {query.device}) and points ({points.dtype}, {points.device}) "
            "must share dtype and device"
        )
    check_count("k", k, 1, num_points, "the number of points N")


def knn_reference(query: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours by brute force: full distance matrix and a stable sort, one cloud at a time.

    Args:
        query: ``[B, S, 3]`` query coordinates.
        points: ``[B, N, 3]`` candidate coordinates (same dtype and device).
        k: neighbours per query, ``1 <= k <= N``.

    Returns:
        ``(dist2 [B, S, k], idx LongTensor [B, S, k])``: ascending squared distances and indices into
        ``N``; equal distances keep the lower index first.
    """
    _check_knn_args(query, points, k)
    dist2, idx = [], []
    with torch.no_grad():
        for b in range(query.shape[0]):
            diff = query[b][:, None, :] - points[b][None, :, :]  # [S, N, 3]
            d2 = diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]
            d2_sorted, order = torch.sort(d2, dim=-1, stable=True)
            dist2.append(d2_sorted[:, :k])
            idx.append(order[:, :k])
    return torch.stack(dist2), torch.stack(idx)


def _smallest_k_by_threshold(d2: torch.Tensor, k: int, arange_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest entries of each row of ``d2: [..., N]`` ordered by ``(value, index)``; any dtype.

    ``torch.topk`` leaves the choice among tied values open. The k-th smallest value ``v`` is unique,
    though: every entry below ``v`` is in the answer, and the remaining places go to the lowest indices
    equal to ``v``. A second ``topk`` on the integer key ``-1`` (below ``v``), ``index`` (equal to ``v``),
    ``N`` (above) picks exactly that set, and a stable sort on the k survivors orders it.
    """
    num_points = d2.shape[-1]
    kth = torch.topk(d2, k, dim=-1, largest=False, sorted=False).values.amax(dim=-1, keepdim=True)
    key = torch.where(d2 == kth, arange_n, num_points)
    key.masked_fill_(d2 < kth, -1)
    chosen = torch.topk(key, k, dim=-1, largest=False, sorted=False).indices
    chosen, _ = torch.sort(chosen, dim=-1)  # by index, so the stable sort below breaks ties by index
    chosen_d2 = torch.gather(d2, -1, chosen)
    chosen_d2, order = torch.sort(chosen_d2, dim=-1, stable=True)
    return chosen_d2, torch.gather(chosen, -1, order)


# Non-negative IEEE floats of at most 32 bits order like their bit patterns read as integers, so the
# int64 key ``bits << 32 | index`` orders by (distance, index) and is unique: one topk gives the answer.
_PACKABLE = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def _smallest_k_packed(
    d2: torch.Tensor, k: int, arange_n: torch.Tensor, key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`_smallest_k_by_threshold` for ``d2`` of at most 32 bits; ``key`` is an int64 buffer like d2."""
    key.copy_(d2.view(_PACKABLE[d2.dtype]))
    key.bitwise_left_shift_(32).bitwise_or_(arange_n)
    chosen = torch.topk(key, k, dim=-1, largest=False, sorted=True).values.bitwise_and_(0xFFFFFFFF)
    return torch.gather(d2, -1, chosen), chosen


# Distance-matrix elements handled per kNN step when chunk_size is None: small enough to stay in a CPU
# cache, large enough to keep a GPU busy.
_AUTO_CHUNK_ELEMENTS = {"cpu": 2**20}
_AUTO_CHUNK_ELEMENTS_DEFAULT = 2**25


def _auto_chunk_size(batch: int, num_points: int, device: torch.device) -> int:
    budget = _AUTO_CHUNK_ELEMENTS.get(device.type, _AUTO_CHUNK_ELEMENTS_DEFAULT)
    return max(1, budget // max(1, batch * num_points))


def knn(
    query: torch.Tensor, points: torch.Tensor, k: int, chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours (the default fast path); same result as :func:`knn_reference`.

    Exact squared distances for a chunk of ``chunk_size`` queries of every cloud at once
    (``[B, chunk_size, N]``, structure-of-arrays coordinates), then a ``topk`` that selects the k
    smallest with deterministic tie-breaking: on the unique int64 key ``distance bits << 32 | index`` for
    float32/16 inputs, by a threshold-and-rank pass (two ``topk``) for float64. Memory is about
    ``4 * B * chunk_size * N`` elements; the loop over chunks does not depend on the data (no sync).

    Args:
        query: ``[B, S, 3]`` query coordinates.
        points: ``[B, N, 3]`` candidate coordinates (same dtype and device).
        k: neighbours per query, ``1 <= k <= N``.
        chunk_size: queries per cloud handled per step (bounds memory; any positive value gives the same
            result). ``None``: about ``2**20`` distance elements per step on CPU, ``2**25`` on GPUs.

    Returns:
        ``(dist2 [B, S, k], idx LongTensor [B, S, k])``: ascending squared distances (detached) and indices
        into ``N``; equal distances keep the lower index first.

    Raises:
        ConfigError: bad shapes, mismatched batch/dtype/device, ``k`` outside ``[1, N]``, ``chunk_size < 1``.
    """
    _check_knn_args(query, points, k)
    batch, num_queries, _ = query.shape
    num_points = points.shape[1]
    if chunk_size is None:
        chunk_size = _auto_chunk_size(batch, num_points, points.device)
    check_count("chunk_size", chunk_size, 1, 2**62, "the largest supported chunk")
    dist2 = torch.empty(batch, num_queries, k, dtype=points.dtype, device=points.device)
    idx = torch.empty(batch, num_queries, k, dtype=torch.long, device=points.device)
    with torch.no_grad():
        q = query.detach().permute(2, 0, 1)[..., None]  # [3, B, S, 1]
        p = points.detach().permute(2, 0, 1).contiguous()[:, :, None, :]  # [3, B, 1, N]
        arange_n = torch.arange(num_points, device=points.device)
        packed = points.dtype in _PACKABLE and num_points < 2**31
        if packed:
            key = torch.empty(batch, min(chunk_size, num_queries), num_points, dtype=torch.long, device=points.device)
        for s0 in range(0, num_queries, chunk_size):
            s1 = min(s0 + chunk_size, num_queries)
            diff = p[0] - q[0, :, s0:s1]  # [B, c, N]
            d2 = diff.mul_(diff)
            diff = torch.sub(p[1], q[1, :, s0:s1])
            d2.add_(diff.mul_(diff))
            torch.sub(p[2], q[2, :, s0:s1], out=diff)
            d2.add_(diff.mul_(diff))
            if packed:
                dist2[:, s0:s1], idx[:, s0:s1] = _smallest_k_packed(d2, k, arange_n, key[:, : s1 - s0])
            else:
                dist2[:, s0:s1], idx[:, s0:s1] = _smallest_k_by_threshold(d2, k, arange_n)
    return dist2, idx


def _check_gather_args(values: torch.Tensor, idx: torch.Tensor) -> None:
    if values.dim() < 2:
        raise ConfigError(f"values must have shape [B, N, *C], got {list(values.shape)}")
    if idx.dim() < 1 or idx.shape[0] != values.shape[0]:
        raise ConfigError(f"idx must have shape [B, *I] with B={values.shape[0]} as in values, got {list(idx.shape)}")
    if idx.dtype != torch.long:
        raise ConfigError(f"idx must be a LongTensor (torch.int64), got {idx.dtype}")
    if idx.device != values.device:
        raise ConfigError(f"idx is on {idx.device} but values on {values.device}")


def gather_reference(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather by a Python loop over the batch: ``out[b, i...] = values[b, idx[b, i...]]``."""
    _check_gather_args(values, idx)
    return torch.stack([values[b][idx[b]] for b in range(values.shape[0])])


def gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Batched gather along the point axis: ``out[b, i...] = values[b, idx[b, i...]]``.

    Args:
        values: ``[B, N, *C]`` (any dtype; differentiable with respect to ``values``).
        idx: ``LongTensor [B, *I]`` with entries in ``[0, N)`` (not checked on the device, which would
            synchronise: out-of-range indices raise ``IndexError`` on CPU and a device assert on CUDA).

    Returns:
        ``[B, *I, *C]``, e.g. ``gather(points [B, N, 3], neighbor_idx [B, G, K]) -> [B, G, K, 3]``.
    """
    _check_gather_args(values, idx)
    batch = values.shape[0]
    flat_idx = idx.reshape(batch, -1)
    batch_idx = torch.arange(batch, device=values.device)[:, None]
    out = values[batch_idx, flat_idx]  # [B, M, *C]
    return out.reshape(*idx.shape, *values.shape[2:])


def _check_group_args(points: torch.Tensor, num_groups: int, group_size: int) -> None:
    _, num_points = check_point_batch("points", points)
    check_count("num_groups", num_groups, 1, num_points, "the number of points N")
    check_count("group_size", group_size, 1, num_points, "the number of points N")


def _centre_first(neighbor_idx: torch.Tensor, center_idx: torch.Tensor) -> torch.Tensor:
    """Move each centre to the front of its own neighbour list, vectorised.

    kNN puts the lowest index among the points at distance 0 first; a centre with an exact duplicate of
    lower index (possible with ``start="random"``) would lose the first place. The centre is moved to
    position 0 and the entries before it shift right by one; if it is absent (more than K points at
    distance 0), it replaces position 0. Every shifted entry is at distance 0, so the list stays sorted
    by distance and, after the centre, by index.
    """
    centre = center_idx[..., None]  # [B, G, 1]
    position = (neighbor_idx == centre).to(torch.uint8).argmax(dim=-1, keepdim=True)  # 0 when absent
    slots = torch.arange(neighbor_idx.shape[-1], device=neighbor_idx.device)
    source = torch.where(slots <= position, slots - 1, slots).clamp_(min=0)  # slot j <- j-1 up to the centre
    moved = torch.gather(neighbor_idx, -1, source)
    moved[..., :1] = centre
    return moved


def group_reference(
    points: torch.Tensor, num_groups: int, group_size: int, start: str = "first", seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`group` built from the references, with the centre-first rule written as a loop."""
    _check_group_args(points, num_groups, group_size)
    center_idx = farthest_point_sample_reference(points, num_groups, start=start, seed=seed)
    centers = gather_reference(points, center_idx)
    _, neighbor_idx = knn_reference(centers, points, group_size)
    neighbor_idx = neighbor_idx.clone()
    for b in range(neighbor_idx.shape[0]):
        for g in range(neighbor_idx.shape[1]):
            row = neighbor_idx[b, g].tolist()
            centre = int(center_idx[b, g])
            if centre in row:
                row.remove(centre)
            else:
                row.pop(0)  # a duplicate of the centre at distance 0
            neighbor_idx[b, g] = torch.tensor([centre, *row])
    return center_idx, neighbor_idx


def group(
    points: torch.Tensor,
    num_groups: int,
    group_size: int,
    start: str = "first",
    seed: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches as in Uni3D / Point-BERT: FPS centres, then the kNN of each centre among all points.

    Args:
        points: ``[B, N, 3]`` coordinates (usually Gaussian means).
        num_groups: ``G`` centres chosen by :func:`~clip_gs.ops.farthest_point_sample`.
        group_size: ``K`` neighbours per centre, the centre included.
        start, seed: FPS start rule (``"first"``: index 0; ``"farthest"``: farthest from the centroid;
            ``"random"``: seeded per-cloud draw).
        chunk_size: queries per cloud per kNN step (memory bound only; the result does not depend on it;
            ``None`` picks one from the device, see :func:`knn`).

    Returns:
        ``(center_idx LongTensor [B, G], neighbor_idx LongTensor [B, G, K])``, indices into ``N``.
        ``neighbor_idx[b, g]`` is sorted by distance to the centre and ``neighbor_idx[b, g, 0] ==
        center_idx[b, g]`` always (even when the centre has exact duplicates). Use :func:`gather` for
        features: ``gather(points, neighbor_idx) -> [B, G, K, 3]``.
    """
    _check_group_args(points, num_groups, group_size)
    center_idx = farthest_point_sample(points, num_groups, start=start, seed=seed)
    centers = gather(points, center_idx)
    _, neighbor_idx = knn(centers, points, group_size, chunk_size=chunk_size)
    return center_idx, _centre_first(neighbor_idx, center_idx)


__all__ = ["gather", "gather_reference", "group", "group_reference", "knn", "knn_reference"]
