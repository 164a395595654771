"""Geometry ops on point batches: pure functions, each with a readable reference beside the fast path.

- :mod:`~clip_gs.ops.sampling`: farthest point sampling.
- :mod:`~clip_gs.ops.neighbors`: kNN, batched gather, FPS + kNN grouping.
- :mod:`~clip_gs.ops.curves`: grid quantisation, Morton and Hilbert codes, serialisation orders.
"""

from clip_gs.ops.curves import (
    hilbert_decode,
    hilbert_encode,
    morton_decode,
    morton_encode,
    quantize,
    serialization_order,
)
from clip_gs.ops.neighbors import gather, gather_reference, group, group_reference, knn, knn_reference
from clip_gs.ops.sampling import farthest_point_sample, farthest_point_sample_reference

__all__ = [
    "farthest_point_sample",
    "farthest_point_sample_reference",
    "gather",
    "gather_reference",
    "group",
    "group_reference",
    "hilbert_decode",
    "hilbert_encode",
    "knn",
    "knn_reference",
    "morton_decode",
    "morton_encode",
    "quantize",
    "serialization_order",
]
