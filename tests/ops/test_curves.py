"""Space-filling curves: known codes, adjacency, bijection, round trips, quantisation and orderings."""

from __future__ import annotations

import itertools

import pytest
import torch

from clip_gs.errors import ConfigError
from clip_gs.ops import (
    hilbert_decode,
    hilbert_encode,
    morton_decode,
    morton_encode,
    quantize,
    serialization_order,
)
from tests.conftest import requires_cuda


def _full_grid(bits: int) -> torch.Tensor:
    axis = torch.arange(1 << bits)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _morton_by_bit_loop(grid: torch.Tensor, bits: int) -> torch.Tensor:
    code = torch.zeros(grid.shape[:-1], dtype=torch.long)
    for i in range(bits):
        for axis in range(3):
            code |= ((grid[..., axis] >> i) & 1) << (3 * i + axis)
    return code


# -------------------------------------------------------------------------------------------- Morton


def test_morton_known_codes():
    grid = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 0], [0, 2, 0], [3, 3, 3]])
    assert morton_encode(grid, 2).tolist() == [0, 1, 2, 4, 7, 8, 16, 63]


@pytest.mark.parametrize("bits", [1, 5, 13, 21])
def test_morton_matches_bit_loop_and_round_trips(bits):
    grid = torch.randint(1 << bits, (500, 3), generator=torch.Generator().manual_seed(bits))
    grid[0] = (1 << bits) - 1  # all ones: the largest code
    code = morton_encode(grid, bits)
    assert torch.equal(code, _morton_by_bit_loop(grid, bits))
    assert int(code[0]) == (1 << (3 * bits)) - 1
    assert torch.equal(morton_decode(code, bits), grid)


def test_morton_bijection_on_full_grid():
    grid = _full_grid(3)
    code = morton_encode(grid, 3)
    assert torch.equal(torch.sort(code).values, torch.arange(512))
    assert torch.equal(morton_decode(torch.arange(512), 3)[code], grid)


def test_morton_keeps_batch_shape():
    grid = torch.randint(16, (2, 3, 5, 3))
    assert morton_encode(grid, 4).shape == (2, 3, 5)
    assert morton_decode(morton_encode(grid, 4), 4).shape == (2, 3, 5, 3)


# ------------------------------------------------------------------------------------------- Hilbert


def test_hilbert_one_bit_visits_cube_corners_by_unit_steps():
    cells = hilbert_decode(torch.arange(8), 1)
    assert cells[0].tolist() == [0, 0, 0]
    assert sorted(map(tuple, cells.tolist())) == list(itertools.product((0, 1), repeat=3))
    assert ((cells[1:] - cells[:-1]).abs().sum(-1) == 1).all()


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_hilbert_adjacency_and_bijection_on_full_grid(bits):
    n = 1 << (3 * bits)
    cells = hilbert_decode(torch.arange(n), bits)
    assert ((cells[1:] - cells[:-1]).abs().sum(-1) == 1).all()  # consecutive codes are face neighbours
    assert cells[0].tolist() == [0, 0, 0]
    codes = hilbert_encode(_full_grid(bits), bits)
    assert torch.equal(torch.sort(codes).values, torch.arange(n))  # a bijection onto [0, 8**bits)
    assert torch.equal(hilbert_encode(cells, bits), torch.arange(n))


def test_hilbert_is_not_morton():
    grid = _full_grid(2)
    assert not torch.equal(hilbert_encode(grid, 2), morton_encode(grid, 2))


@pytest.mark.parametrize("bits", [5, 10, 21])
def test_hilbert_round_trip_random(bits):
    grid = torch.randint(1 << bits, (2, 300, 3), generator=torch.Generator().manual_seed(bits))
    code = hilbert_encode(grid, bits)
    assert code.shape == (2, 300) and int(code.min()) >= 0 and int(code.max()) < 1 << (3 * bits)
    assert torch.equal(hilbert_decode(code, bits), grid)


def test_hilbert_locality_beats_morton():
    """The point of Hilbert: no long jumps. Along the curve the mean step is 1; Morton jumps far."""
    bits = 4
    h = hilbert_decode(torch.arange(1 << (3 * bits)), bits)
    m = morton_decode(torch.arange(1 << (3 * bits)), bits)
    h_step = (h[1:] - h[:-1]).abs().sum(-1).float()
    m_step = (m[1:] - m[:-1]).abs().sum(-1).float()
    assert h_step.max() == 1 and m_step.max() > 10


@pytest.mark.parametrize("fn", [morton_encode, hilbert_encode])
def test_encode_errors(fn):
    with pytest.raises(ConfigError, match=r"must lie in \[0, 2\*\*2\)"):
        fn(torch.tensor([[4, 0, 0]]), 2)
    with pytest.raises(ConfigError, match=r"must lie in \[0, 2\*\*2\)"):
        fn(torch.tensor([[-1, 0, 0]]), 2)
    with pytest.raises(ConfigError, match=r"bits must be an int in \[1, 21\]"):
        fn(torch.tensor([[0, 0, 0]]), 22)
    with pytest.raises(ConfigError, match=r"LongTensor \[..., 3\]"):
        fn(torch.tensor([[0.0, 0.0, 0.0]]), 2)


@pytest.mark.parametrize("fn", [morton_decode, hilbert_decode])
def test_decode_errors(fn):
    with pytest.raises(ConfigError, match=r"codes must lie in \[0, 2\*\*6\)"):
        fn(torch.tensor([64]), 2)


# ------------------------------------------------------------------------------------------ quantize


def test_quantize_explicit_box():
    pts = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-0.51, 0.49, 0.99], [5.0, -5.0, 0.0]])
    grid = quantize(pts, 2, low=-1.0, high=1.0)  # 4 cells of width 0.5 per axis
    assert grid.dtype == torch.long
    assert grid.tolist() == [[0, 0, 0], [3, 3, 3], [2, 2, 2], [0, 2, 3], [3, 0, 2]]  # high -> last cell, clamps
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 0.9, 1.0], [1.0, 1.0, 1.0]])
    per_axis = quantize(box, 1, low=[-1.0, -1.0, -1.0], high=[1.0, 3.0, 1.0])  # y cells of width 2
    assert per_axis.tolist() == [[0, 0, 0], [1, 0, 1], [1, 1, 1]]


def test_quantize_per_set_cube_keeps_aspect_ratio():
    spread = [[0.0, 0.0, 0.0], [4.0, 1.0, 2.0], [2.0, 0.5, 4.0]]
    pts = torch.tensor([spread, [[10.0, 10.0, 10.0]] * 3])
    grid = quantize(pts, 3)  # cube of side 4 at the per-set minimum: cells of width 0.5
    assert grid[0].tolist() == [[0, 0, 0], [7, 2, 4], [4, 1, 7]]
    assert grid[1].tolist() == [[0, 0, 0]] * 3  # a degenerate set maps to cell 0


def test_quantize_errors():
    pts = torch.rand(4, 3)
    with pytest.raises(ConfigError, match="both low and high"):
        quantize(pts, 4, low=0.0)
    with pytest.raises(ConfigError, match=r"floating point tensor \[..., 3\]"):
        quantize(torch.zeros(4, 2), 4)
    with pytest.raises(ConfigError, match=r"per-set box needs points \[..., K, 3\]"):
        quantize(pts[0], 4)


# ---------------------------------------------------------------------------------------- orderings


def test_serialization_order_xyz_is_lexicographic():
    pts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    order = serialization_order(pts, "xyz", bits=1)
    assert order.tolist() == [4, 2, 1, 3, 0]


@pytest.mark.parametrize("kind", ["xyz", "z", "hilbert"])
def test_serialization_order_is_a_stable_sorting_permutation(kind):
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 4, 64, 3, generator=g)
    pts[0, 0, 10] = pts[0, 0, 3]  # a duplicate: must stay after its twin (stable)
    order = serialization_order(pts, kind, bits=6)
    assert order.shape == (3, 4, 64)
    assert torch.equal(order.sort(-1).values, torch.arange(64).expand(3, 4, 64))
    row = order[0, 0].tolist()
    assert row.index(3) < row.index(10)
    grid = quantize(pts, 6)
    if kind == "xyz":
        key = (grid[..., 0] << 12) | (grid[..., 1] << 6) | grid[..., 2]
    else:
        key = morton_encode(grid, 6) if kind == "z" else hilbert_encode(grid, 6)
    assert (torch.gather(key, -1, order).diff(dim=-1) >= 0).all()
    assert torch.equal(order, serialization_order(pts, kind, bits=6))  # deterministic


def test_serialization_order_hilbert_walks_the_grid():
    cells = _full_grid(2).float()[torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    order = serialization_order(cells, "hilbert", bits=2, low=0.0, high=4.0)
    walked = cells[order]
    assert ((walked[1:] - walked[:-1]).abs().sum(-1) == 1).all()


def test_serialization_order_errors():
    with pytest.raises(ConfigError, match="kind must be one of"):
        serialization_order(torch.rand(5, 3), "peano")


@requires_cuda
def test_curves_cuda_match_cpu():
    grid = torch.randint(1 << 10, (1000, 3))
    assert torch.equal(morton_encode(grid.cuda(), 10).cpu(), morton_encode(grid, 10))
    assert torch.equal(hilbert_encode(grid.cuda(), 10).cpu(), hilbert_encode(grid, 10))
    pts = torch.rand(4, 256, 3)
    for kind in ("xyz", "z", "hilbert"):
        assert torch.equal(serialization_order(pts.cuda(), kind).cpu(), serialization_order(pts, kind))
