"""Farthest point sampling (FPS).

Both functions return the same indices for the same input (tested bit for bit): each step adds the
point whose squared distance to the nearest chosen centre is largest, with ties broken by the lowest
index (the rule of ``torch.argmax``). Squared distances are computed in the input dtype as
``(dx * dx + dy * dy) + dz * dz`` with ``d = p - c``, in that order, by both paths, so rounding is
identical. Coordinates are assumed finite; a NaN coordinate makes the result unspecified.

- :func:`farthest_point_sample_reference`: the classic loop, one Python iteration per cloud and per
  centre. Readable, slow.
- :func:`farthest_point_sample`: the default. One Python iteration per centre for the whole batch,
  coordinates stored structure-of-arrays ``[3, B, N]``, distances updated in place in preallocated
  buffers, and the argmax taken on the integer bit pattern of the (non-negative) distances, which
  orders like the floats and is much faster than a float argmax on CPU. No ``.item()``, no host copy
  and no data-dependent Python branch inside the loop, so it runs asynchronously on CUDA.

The optional ``fpsample`` package was evaluated as a CPU fast path and is not used: its vanilla FPS is
no faster than the batched torch loop, and its bucket/KD-tree variants return a different sequence
(they do not start at the requested index), so they cannot equal the reference.
"""

from __future__ import annotations

import torch

from clip_gs.errors import ConfigError


def check_point_batch(name: str, points: torch.Tensor) -> tuple[int, int]:
    """Check ``points: [B, N, 3]`` floating point; return ``(B, N)``."""
    if not isinstance(points, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor [B, N, 3], got {type(points).__name__}")
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ConfigError(f"{name} must have shape [B, N, 3], got {list(points.shape)}")
    if not points.is_floating_point():
        raise ConfigError(f"{name} must be a floating point tensor, got dtype {points.dtype}")
    return points.shape[0], points.shape[1]


def check_count(name: str, value: int, low: int, high: int, what: str) -> None:
    """Check that the integer ``value`` lies in ``[low, high]``; ``what`` names ``high`` in the message."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")
    if value > high:
        raise ConfigError(f"{name}={value} exceeds {what} ({high})")


def _start_indices(points: torch.Tensor, start: str, seed: int | None) -> torch.Tensor:
    """First FPS centre of each cloud of ``points: [B, N, 3]``: ``LongTensor [B]`` on its device.

    ``start="first"`` gives index 0 for every cloud (pointnet2_ops / Uni3D). ``start="farthest"`` gives
    the point farthest from the cloud's centroid (lowest index on ties), which does not depend on the
    order of the points. ``start="random"`` draws one index per cloud, uniformly in ``[0, N)``, from a
    CPU ``torch.Generator`` seeded with ``seed`` (required), so the draw is the same on every device.
    """
    batch, num_points = points.shape[:2]
    device = points.device
    if start in ("first", "farthest") and seed is not None:
        raise ConfigError(f"seed is only used with start='random'; got start={start!r} with a seed")
    if start == "first":
        return torch.zeros(batch, dtype=torch.long, device=device)
    if start == "farthest":
        return (points - points.mean(dim=1, keepdim=True)).square().sum(-1).argmax(dim=1)
    if start == "random":
        if seed is None:
            raise ConfigError("start='random' needs an integer seed (every random choice takes a seed)")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        return torch.randint(num_points, (batch,), generator=generator).to(device)
    raise ConfigError(f"start must be 'first', 'farthest' or 'random', got {start!r}")


# A non-negative IEEE float orders like its bit pattern read as a signed integer of the same width.
_ORDERED_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _check_fps_args(points: torch.Tensor, num_samples: int, start: str, seed: int | None) -> torch.Tensor:
    batch, num_points = check_point_batch("points", points)
    check_count("num_samples", num_samples, 1, num_points, "the number of points N")
    return _start_indices(points, start, seed)


def farthest_point_sample_reference(
    points: torch.Tensor, num_samples: int, start: str = "first", seed: int | None = None
) -> torch.Tensor:
    """Farthest point sampling, the readable per-cloud, per-centre loop.

    Args:
        points: ``[B, N, 3]`` floating point coordinates.
        num_samples: ``S``, the number of centres, ``1 <= S <= N``.
        start: ``"first"`` (every cloud starts at index 0, as Uni3D's pointnet2_ops), ``"farthest"``
            (the point farthest from the centroid: independent of the point order) or ``"random"``
            (one start per cloud drawn from a ``torch.Generator`` seeded with ``seed``).
        seed: required with ``start="random"``, refused otherwise.

    Returns:
        ``LongTensor [B, S]``: indices into ``N``, in the order they were chosen.

    Raises:
        ConfigError: bad shape or dtype, ``num_samples`` outside ``[1, N]``, bad ``start``/``seed``.
    """
    first = _check_fps_args(points, num_samples, start, seed)
    batch, num_points, _ = points.shape
    out = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    for b in range(batch):
        cloud = points[b]
        min_d2 = torch.full((num_points,), float("inf"), dtype=points.dtype, device=points.device)
        current = int(first[b])
        for s in range(num_samples):
            out[b, s] = current
            diff = cloud - cloud[current]
            d2 = diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1] + diff[:, 2] * diff[:, 2]
            min_d2 = torch.minimum(min_d2, d2)
            current = int(torch.argmax(min_d2))
    return out


def farthest_point_sample(
    points: torch.Tensor, num_samples: int, start: str = "first", seed: int | None = None
) -> torch.Tensor:
    """Farthest point sampling, batched (the default fast path); same result as the reference.

    Args:
        points: ``[B, N, 3]`` floating point coordinates (CPU or CUDA).
        num_samples: ``S``, the number of centres, ``1 <= S <= N``.
        start: ``"first"`` (every cloud starts at index 0, as Uni3D's pointnet2_ops) or ``"random"``
            (one start per cloud drawn from a CPU ``torch.Generator`` seeded with ``seed``, so a seed
            gives the same starts on every device).
        seed: required with ``start="random"``, refused otherwise.

    Returns:
        ``LongTensor [B, S]`` on ``points.device``: indices into ``N``, in the order chosen; the first
        column is the start. Ties go to the lowest index. Not differentiable (indices).

    Raises:
        ConfigError: bad shape or dtype, ``num_samples`` outside ``[1, N]``, bad ``start``/``seed``.
    """
    first = _check_fps_args(points, num_samples, start, seed)
    batch, num_points, _ = points.shape
    with torch.no_grad():
        coords = points.detach().permute(2, 0, 1).contiguous()  # [3, B, N]
        diff = torch.empty_like(coords)  # [3, B, N]
        d2 = torch.empty(batch, num_points, dtype=points.dtype, device=points.device)
        min_d2 = torch.full((batch, num_points), float("inf"), dtype=points.dtype, device=points.device)
        ordered = min_d2.view(_ORDERED_INT_VIEW[points.dtype])  # same storage, integer order = float order
        out = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
        current = first.view(batch, 1)
        out[:, 0:1] = current
        for s in range(1, num_samples):
            centre = coords.gather(2, current.view(1, batch, 1).expand(3, batch, 1))  # [3, B, 1]
            torch.sub(coords, centre, out=diff)
            torch.mul(diff, diff, out=diff)
            torch.add(diff[0], diff[1], out=d2)
            torch.add(d2, diff[2], out=d2)
            torch.minimum(min_d2, d2, out=min_d2)
            current = ordered.argmax(dim=1, keepdim=True)  # [B, 1], first maximum = lowest index
            out[:, s : s + 1] = current
    return out


__all__ = ["check_count", "check_point_batch", "farthest_point_sample", "farthest_point_sample_reference"]
