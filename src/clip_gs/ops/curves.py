"""Space-filling curves in 3D: grid quantisation, Morton (Z-order) and Hilbert codes, point orderings.

Conventions (shared by every function here):

- A grid coordinate is an integer in ``[0, 2**bits)`` per axis, stored as ``LongTensor [..., 3]`` in the
  order ``(x, y, z)``. ``1 <= bits <= 21`` so that a code of ``3 * bits`` bits fits in ``int64``.
- **Morton code**: the bits of x, y, z interleaved, x the least significant of each triple:
  ``code = sum_i x_i 2^(3i) + y_i 2^(3i+1) + z_i 2^(3i+2)``; so ``(1,0,0) -> 1``, ``(0,1,0) -> 2``,
  ``(0,0,1) -> 4``, ``(1,1,1) -> 7``, ``(2,0,0) -> 8``.
- **Hilbert code**: J. Skilling's algorithm ("Programming the Hilbert curve", AIP Conf. Proc. 707,
  2004), axes-to-transpose, with x as the first axis (the most significant bit of each triple of the
  transposed index). Code 0 is the origin, consecutive codes are grid neighbours (Manhattan distance
  1), and ``2**(3 * bits)`` codes cover the grid once. Vectorised over tensors; Python loops run only
  over bits and the three axes.

All functions are pure, deterministic and device-agnostic; codes are ``LongTensor``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clip_gs.errors import ConfigError

MAX_BITS = 21  # 3 * 21 = 63 bits: the largest code that fits a signed int64

_KINDS = ("xyz", "z", "hilbert")


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an int in [1, {MAX_BITS}] (3 * bits <= 63), got {bits!r}")


def _check_grid(grid: torch.Tensor, bits: int) -> None:
    _check_bits(bits)
    if not isinstance(grid, torch.Tensor) or grid.dtype != torch.long or grid.dim() < 1 or grid.shape[-1] != 3:
        shape = list(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        dtype = grid.dtype if isinstance(grid, torch.Tensor) else None
        raise ConfigError(f"grid must be a LongTensor [..., 3], got {shape} ({dtype})")
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= 1 << bits):
        raise ConfigError(
            f"grid coordinates must lie in [0, 2**{bits}) = [0, {1 << bits}), got range "
            f"[{int(grid.min())}, {int(grid.max())}]"
        )


def _check_code(code: torch.Tensor, bits: int) -> None:
    _check_bits(bits)
    if not isinstance(code, torch.Tensor) or code.dtype != torch.long:
        raise ConfigError(f"code must be a LongTensor, got {getattr(code, 'dtype', type(code).__name__)}")
    if code.numel() and (int(code.min()) < 0 or int(code.max()) >= 1 << (3 * bits)):
        raise ConfigError(f"codes must lie in [0, 2**{3 * bits}), got range [{int(code.min())}, {int(code.max())}]")


def quantize(
    points: torch.Tensor,
    bits: int,
    low: torch.Tensor | Sequence[float] | float | None = None,
    high: torch.Tensor | Sequence[float] | float | None = None,
) -> torch.Tensor:
    """Map coordinates to integer grid cells ``[0, 2**bits)`` per axis.

    ``grid = clamp(floor((points - low) / (high - low) * 2**bits), 0, 2**bits - 1)``: the box
    ``[low, high]`` is cut into ``2**bits`` equal cells per axis, ``high`` itself falls in the last cell,
    and points outside the box are clamped to the border cells (no error: no value check on device).

    Two ways to give the box:

    - ``low`` and ``high`` (both): tensors or sequences broadcastable to ``points``, e.g. ``[3]`` for one
      box, or scalars (a cube). A patch relative to its centre with known radius ``r`` uses ``-r, r``.
    - neither: one box per set of points, the sets lying along dim ``-2`` (``points: [..., K, 3]``). The
      box is the **cube** with corner at the per-axis minimum and side the largest per-axis extent, so the
      aspect ratio is kept (the grid is isotropic, as curve locality needs). A set whose points coincide
      maps to cell 0.

    Args:
        points: ``[..., 3]`` floating point coordinates (``[..., K, 3]`` when the box is per set).
        bits: cells per axis ``2**bits``, ``1 <= bits <= 21``.
        low, high: the box, see above.

    Returns:
        ``LongTensor [..., 3]`` on ``points.device``.
    """
    _check_bits(bits)
    if not isinstance(points, torch.Tensor) or not points.is_floating_point() or points.shape[-1:] != (3,):
        raise ConfigError(f"points must be a floating point tensor [..., 3], got {getattr(points, 'shape', points)}")
    if (low is None) != (high is None):
        raise ConfigError("give both low and high, or neither (per-set bounding cube)")
    if low is None:
        if points.dim() < 2:
            raise ConfigError(f"a per-set box needs points [..., K, 3], got {list(points.shape)}")
        low_t = points.amin(dim=-2, keepdim=True)
        extent = (points.amax(dim=-2, keepdim=True) - low_t).amax(dim=-1, keepdim=True)
    else:
        low_t = torch.as_tensor(low, dtype=points.dtype, device=points.device)
        high_t = torch.as_tensor(high, dtype=points.dtype, device=points.device)
        extent = high_t - low_t
        if bool((extent <= 0).any()):
            raise ConfigError(f"quantize box needs high > low on every axis, got low={low}, high={high}")
    # a degenerate per-set box (all points equal along every axis) maps every point to cell 0
    extent = torch.where(extent > 0, extent, torch.ones_like(extent))
    cells = 1 << bits
    grid = torch.floor((points - low_t) / extent * cells)
    return grid.clamp_(0, cells - 1).long()


# Spread the low 21 bits of an int64 so that bit i lands at bit 3i (and the inverse), by the usual
# shift-and-mask cascade.
_SPREAD = (
    (32, 0x1F00000000FFFF),
    (16, 0x1F0000FF0000FF),
    (8, 0x100F00F00F00F00F),
    (4, 0x10C30C30C30C30C3),
    (2, 0x1249249249249249),
)
_COMPACT = (
    (2, 0x10C30C30C30C30C3),
    (4, 0x100F00F00F00F00F),
    (8, 0x1F0000FF0000FF),
    (16, 0x1F00000000FFFF),
    (32, 0x1FFFFF),
)


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    v = v & 0x1FFFFF
    for shift, mask in _SPREAD:
        v = (v | (v << shift)) & mask
    return v


def _compact_bits(v: torch.Tensor) -> torch.Tensor:
    v = v & 0x1249249249249249
    for shift, mask in _COMPACT:
        v = (v ^ (v >> shift)) & mask
    return v


def _interleave(grid: torch.Tensor) -> torch.Tensor:
    return _spread_bits(grid[..., 0]) | (_spread_bits(grid[..., 1]) << 1) | (_spread_bits(grid[..., 2]) << 2)


def _deinterleave(code: torch.Tensor) -> torch.Tensor:
    return torch.stack([_compact_bits(code), _compact_bits(code >> 1), _compact_bits(code >> 2)], dim=-1)


def morton_encode(grid: torch.Tensor, bits: int) -> torch.Tensor:
    """Morton (Z-order) code of grid cells: ``LongTensor [..., 3] -> LongTensor [...]``.

    Bits interleaved with x least significant of each triple (see the module docstring); ``bits`` only
    bounds the input (coordinates must lie in ``[0, 2**bits)``, checked) since the code of a cell does
    not depend on it.
    """
    _check_grid(grid, bits)
    return _interleave(grid)


def morton_decode(code: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`morton_encode`: ``LongTensor [...] -> LongTensor [..., 3]``."""
    _check_code(code, bits)
    return _deinterleave(code)


def _exchange_or_invert(x: list[torch.Tensor], q: int, axes: tuple[int, ...]) -> None:
    """Skilling's step at bit ``q`` (in place on ``x``): for each axis i, where its bit q is set
    invert the low bits of x[0], else exchange the low bits of x[0] and x[i]."""
    p = q - 1
    for i in axes:
        bit_set = (x[i] & q) != 0
        swap = (x[0] ^ x[i]) & p
        new_x0 = torch.where(bit_set, x[0] ^ p, x[0] ^ swap)
        if i:
            x[i] = torch.where(bit_set, x[i], x[i] ^ swap)
        x[0] = new_x0


def _hilbert_transpose(grid: torch.Tensor, bits: int) -> torch.Tensor:
    """Skilling's AxestoTranspose: grid ``[..., 3]`` -> transposed Hilbert index ``[..., 3]``."""
    x = [grid[..., 0], grid[..., 1], grid[..., 2]]
    top = 1 << (bits - 1)
    q = top
    while q > 1:  # inverse undo: reflect or swap the low bits, from the top bit down
        _exchange_or_invert(x, q, (0, 1, 2))
        q >>= 1
    x[1] = x[1] ^ x[0]  # Gray encode
    x[2] = x[2] ^ x[1]
    flips = torch.zeros_like(x[0])
    q = top
    while q > 1:
        flips = torch.where((x[2] & q) != 0, flips ^ (q - 1), flips)
        q >>= 1
    return torch.stack([x[0] ^ flips, x[1] ^ flips, x[2] ^ flips], dim=-1)


def _hilbert_untranspose(t: torch.Tensor, bits: int) -> torch.Tensor:
    """Skilling's TransposetoAxes: transposed Hilbert index ``[..., 3]`` -> grid ``[..., 3]``."""
    x = [t[..., 0], t[..., 1], t[..., 2]]
    last = x[2] >> 1  # Gray decode
    x[2] = x[2] ^ x[1]
    x[1] = x[1] ^ x[0]
    x[0] = x[0] ^ last
    q = 2
    while q != 1 << bits:  # undo excess work, from the low bits up
        _exchange_or_invert(x, q, (2, 1, 0))
        q <<= 1
    return torch.stack(x, dim=-1)


def hilbert_encode(grid: torch.Tensor, bits: int) -> torch.Tensor:
    """3D Hilbert code of grid cells: ``LongTensor [..., 3] -> LongTensor [...]`` in ``[0, 2**(3*bits))``.

    Unlike Morton, the code depends on ``bits`` (the curve's order). Consecutive codes are face
    neighbours; code 0 is the origin.
    """
    _check_grid(grid, bits)
    transposed = _hilbert_transpose(grid, bits)
    # The transposed index holds the code's bits with axis 0 the most significant of each triple:
    # interleave with axis 2 in the least significant slot.
    return _interleave(transposed.flip(-1))


def hilbert_decode(code: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`hilbert_encode`: ``LongTensor [...] -> LongTensor [..., 3]``."""
    _check_code(code, bits)
    return _hilbert_untranspose(_deinterleave(code).flip(-1), bits)


def serialization_order(
    points: torch.Tensor,
    kind: str,
    bits: int = 10,
    low: torch.Tensor | Sequence[float] | float | None = None,
    high: torch.Tensor | Sequence[float] | float | None = None,
) -> torch.Tensor:
    """The permutation that sorts each set of K points along a space-filling curve.

    The points are first quantised with :func:`quantize` (per-set bounding cube unless ``low``/``high``
    are given), then sorted by a key computed on the grid cells:

    - ``"xyz"``: lexicographic, x first, then y, then z (key ``x << 2b | y << b | z``);
    - ``"z"``: Morton code (:func:`morton_encode`);
    - ``"hilbert"``: Hilbert code (:func:`hilbert_encode`).

    The sort is stable: points in the same cell keep their input order, so the result is deterministic.

    Args:
        points: ``[..., K, 3]`` floating point coordinates.
        kind: ``"xyz"``, ``"z"`` or ``"hilbert"``.
        bits: grid resolution ``2**bits`` per axis, ``1 <= bits <= 21``.
        low, high: optional fixed box, as in :func:`quantize`.

    Returns:
        ``LongTensor [..., K]``: ``torch.gather(points, -2, order[..., None].expand(..., 3))`` is sorted.
    """
    if kind not in _KINDS:
        raise ConfigError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not isinstance(points, torch.Tensor) or points.dim() < 2:
        raise ConfigError(f"points must be a tensor [..., K, 3], got {getattr(points, 'shape', points)}")
    grid = quantize(points, bits, low, high)
    if kind == "xyz":
        key = (grid[..., 0] << (2 * bits)) | (grid[..., 1] << bits) | grid[..., 2]
    elif kind == "z":
        key = _interleave(grid)
    else:
        key = _interleave(_hilbert_transpose(grid, bits).flip(-1))
    return torch.argsort(key, dim=-1, stable=True)


__all__ = [
    "MAX_BITS",
    "hilbert_decode",
    "hilbert_encode",
    "morton_decode",
    "morton_encode",
    "quantize",
    "serialization_order",
]
