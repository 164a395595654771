"""Niantic's ``.spz`` format (versions 2, 3 and 4), read-only.

Versions 2 and 3 (nianticlabs/spz, gzip): the whole file is one gzip stream holding a 16-byte
header (``magic 0x5053474e "NGSP"``, ``version``, ``numPoints`` as uint32, then uint8
``shDegree``, ``fractionalBits``, ``flags``, reserved) followed by the attribute arrays:

============ =============== ===============================================================
array        bytes / point   decoding
============ =============== ===============================================================
positions    9               3 x signed 24-bit little-endian fixed point, ``/ 2^fractionalBits``
alphas       1               opacity ``a / 255`` (stored as the logit here)
colours      3               SH DC ``(c / 255 - 0.5) / 0.15`` (spz's colour scale, not SH_C0)
scales       3               log-scale ``s / 16 - 10``
rotations    3 (v2), 4 (v3)  v2: xyz as ``b / 127.5 - 1``, ``w = sqrt(1 - |xyz|^2)``;
                             v3: "smallest three" in a little-endian uint32 (see below)
sh           3 * (K - 1)     ``(b - 128) / 128``, coefficient-major with RGB innermost
============ =============== ===============================================================

v3 rotations: bits 30..31 give the index (in x, y, z, w order) of the largest component, which
is rebuilt as ``sqrt(1 - sum of the others^2)``; the three others are read from the low bits
upwards in the order w, z, y, x (skipping the largest), each as 9 bits of magnitude
``m / 511 * sqrt(1/2)`` and a sign bit above them.

Version 4 (the files PlayCanvas ships, e.g. ``biker.spz``) is not gzipped: a 32-byte header
(``magic``, ``version``, ``numPoints``, ``shDegree``, ``fractionalBits``, ``flags``,
``numStreams`` as uint8, ``tocByteOffset`` as uint32, 12 reserved bytes), then at
``tocByteOffset`` a table of ``numStreams`` pairs of uint64 ``(compressed size, uncompressed
size)``, then the streams back to back, each one zstd frame holding one attribute array of
the table above (same encodings as v3). Decoding v4 needs the ``zstandard`` package (or
Python >= 3.14's ``compression.zstd``). This layout was read off the real file and checked by
decoding the same object from its SuperSplat compressed PLY (see the tests).

Coordinates: spz stores positions, rotations and SH in its canonical RUB frame (x right, y up,
z back); the reference writer converts from the INRIA/COLMAP RDF frame (x right, y down, z
forward) by flipping y and z. By default (``coordinates="rdf"``) this reader flips them back,
with the matching quaternion and SH sign changes, so an spz and the INRIA / compressed PLY of the
same object load identically (checked on PlayCanvas' biker). ``coordinates="stored"`` returns the
values as stored.

Sizes are checked before anything is decompressed or allocated: the header's point count
against ``max_points``, and the decompressed size it implies against the file's size with the
compression-ratio limit of :mod:`~clip_gs.gaussians.formats.limits` (``max_compression_ratio``).
Decompression is streamed with an output limit of exactly the declared size, so a stream that
holds more is refused without being inflated. Running out of memory while decompressing is a
:class:`GaussianFormatError` naming the file and the stream.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from clip_gs.errors import ConfigError, GaussianFormatError, MissingDependencyError, UnsupportedFormatError
from clip_gs.gaussians.cloud import MAX_SH_DEGREE, GaussianCloud, sh_coeff_count
from clip_gs.gaussians.files import read_regular_file
from clip_gs.gaussians.formats.limits import MAX_COMPRESSION_RATIO, check_compression_ratio
from clip_gs.gaussians.formats.splat import DEFAULT_OPACITY_EPS, opacity_logits_from_bytes

SPZ_MAGIC = 0x5053474E
"""``b"NGSP"`` read as a little-endian uint32."""

SPZ_COLOR_SCALE = 0.15
"""spz stores the SH DC as ``dc * 0.15 * 255 + 127.5`` (a wider range than SH_C0 would give)."""

SUPPORTED_VERSIONS = (2, 3, 4)

DEFAULT_MAX_POINTS = 1 << 27
"""Refuse headers claiming more Gaussians than this (134M) before allocating anything."""

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_FLAG_ANTIALIASED = 0x1
_FLAG_HAS_EXTENSIONS = 0x2
_V4_HEADER_BYTES = 32
_LEGACY_HEADER_BYTES = 16
_READ_BLOCK = 1 << 20

# Sign flips of (x, y, z) between spz's RUB and INRIA's RDF frame, and of each SH basis
# function (degree 1..3, in INRIA order) under that flip: a real SH basis function, a
# polynomial in (x, y, z), changes sign with the parity of its total degree in y and z.
_FLIP_XYZ = np.array([1.0, -1.0, -1.0])
_FLIP_SH = np.array(
    # degree 1: y, z, x | degree 2: xy, yz, 3z^2-r^2, xz, x^2-y^2 |
    # degree 3: y(3x^2-y^2), xyz, y(5z^2-r^2), z(5z^2-3r^2), x(5z^2-r^2), z(x^2-y^2), x(x^2-3y^2)
    [-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1],
    dtype=np.float64,
)


def is_spz(head: bytes) -> bool:
    """True for an uncompressed / v4 spz (``NGSP`` magic) or a gzip stream that starts with it."""
    if head[:4] == b"NGSP":
        return True
    if head[:2] != _GZIP_MAGIC:
        return False
    try:
        inflated = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 4)
    except zlib.error:
        return False
    return inflated == b"NGSP"


def _point_layout(version: int, sh_degree: int) -> list[tuple[str, int]]:
    """(array name, bytes per point) in file order."""
    return [
        ("positions", 9),
        ("alphas", 1),
        ("colors", 3),
        ("scales", 3),
        ("rotations", 3 if version == 2 else 4),
        ("sh", 3 * (sh_coeff_count(sh_degree) - 1)),
    ]


def _check_header(path: Path, version: int, num_points: int, sh_degree: int, flags: int, max_points: int) -> None:
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedFormatError(
            f"{path}: spz version {version} is not supported (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    if sh_degree > MAX_SH_DEGREE:
        raise UnsupportedFormatError(f"{path}: spz SH degree {sh_degree} is not supported (at most {MAX_SH_DEGREE})")
    if flags & _FLAG_HAS_EXTENSIONS:
        raise UnsupportedFormatError(f"{path}: spz extensions (flags bit 0x2) are not supported")
    if flags & ~(_FLAG_ANTIALIASED | _FLAG_HAS_EXTENSIONS):
        raise GaussianFormatError(f"{path}: spz header has unknown flag bits 0x{flags:02x}")
    if num_points == 0:
        raise GaussianFormatError(f"{path}: the cloud is empty (0 Gaussians)")
    if num_points > max_points:
        raise GaussianFormatError(
            f"{path}: spz header claims {num_points:,} Gaussians, more than max_points={max_points:,}"
        )


def _reason(exc: BaseException) -> str:
    """An exception's message, or its type name when the message is empty."""
    return str(exc) or type(exc).__name__


def _inflate_legacy(
    path: Path, raw: bytes, max_points: int, max_ratio: float
) -> tuple[tuple[int, int, int, int, int], dict[str, bytes]]:
    """Gunzip a v2/v3 file incrementally: the header first, then exactly the bytes it implies."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = [raw]  # input not yet handed to the inflater

    def take(count: int) -> bytes:
        out = bytearray()
        try:
            while len(out) < count and not inflater.eof:
                data = pending.pop() if pending else inflater.unconsumed_tail
                block = inflater.decompress(data, min(count - len(out), _READ_BLOCK))
                if not block and not inflater.unconsumed_tail:
                    break
                out += block
        except zlib.error as exc:
            raise GaussianFormatError(f"{path}: corrupt gzip stream in spz file: {exc}") from exc
        if len(out) < count:
            raise GaussianFormatError(
                f"{path}: truncated spz: the header implies {count:,} decompressed bytes here, "
                f"the stream has {len(out):,}"
            )
        return bytes(out)

    head = take(_LEGACY_HEADER_BYTES)
    magic, version, num_points, sh_degree, fractional_bits, flags, _ = struct.unpack("<IIIBBBB", head)
    if magic != SPZ_MAGIC:
        raise GaussianFormatError(f"{path}: gzip stream does not hold an spz header (magic 0x{magic:08x})")
    if version == 4:
        raise GaussianFormatError(f"{path}: spz version 4 is never gzipped; the file is corrupt")
    _check_header(path, version, num_points, sh_degree, flags, max_points)
    layout = _point_layout(version, sh_degree)
    need = num_points * sum(width for _, width in layout)
    check_compression_ratio(path, need, len(raw), max_ratio, f"spz header ({num_points:,} Gaussians)")
    body = take(need)
    try:
        extra = inflater.decompress(pending.pop() if pending else inflater.unconsumed_tail, 1)
    except zlib.error as exc:
        raise GaussianFormatError(f"{path}: corrupt gzip stream in spz file: {exc}") from exc
    if extra:
        raise GaussianFormatError(f"{path}: spz gzip stream holds more data than its header describes")
    if not inflater.eof:
        raise GaussianFormatError(f"{path}: truncated spz: the gzip stream ends before its checksum")
    if inflater.unused_data:
        raise GaussianFormatError(
            f"{path}: {len(inflater.unused_data):,} bytes of trailing data after the spz gzip stream"
        )
    arrays, offset = {}, 0
    for name, width in layout:
        arrays[name] = body[offset : offset + num_points * width]
        offset += num_points * width
    return (version, num_points, sh_degree, fractional_bits, flags), arrays


def _zstd_decompress(path: Path, frame: bytes, size: int, name: str) -> bytes:
    """Decompress one zstd frame that must hold exactly ``size`` bytes.

    Output is produced in blocks, so memory grows only with data that really decompresses
    (a header lying about sizes fails before a large allocation).
    """
    if frame[:4] != _ZSTD_MAGIC:
        raise GaussianFormatError(f"{path}: spz v4 stream {name!r} is not a zstd frame")
    decompress_into = _zstd_backend(path)
    try:
        out = decompress_into(frame, size + 1)
    except MemoryError:
        out = None  # raised below, once the failed allocation is released
    except Exception as exc:  # each zstd binding raises its own error type on corrupt input
        raise GaussianFormatError(f"{path}: corrupt zstd stream {name!r} in spz file: {_reason(exc)}") from exc
    if out is None:
        raise GaussianFormatError(
            f"{path}: not enough memory to decompress spz v4 stream {name!r} ({size:,} bytes declared)"
        )
    if len(out) != size:
        raise GaussianFormatError(f"{path}: spz v4 stream {name!r} holds {len(out):,} bytes, expected {size:,}")
    return out


def _zstd_backend(path: Path):
    """``(frame, limit) -> bytes`` decompressing at most ``limit`` bytes of one frame."""
    try:
        from compression import zstd as std_zstd  # Python >= 3.14

        def decompress(frame: bytes, limit: int) -> bytes:
            decompressor = std_zstd.ZstdDecompressor()
            out = bytearray()
            pending = frame
            while len(out) < limit and not decompressor.eof:
                block = decompressor.decompress(pending, max_length=min(_READ_BLOCK, limit - len(out)))
                pending = b""
                if not block and decompressor.needs_input:
                    break
                out += block
            return bytes(out)

        return decompress
    except ImportError:
        pass
    try:
        import zstandard
    except ImportError as exc:
        raise MissingDependencyError(
            f"{path}: reading spz version 4 needs a zstd decompressor: pip install zstandard"
        ) from exc

    def decompress(frame: bytes, limit: int) -> bytes:
        out = bytearray()
        reader = zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=False)
        with reader:
            while len(out) < limit:
                block = reader.read(min(_READ_BLOCK, limit - len(out)))
                if not block:
                    break
                out += block
        return bytes(out)

    return decompress


def _read_v4(
    path: Path, raw: bytes, max_points: int, max_ratio: float
) -> tuple[tuple[int, int, int, int, int], dict[str, bytes]]:
    if len(raw) < _V4_HEADER_BYTES:
        raise GaussianFormatError(f"{path}: truncated spz v4 header ({len(raw)} bytes, need {_V4_HEADER_BYTES})")
    magic, version, num_points, sh_degree, fractional_bits, flags, num_streams, toc_offset = struct.unpack(
        "<IIIBBBBI", raw[:20]
    )
    _check_header(path, version, num_points, sh_degree, flags, max_points)
    layout = [(name, width) for name, width in _point_layout(version, sh_degree) if width > 0]
    if num_streams != len(layout):
        raise GaussianFormatError(
            f"{path}: spz v4 with SH degree {sh_degree} must have {len(layout)} streams, header says {num_streams}"
        )
    need = num_points * sum(width for _, width in layout)
    check_compression_ratio(path, need, len(raw), max_ratio, f"spz v4 header ({num_points:,} Gaussians)")
    toc_end = toc_offset + 16 * num_streams
    if toc_offset < _V4_HEADER_BYTES or toc_end > len(raw):
        raise GaussianFormatError(f"{path}: spz v4 stream table at byte {toc_offset} lies outside the file")
    toc = struct.unpack(f"<{2 * num_streams}Q", raw[toc_offset:toc_end])
    arrays, offset = {}, toc_end
    for i, (name, width) in enumerate(layout):
        compressed, uncompressed = toc[2 * i], toc[2 * i + 1]
        if uncompressed != num_points * width:
            raise GaussianFormatError(
                f"{path}: spz v4 stream {name!r} claims {uncompressed:,} bytes; "
                f"{num_points:,} points need {num_points * width:,}"
            )
        if compressed > len(raw) - offset:
            raise GaussianFormatError(
                f"{path}: truncated spz v4: stream {name!r} needs {compressed:,} bytes at byte {offset:,}, "
                f"the file has {len(raw):,}"
            )
        arrays[name] = _zstd_decompress(path, raw[offset : offset + compressed], uncompressed, name)
        offset += compressed
    if offset != len(raw):
        raise GaussianFormatError(f"{path}: spz v4 file has {len(raw) - offset:,} trailing bytes after its streams")
    return (version, num_points, sh_degree, fractional_bits, flags), arrays


def _decode_smallest_three(packed: np.ndarray) -> np.ndarray:
    """``[N]`` uint32 (spz v3) -> ``[N, 4]`` quaternions in spz's xyzw order."""
    n = packed.shape[0]
    largest = (packed >> np.uint32(30)).astype(np.int64)
    quats = np.zeros((n, 4), dtype=np.float64)
    rest = packed.copy()
    rows = np.arange(n)
    # components are packed from the low bits upwards in order 3, 2, 1, 0 (skipping `largest`)
    slot = np.full(n, 3, dtype=np.int64)
    for _ in range(3):
        slot = np.where(slot == largest, slot - 1, slot)
        magnitude = (rest & np.uint32(511)).astype(np.float64) * (math.sqrt(0.5) / 511.0)
        negative = ((rest >> np.uint32(9)) & np.uint32(1)).astype(bool)
        quats[rows, slot] = np.where(negative, -magnitude, magnitude)
        rest = rest >> np.uint32(10)
        slot = slot - 1
    quats[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (quats**2).sum(axis=1)))
    return quats


def read_spz(
    path: Path,
    opacity_eps: float = DEFAULT_OPACITY_EPS,
    coordinates: str = "rdf",
    max_points: int = DEFAULT_MAX_POINTS,
    max_compression_ratio: float = MAX_COMPRESSION_RATIO,
) -> GaussianCloud:
    """Read a Niantic ``.spz`` file (v2, v3 gzip; v4 zstd) into a float32 :class:`GaussianCloud`.

    Args:
        path: the file.
        opacity_eps: clamp of ``a / 255`` before the logit (see
            :data:`~clip_gs.gaussians.formats.splat.DEFAULT_OPACITY_EPS`).
        coordinates: ``"rdf"`` (default) flips y and z from spz's RUB frame into INRIA's RDF
            frame, with the matching quaternion and SH sign changes; ``"stored"`` returns
            positions, rotations and SH as stored.
        max_points: refuse headers claiming more Gaussians (checked before allocating).
        max_compression_ratio: refuse headers declaring more decompressed bytes than this many
            times the file's size (see :mod:`~clip_gs.gaussians.formats.limits`).

    Raises:
        GaussianFormatError: corrupt or truncated file, sizes that disagree with the header or
            exceed the limits above, not a regular file, or not enough memory to decompress.
        UnsupportedFormatError: a version other than 2, 3, 4, SH degree > 3, or extensions.
        MissingDependencyError: a v4 file without a zstd decompressor installed.
    """
    path = Path(path)
    if coordinates not in ("stored", "rdf"):
        raise ConfigError(f"coordinates must be 'stored' or 'rdf', got {coordinates!r}")
    raw = read_regular_file(path)
    if raw[:2] == _GZIP_MAGIC:
        fields, arrays = _inflate_legacy(path, raw, max_points, max_compression_ratio)
    elif raw[:4] == b"NGSP":
        version = struct.unpack("<I", raw[4:8])[0] if len(raw) >= 8 else None
        if version is None:
            raise GaussianFormatError(f"{path}: truncated spz header ({len(raw)} bytes)")
        if version != 4:
            raise UnsupportedFormatError(
                f"{path}: uncompressed spz version {version} is not supported (v2/v3 are gzipped, v4 uses zstd streams)"
            )
        fields, arrays = _read_v4(path, raw, max_points, max_compression_ratio)
    else:
        raise GaussianFormatError(f"{path}: not an spz file (neither gzip nor the NGSP magic)")
    version, n, sh_degree, fractional_bits, _ = fields
    return _decode(path, version, n, sh_degree, fractional_bits, arrays, opacity_eps, coordinates)


def _decode(path, version, n, sh_degree, fractional_bits, arrays, opacity_eps, coordinates) -> GaussianCloud:
    pos = np.frombuffer(arrays["positions"], dtype=np.uint8).reshape(n, 3, 3).astype(np.int32)
    fixed = pos[..., 0] | (pos[..., 1] << 8) | (pos[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) * 2.0 ** (-fractional_bits)

    log_scales = np.frombuffer(arrays["scales"], dtype=np.uint8).reshape(n, 3).astype(np.float64) / 16.0 - 10.0
    colors = np.frombuffer(arrays["colors"], dtype=np.uint8).reshape(n, 3).astype(np.float64)
    k = sh_coeff_count(sh_degree)
    # float32 from the start: (b - 128) / 128 is exact in float32, and the SH is most of the memory
    sh = np.empty((n, k, 3), dtype=np.float32)
    sh[:, 0, :] = (colors / 255.0 - 0.5) / SPZ_COLOR_SCALE
    if k > 1:
        rest = np.frombuffer(arrays["sh"], dtype=np.uint8).reshape(n, k - 1, 3)
        np.subtract(rest, np.float32(128.0), out=sh[:, 1:, :], dtype=np.float32)
        sh[:, 1:, :] /= np.float32(128.0)

    if version == 2:
        xyz = np.frombuffer(arrays["rotations"], dtype=np.uint8).reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz**2).sum(axis=1)))
        xyzw = np.concatenate([xyz, w[:, None]], axis=1)
    else:
        xyzw = _decode_smallest_three(np.frombuffer(arrays["rotations"], dtype="<u4").astype(np.uint32))
    quats = xyzw[:, [3, 0, 1, 2]]

    if coordinates == "rdf":
        means = means * _FLIP_XYZ
        quats = quats * np.concatenate([[1.0], _FLIP_XYZ])
        if k > 1:
            sh[:, 1:, :] *= _FLIP_SH[: k - 1, None].astype(np.float32)
    alphas = np.frombuffer(arrays["alphas"], dtype=np.uint8)
    return GaussianCloud(
        means=torch.from_numpy(means.astype(np.float32)),
        sh=torch.from_numpy(sh),
        opacity_logits=torch.from_numpy(opacity_logits_from_bytes(alphas, opacity_eps)),
        log_scales=torch.from_numpy(log_scales.astype(np.float32)),
        quats=torch.from_numpy(quats.astype(np.float32)),
        source=str(path),
    )
