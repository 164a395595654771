"""Value and size limits shared by the 3DGS readers.

- **Log-scales** must lie in ``[MIN_LOG_SCALE, MAX_LOG_SCALE]``: above it the covariance
  (``exp(log_scale)^2``) overflows float32 to ``inf``, below it the scale itself underflows
  float32's normal range towards 0. Readers refuse values outside (:func:`check_log_scales`),
  naming the file and the property; real captures stay within about [-20, 3].
- **Compressed containers** (spz's gzip and zstd streams) may declare at most
  ``MAX_COMPRESSION_RATIO`` times the file's size (plus ``COMPRESSION_SLACK_BYTES`` for tiny
  files) as decompressed data (:func:`check_compression_ratio`). Real 3DGS data compresses about
  1.5:1 to 10:1 (quantised positions and rotations are close to random); a file claiming more is
  a decompression bomb or a lying header, and is refused before anything is decompressed.
- **Pickled files** (UniGS's ``.pkl``) may be at most ``MAX_PICKLE_BYTES`` long, checked from the
  file's size before a byte is read (a reader option ``max_bytes``): a real UniGS object (10,000
  Gaussians, captions) is under 1 MB, and every object the restricted unpickler builds costs
  memory in proportion to the bytes it reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clip_gs.errors import ConfigError, GaussianFormatError

MIN_LOG_SCALE = -87.0
"""Smallest accepted log-scale: ``exp(-87)`` is about 1.6e-38, float32's smallest normal number."""

MAX_LOG_SCALE = 44.0
"""Largest accepted log-scale: ``exp(44)^2`` is about 1.6e38, just below float32's largest number."""

MAX_COMPRESSION_RATIO = 64
"""Most decompressed bytes a compressed 3DGS file may declare per byte of file (a reader option
``max_compression_ratio`` where the format has one)."""

MAX_PICKLE_BYTES = 64 << 20
"""Largest pickled 3DGS file read (64 MiB, about 1.2 million Gaussians of 14 float32 values)."""

COMPRESSION_SLACK_BYTES = 4096
"""Decompressed bytes always allowed on top of the ratio, so that tiny files, where headers weigh
more than data, are never refused."""


def check_log_scales(path: Path, values: np.ndarray, name: str) -> None:
    """Refuse finite log-scales outside ``[MIN_LOG_SCALE, MAX_LOG_SCALE]``. NaN and infinity are
    left to the finiteness check of :class:`~clip_gs.gaussians.cloud.GaussianCloud`, which names them.

    Args:
        path: the file, for the message.
        values: ``[N]`` or ``[N, ...]`` log-scales as stored (any float dtype).
        name: the property they come from, for the message (``"scale_0"``, ``"chunk max_scale_x"``).

    Raises:
        GaussianFormatError: naming the file, the property, the count and the first bad index.
    """
    values = np.asarray(values)
    outside = np.isfinite(values) & ((values < MIN_LOG_SCALE) | (values > MAX_LOG_SCALE))
    if not outside.any():
        return
    bad = outside.reshape(len(values), -1).any(axis=1)
    first = int(np.flatnonzero(bad)[0])
    raise GaussianFormatError(
        f"{path}: {int(bad.sum()):,} value(s) of {name} lie outside the log-scale range "
        f"[{MIN_LOG_SCALE:g}, {MAX_LOG_SCALE:g}] (first at index {first}: {values[first].tolist()}); "
        "such scales overflow or underflow float32"
    )


def check_compression_ratio(path: Path, declared: int, file_bytes: int, max_ratio: float, what: str) -> None:
    """Refuse a compressed file declaring more than ``max_ratio * file_bytes +
    COMPRESSION_SLACK_BYTES`` decompressed bytes.

    Raises:
        GaussianFormatError: naming the file, the declared size and the ratio.
        ConfigError: ``max_ratio`` is not positive.
    """
    if not max_ratio > 0:
        raise ConfigError(f"max_compression_ratio must be positive, got {max_ratio}")
    if declared > max_ratio * file_bytes + COMPRESSION_SLACK_BYTES:
        raise GaussianFormatError(
            f"{path}: {what} declares {declared:,} decompressed bytes in a {file_bytes:,}-byte file, "
            f"a compression ratio above the limit of {max_ratio:g}:1 (max_compression_ratio); "
            "refused as a decompression bomb or a corrupt header"
        )
