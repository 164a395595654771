"""FPS, kNN, gather and grouping: fast paths against the references, and the properties that matter."""

from __future__ import annotations

import itertools

import pytest
import torch

from clip_gs.errors import ConfigError
from clip_gs.ops import (
    farthest_point_sample,
    farthest_point_sample_reference,
    gather,
    gather_reference,
    group,
    group_reference,
    knn,
    knn_reference,
)
from tests.conftest import requires_cuda


def _cloud(batch: int, num_points: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A realistic-looking object: points on a noisy ellipsoid surface plus some interior points."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(batch, num_points, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = 1.0 - 0.3 * torch.rand(batch, num_points, 1, generator=g, dtype=torch.float64) ** 4
    scale = torch.tensor([1.0, 0.6, 0.4], dtype=torch.float64)
    offset = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)  # off-origin, as real scenes are
    return (direction * radius * scale + offset).to(dtype)


def _grid(side: int, batch: int = 2) -> torch.Tensor:
    """An integer grid: massive exact ties for both FPS and kNN."""
    axis = torch.arange(side, dtype=torch.float32)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
    return pts.repeat(batch, 1, 1)


# ----------------------------------------------------------------------------------------------- FPS


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("batch", "num_points", "num_samples"), [(1, 1, 1), (2, 50, 50), (3, 700, 64), (4, 2000, 128)])
def test_fps_fast_equals_reference(batch, num_points, num_samples, dtype):
    pts = _cloud(batch, num_points, dtype)
    for start, seed in (("first", None), ("random", 7)):
        fast = farthest_point_sample(pts, num_samples, start=start, seed=seed)
        ref = farthest_point_sample_reference(pts, num_samples, start=start, seed=seed)
        assert fast.dtype == torch.long and fast.shape == (batch, num_samples)
        assert torch.equal(fast, ref)


def test_fps_ties_go_to_lowest_index_and_match_reference():
    pts = _grid(5)  # 125 points, many equal distances
    fast = farthest_point_sample(pts, 40)
    assert torch.equal(fast, farthest_point_sample_reference(pts, 40))
    # Exact integer distances: at every step the chosen centre is the LOWEST index among the tied maxima
    # of the distance to the nearest previous centre. (Step 2 from corner (0,0,0) and (4,4,4): 12 points
    # tie at 20, the lowest is (0,2,4) = index 14.)
    cloud = pts[0].double()
    ties_seen = 0
    for s in range(1, 40):
        min_d2 = torch.cdist(cloud, cloud[fast[0, :s]]).pow(2).round().min(dim=1).values
        maxima = (min_d2 == min_d2.max()).nonzero().flatten()
        ties_seen += len(maxima) > 1
        assert int(fast[0, s]) == int(maxima.min())
    assert ties_seen > 20
    assert fast[0, :3].tolist() == [0, 124, 14]


def test_fps_duplicate_points_match_reference():
    base = _cloud(2, 200, seed=3)
    pts = torch.cat([base, base[:, :50]], dim=1)  # 50 exact duplicates with higher indices
    fast = farthest_point_sample(pts, 150)
    assert torch.equal(fast, farthest_point_sample_reference(pts, 150))
    assert int(fast.max()) < 200  # a duplicate never beats its lower-index twin


def test_fps_properties():
    pts = _cloud(3, 400)
    idx = farthest_point_sample(pts, 60)
    assert (idx[:, 0] == 0).all()
    for row in idx:
        assert len(set(row.tolist())) == 60
    # brute force: each new centre maximises the distance to the nearest previous centre
    for b in range(3):
        cloud = pts[b].double()
        for s in range(1, 60):
            previous = cloud[idx[b, :s]]
            min_d = torch.cdist(cloud, previous).min(dim=1).values
            assert min_d[idx[b, s]] == pytest.approx(float(min_d.max()), rel=1e-5)


def test_fps_random_start_reproducible_and_seed_dependent():
    pts = _cloud(4, 500)
    a = farthest_point_sample(pts, 32, start="random", seed=123)
    b = farthest_point_sample(pts, 32, start="random", seed=123)
    c = farthest_point_sample(pts, 32, start="random", seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a[:, 0], c[:, 0])
    expected_start = torch.randint(500, (4,), generator=torch.Generator().manual_seed(123))
    assert torch.equal(a[:, 0], expected_start)


def test_fps_farthest_start_is_order_independent():
    pts = _cloud(3, 400)
    a = farthest_point_sample(pts, 24, start="farthest")
    assert torch.equal(a, farthest_point_sample_reference(pts, 24, start="farthest"))
    distance = (pts - pts.mean(dim=1, keepdim=True)).norm(dim=-1)
    assert torch.equal(a[:, 0], distance.argmax(dim=1))
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    b = farthest_point_sample(pts[:, perm], 24, start="farthest")
    assert torch.equal(perm[b], a)  # the same centres, in the same order
    with pytest.raises(ConfigError, match="seed is only used with start='random'"):
        farthest_point_sample(pts, 3, start="farthest", seed=1)


def test_fps_does_not_touch_global_rng():
    pts = _cloud(1, 100)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    farthest_point_sample(pts, 10, start="random", seed=5)
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("fn", [farthest_point_sample, farthest_point_sample_reference])
def test_fps_errors(fn):
    pts = _cloud(2, 10)
    with pytest.raises(ConfigError, match=r"num_samples=11 exceeds the number of points N \(10\)"):
        fn(pts, 11)
    with pytest.raises(ConfigError, match="num_samples must be >= 1"):
        fn(pts, 0)
    with pytest.raises(ConfigError, match="needs an integer seed"):
        fn(pts, 3, start="random")
    with pytest.raises(ConfigError, match="start must be 'first', 'farthest' or 'random'"):
        fn(pts, 3, start="center")
    with pytest.raises(ConfigError, match=r"shape \[B, N, 3\], got \[10, 3\]"):
        fn(pts[0], 3)
    with pytest.raises(ConfigError, match="floating point"):
        fn(pts.long(), 3)


# ----------------------------------------------------------------------------------------------- kNN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("batch", "num_queries", "num_points", "k"), [(1, 1, 1, 1), (2, 33, 500, 16), (3, 70, 1500, 64)]
)
def test_knn_fast_equals_reference(batch, num_queries, num_points, k, dtype):
    pts = _cloud(batch, num_points, dtype, seed=1)
    query = _cloud(batch, num_queries, dtype, seed=2)
    ref_d, ref_i = knn_reference(query, pts, k)
    for chunk_size in (None, 1, 7, 1000):
        d, i = knn(query, pts, k, chunk_size=chunk_size)
        assert i.dtype == torch.long and d.dtype == dtype and i.shape == (batch, num_queries, k)
        assert torch.equal(i, ref_i)
        assert torch.equal(d, ref_d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_knn_ties_lowest_index_first(dtype):
    pts = _grid(4).to(dtype)
    d, i = knn(pts, pts, 10, chunk_size=9)
    ref_d, ref_i = knn_reference(pts, pts, 10)
    assert torch.equal(i, ref_i) and torch.equal(d, ref_d)
    # (0,0,0): itself, then its 3 face neighbours (0,0,1)=1, (0,1,0)=4, (1,0,0)=16, in index order
    assert i[0, 0, :4].tolist() == [0, 1, 4, 16]
    assert d[0, 0, :4].tolist() == [0, 1, 1, 1]


def test_knn_against_brute_force_sort():
    pts = _cloud(2, 300, torch.float64, seed=4)
    query = _cloud(2, 20, torch.float64, seed=5)
    d, i = knn(query, pts, 12)
    true_d2 = torch.cdist(query, pts) ** 2
    expected = torch.argsort(true_d2, dim=-1, stable=True)[..., :12]
    assert torch.equal(i, expected)
    assert torch.allclose(d, torch.gather(true_d2, -1, expected), rtol=1e-12, atol=1e-12)
    assert (d[..., 1:] >= d[..., :-1]).all()


def test_knn_matches_reference_on_realistic_large_cloud():
    """The case the matmul expansion gets wrong: many queries, a dense off-origin cloud, k at the boundary."""
    pts = _cloud(2, 6000, seed=6)
    query = pts[:, torch.randperm(6000, generator=torch.Generator().manual_seed(0))[:256]]
    _, i = knn(query, pts, 32)
    _, ref_i = knn_reference(query, pts, 32)
    assert torch.equal(i, ref_i)


def test_knn_errors():
    pts = _cloud(2, 10)
    with pytest.raises(ConfigError, match=r"k=11 exceeds the number of points N \(10\)"):
        knn(pts, pts, 11)
    with pytest.raises(ConfigError, match="different batch sizes: 1 vs 2"):
        knn(pts[:1], pts, 3)
    with pytest.raises(ConfigError, match="must share dtype and device"):
        knn(pts.double(), pts, 3)
    with pytest.raises(ConfigError, match="chunk_size must be >= 1"):
        knn(pts, pts, 3, chunk_size=0)


# -------------------------------------------------------------------------------------------- gather


def test_gather_shapes_values_and_reference():
    values = torch.randn(3, 20, 4, 2)
    idx = torch.randint(20, (3, 5, 6))
    out = gather(values, idx)
    assert out.shape == (3, 5, 6, 4, 2)
    assert torch.equal(out, gather_reference(values, idx))
    for b, g, k in itertools.product(range(3), range(5), range(6)):
        assert torch.equal(out[b, g, k], values[b, idx[b, g, k]])


def test_gather_is_differentiable():
    values = torch.randn(2, 8, 3, requires_grad=True)
    idx = torch.tensor([[0, 0, 7], [1, 2, 3]])
    gather(values, idx).sum().backward()
    assert values.grad[0, 0].tolist() == [2.0, 2.0, 2.0]
    assert values.grad[0, 1].tolist() == [0.0, 0.0, 0.0]


def test_gather_errors():
    values = torch.randn(2, 8, 3)
    with pytest.raises(ConfigError, match="B=2"):
        gather(values, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="LongTensor"):
        gather(values, torch.zeros(2, 4, dtype=torch.int32))


# --------------------------------------------------------------------------------------------- group


@pytest.mark.parametrize(("start", "seed"), [("first", None), ("random", 11)])
def test_group_equals_reference_and_centre_first(start, seed):
    pts = _cloud(2, 800, seed=8)
    center_idx, neighbor_idx = group(pts, 32, 20, start=start, seed=seed)
    ref_c, ref_n = group_reference(pts, 32, 20, start=start, seed=seed)
    assert center_idx.shape == (2, 32) and neighbor_idx.shape == (2, 32, 20)
    assert torch.equal(center_idx, ref_c) and torch.equal(neighbor_idx, ref_n)
    assert torch.equal(neighbor_idx[..., 0], center_idx)
    # neighbourhoods are sorted by distance to the centre and are the true kNN sets
    centers = gather(pts, center_idx)
    d = (gather(pts, neighbor_idx) - centers[:, :, None]).pow(2).sum(-1)
    assert (d[..., 1:] >= d[..., :-1]).all()
    _, expected = knn_reference(centers, pts, 20)
    assert torch.equal(neighbor_idx.sort(-1).values, expected.sort(-1).values)


def test_group_centre_first_with_duplicates():
    base = _cloud(1, 100, seed=9)
    dup = base[:, :1].expand(1, 30, 3)
    pts = torch.cat([dup, base], dim=1)  # indices 0..29 and 30 are all the same point

    # random starts landing on the duplicates: draw seeds until one starts at a duplicate index > 0
    def first_start(seed: int) -> int:
        return int(torch.randint(130, (1,), generator=torch.Generator().manual_seed(seed)))

    seed = next(s for s in range(1000) if 0 < first_start(s) <= 30)
    for size in (8, 40):  # centre among the K nearest ties, and K smaller than the number of ties
        center_idx, neighbor_idx = group(pts, 5, size, start="random", seed=seed)
        ref_c, ref_n = group_reference(pts, 5, size, start="random", seed=seed)
        assert torch.equal(neighbor_idx[..., 0], center_idx)
        assert torch.equal(center_idx, ref_c) and torch.equal(neighbor_idx, ref_n)
        assert len(set(neighbor_idx[0, 0].tolist())) == size


def test_group_errors():
    pts = _cloud(1, 10)
    with pytest.raises(ConfigError, match="group_size=11 exceeds"):
        group(pts, 2, 11)
    with pytest.raises(ConfigError, match="num_groups=11 exceeds"):
        group(pts, 11, 2)


# ---------------------------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_reference(dtype):
    pts = _cloud(3, 3000, dtype, seed=12)
    for start, seed in (("first", None), ("random", 3)):
        ref = farthest_point_sample_reference(pts, 128, start=start, seed=seed)
        fast = farthest_point_sample(pts.cuda(), 128, start=start, seed=seed)
        assert fast.device.type == "cuda"
        assert torch.equal(fast.cpu(), ref)
        assert torch.equal(farthest_point_sample_reference(pts.cuda(), 128, start=start, seed=seed).cpu(), ref)
    query = gather(pts, ref)
    ref_d, ref_i = knn_reference(query, pts, 32)
    d, i = knn(query.cuda(), pts.cuda(), 32)
    assert torch.equal(i.cpu(), ref_i) and torch.equal(d.cpu(), ref_d)
    c, n = group(pts.cuda(), 64, 16)
    rc, rn = group_reference(pts, 64, 16)
    assert torch.equal(c.cpu(), rc) and torch.equal(n.cpu(), rn)
