"""The SuperSplat / PlayCanvas compressed ``.ply`` format (``*.compressed.ply``), read-only.

Layout (binary PLY; found by element and property names, learned from PlayCanvas'
``splat-transform`` decoder and checked against real SuperSplat files):

- ``element chunk C`` with C = ceil(N / 256): per 256 consecutive Gaussians, float
  ``min_x min_y min_z max_x max_y max_z`` (position bounds), ``min_scale_* max_scale_*``
  (log-scale bounds) and, in files from SuperSplat >= 1.x, ``min_r min_g min_b max_r max_g
  max_b`` (bounds of the base colour ``0.5 + SH_C0 * f_dc``, not clamped to [0, 1]).
- ``element vertex N`` with four uint32:

  ``packed_position`` and ``packed_scale``: 11/10/11 bits, x in bits 21..31, y in 11..20,
  z in 0..10; each a unorm ``v / (2^bits - 1)`` interpolating the chunk's min..max.

  ``packed_rotation``: "smallest three". Bits 30..31 give which of ``rot_0..rot_3`` (w, x, y,
  z) was the largest (dropped, reconstructed as ``sqrt(1 - a^2 - b^2 - c^2)``); the other three,
  in order, sit in bits 20..29, 10..19, 0..9 as ``(v / 1023 - 0.5) * sqrt(2)``.

  ``packed_color``: 8 bits each, r in bits 24..31, g 16..23, b 8..15, opacity 0..7, unorm
  ``v / 255``; r, g, b interpolate the chunk's colour bounds when present (else they are the
  colour itself), opacity is the activated opacity.
- optional ``element sh N`` with uint8 ``f_rest_0..f_rest_{M-1}`` (M = 9, 24 or 45, INRIA's
  channel-major order): ``f_rest = (t - 0.5) * 8`` with ``t = 0`` for byte 0, ``1`` for byte
  255 and ``(byte + 0.5) / 256`` otherwise.

Checks beyond the header rules of :mod:`~clip_gs.gaussians.formats.ply_header` (exact size, no
repeated element): the chunk count must be ``ceil(N / 256)``, chunk bounds must be finite, and
the log-scale bounds must lie in the range of :mod:`~clip_gs.gaussians.formats.limits` (a bound
of 200 would decode to an infinite covariance).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from clip_gs.errors import GaussianFormatError, UnsupportedFormatError
from clip_gs.gaussians.cloud import SH_C0, GaussianCloud, sh_coeff_count
from clip_gs.gaussians.files import open_regular_file
from clip_gs.gaussians.formats.limits import check_log_scales
from clip_gs.gaussians.formats.ply_header import PlyElement, PlyHeader, find_end_header, is_ply, read_ply_header
from clip_gs.gaussians.formats.splat import DEFAULT_OPACITY_EPS, opacity_logits_from_bytes

CHUNK_SIZE = 256
"""Gaussians per chunk (fixed by the format)."""

CHUNK_BOUNDS = tuple(f"{m}_{a}" for m in ("min", "max") for a in "xyz") + tuple(
    f"{m}_scale_{a}" for m in ("min", "max") for a in "xyz"
)
CHUNK_COLOR_BOUNDS = tuple(f"{m}_{c}" for m in ("min", "max") for c in "rgb")
PACKED = ("packed_position", "packed_rotation", "packed_scale", "packed_color")


def is_compressed_ply(head: bytes) -> bool:
    """True when the bytes start a PLY whose header has a ``chunk`` element and packed vertices."""
    if not is_ply(head):
        return False
    found = find_end_header(head)
    header = head if found is None else head[: found[0]]
    return b"element chunk" in header and b"packed_position" in header


def _element_arrays(path: Path, header: PlyHeader) -> dict[str, np.ndarray]:
    """Structured arrays of every element (binary PLY without list properties), sizes checked."""
    if header.format == "ascii":
        raise UnsupportedFormatError(f"{path}: ASCII compressed PLY is not supported (SuperSplat writes binary)")
    for element in header.elements:
        if element.has_lists:
            raise GaussianFormatError(
                f"{path}: element {element.name!r} has list properties; a compressed PLY has only scalars"
            )
    # read_ply_header already checked that the file holds the claimed bytes
    with open_regular_file(path) as fh:
        fh.seek(header.header_bytes)
        arrays = {}
        for element in header.elements:
            dtype = _dtype(element, header.byte_order)
            data = fh.read(element.count * dtype.itemsize)
            if len(data) != element.count * dtype.itemsize:
                raise GaussianFormatError(f"{path}: truncated PLY data in element {element.name!r}")
            arrays[element.name] = np.frombuffer(data, dtype=dtype)
    return arrays


def _dtype(element: PlyElement, byte_order: str) -> np.dtype:
    return np.dtype([(p.name, byte_order + p.dtype) for p in element.properties])


def _require(path: Path, element: PlyElement | None, name: str, fields, kinds: str) -> PlyElement:
    if element is None:
        raise GaussianFormatError(f"{path}: compressed PLY has no {name!r} element")
    types = {p.name: p.dtype for p in element.properties}
    missing = [f for f in fields if f not in types]
    if missing:
        raise GaussianFormatError(f"{path}: compressed PLY element {name!r} lacks {missing}")
    wrong = [f"{f}: {types[f]}" for f in fields if types[f] not in kinds.split()]
    if wrong:
        raise GaussianFormatError(f"{path}: compressed PLY element {name!r} has properties of the wrong type {wrong}")
    return element


def _unorm(values: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((values >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)


def _unpack_111011(packed: np.ndarray) -> np.ndarray:
    """``[N]`` uint32 -> ``[N, 3]`` unorm values in [0, 1] (11, 10, 11 bits)."""
    return np.stack([_unorm(packed, 21, 11), _unorm(packed, 11, 10), _unorm(packed, 0, 11)], axis=1)


def _unpack_rotation(packed: np.ndarray) -> np.ndarray:
    """``[N]`` uint32 smallest-three -> ``[N, 4]`` quaternions in the file's rot_0..3 order (wxyz)."""
    n = packed.shape[0]
    three = np.stack([_unorm(packed, 20, 10), _unorm(packed, 10, 10), _unorm(packed, 0, 10)], axis=1)
    three = (three - 0.5) * math.sqrt(2.0)
    largest = np.sqrt(np.maximum(0.0, 1.0 - (three**2).sum(axis=1)))
    which = (packed >> np.uint32(30)).astype(np.int64)
    quats = np.empty((n, 4), dtype=np.float64)
    # the three stored components fill the slots other than `which`, in order
    slots = np.arange(4)[None, :].repeat(n, axis=0)
    others = np.sort(np.where(slots == which[:, None], 4, slots), axis=1)[:, :3]
    rows = np.arange(n)[:, None]
    quats[rows, others] = three
    quats[np.arange(n), which] = largest
    return quats


def _sh_degree(path: Path, count: int) -> int:
    for degree in (1, 2, 3):
        if count == 3 * (sh_coeff_count(degree) - 1):
            return degree
    raise GaussianFormatError(f"{path}: compressed PLY 'sh' element has {count} properties; expected 9, 24 or 45")


def read_compressed_ply(path: Path, opacity_eps: float = DEFAULT_OPACITY_EPS) -> GaussianCloud:
    """Read a SuperSplat / PlayCanvas compressed ``.ply`` into a float32 :class:`GaussianCloud`.

    Decoding is vectorised over all Gaussians. Values follow the reference decoder exactly,
    except that the 8-bit opacity is clamped to ``[eps, 1 - eps]`` before the logit (the
    reference gives infinite logits for bytes 0 and 255).

    Args:
        path: the file.
        opacity_eps: see :data:`~clip_gs.gaussians.formats.splat.DEFAULT_OPACITY_EPS`.

    Raises:
        GaussianFormatError: truncated file or data beyond the declared counts, missing or
            mistyped properties, a chunk count that does not match ``ceil(N / 256)``, non-finite
            chunk bounds, log-scale bounds outside the accepted range.
        UnsupportedFormatError: an ASCII compressed PLY.
    """
    path = Path(path)
    header = read_ply_header(path)
    chunk = _require(path, header.element("chunk"), "chunk", CHUNK_BOUNDS, "f4 f8")
    vertex = _require(path, header.element("vertex"), "vertex", PACKED, "u4")
    has_color_bounds = all(name in chunk.property_names for name in CHUNK_COLOR_BOUNDS)
    if has_color_bounds:
        _require(path, chunk, "chunk", CHUNK_COLOR_BOUNDS, "f4 f8")
    sh_element = header.element("sh")
    degree = 0
    if sh_element is not None:
        degree = _sh_degree(path, len(sh_element.properties))
        _require(path, sh_element, "sh", [f"f_rest_{i}" for i in range(len(sh_element.properties))], "u1")
        if sh_element.count != vertex.count:
            raise GaussianFormatError(
                f"{path}: compressed PLY has {vertex.count:,} vertices but {sh_element.count:,} 'sh' rows"
            )
    n = vertex.count
    if n == 0:
        raise GaussianFormatError(f"{path}: the cloud is empty (0 Gaussians)")
    if chunk.count != -(-n // CHUNK_SIZE):
        raise GaussianFormatError(
            f"{path}: {n:,} Gaussians need {-(-n // CHUNK_SIZE):,} chunks of {CHUNK_SIZE}, the file has {chunk.count:,}"
        )

    arrays = _element_arrays(path, header)
    chunks = arrays["chunk"]
    used = (*CHUNK_BOUNDS, *(CHUNK_COLOR_BOUNDS if has_color_bounds else ()))
    with np.errstate(invalid="ignore"):  # a signalling NaN raises 'invalid' when widened
        bounds = {name: chunks[name].astype(np.float64) for name in used}
    bad = [name for name in used if not np.isfinite(bounds[name]).all()]
    if bad:
        raise GaussianFormatError(f"{path}: compressed PLY chunk bounds {bad} hold non-finite values")
    for name in (n for n in CHUNK_BOUNDS if "_scale_" in n):
        check_log_scales(path, bounds[name], f"chunk property {name!r}")
    owner = np.arange(n) // CHUNK_SIZE  # chunk of each Gaussian

    def lerp(prefix_min: str, prefix_max: str, axes: str, t: np.ndarray) -> np.ndarray:
        lo = np.stack([bounds[f"{prefix_min}{a}"][owner] for a in axes], axis=1)
        hi = np.stack([bounds[f"{prefix_max}{a}"][owner] for a in axes], axis=1)
        return lo * (1.0 - t) + hi * t

    vertices = arrays["vertex"]
    packed = {name: vertices[name].astype(np.uint32) for name in PACKED}
    with np.errstate(over="ignore", invalid="ignore"):
        means = lerp("min_", "max_", "xyz", _unpack_111011(packed["packed_position"]))
        log_scales = lerp("min_scale_", "max_scale_", "xyz", _unpack_111011(packed["packed_scale"]))
        color = packed["packed_color"]
        rgb = np.stack([_unorm(color, 24, 8), _unorm(color, 16, 8), _unorm(color, 8, 8)], axis=1)
        if has_color_bounds:
            rgb = lerp("min_", "max_", "rgb", rgb)
        alpha = (color & np.uint32(0xFF)).astype(np.float64)
        sh = np.zeros((n, sh_coeff_count(degree), 3), dtype=np.float32)
        sh[:, 0, :] = (rgb - 0.5) / SH_C0
        if degree > 0:
            rest = arrays["sh"]
            k = sh_coeff_count(degree) - 1
            raw = np.stack([rest[f"f_rest_{i}"] for i in range(3 * k)], axis=1).astype(np.float64)
            t = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256.0))
            # channel-major: f_rest_{c*k+j} is coefficient j+1 of channel c
            sh[:, 1:, :] = ((t - 0.5) * 8.0).reshape(n, 3, k).transpose(0, 2, 1)
        cloud_fields = {
            "means": means.astype(np.float32),
            "log_scales": log_scales.astype(np.float32),
        }
    return GaussianCloud(
        means=torch.from_numpy(cloud_fields["means"]),
        sh=torch.from_numpy(sh),
        opacity_logits=torch.from_numpy(opacity_logits_from_bytes(alpha, opacity_eps)),
        log_scales=torch.from_numpy(cloud_fields["log_scales"]),
        quats=torch.from_numpy(_unpack_rotation(packed["packed_rotation"]).astype(np.float32)),
        source=str(path),
    )
