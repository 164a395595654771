"""The antimatter15 ``.splat`` format (the WebGL viewer's format, also written by many tools).

No header: the file is a flat array of 32-byte records, one per Gaussian, little-endian:

======== ================ ==========================================================
bytes    type             meaning
======== ================ ==========================================================
0..11    float32 x3       position
12..23   float32 x3       scale, **linear** (not log)
24..27   uint8 x4         colour RGBA: ``rgb * 255`` and ``alpha = opacity * 255``
28..31   uint8 x4         rotation quaternion **wxyz**, byte = ``q * 128 + 128``
======== ================ ==========================================================

The format carries no SH beyond the base colour, stores the colour clamped to [0, 1] and
has no magic bytes, so it is recognised only by its ``.splat`` extension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.gaussians.cloud import SH_C0, GaussianCloud
from clip_gs.gaussians.files import read_regular_file
from clip_gs.gaussians.formats.limits import check_log_scales

SPLAT_RECORD = np.dtype(
    [("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rotation", "u1", (4,))]
)
"""One ``.splat`` record (32 bytes)."""

DEFAULT_OPACITY_EPS = 1e-6
"""Default clamp for 8-bit opacities before the logit: ``a / 255`` is clamped to
``[eps, 1 - eps]`` so that bytes 0 and 255 give finite logits (about -13.8 and +13.8). The
same value is used by PlayCanvas' readers; every 8-bit-opacity reader here takes ``opacity_eps``."""


def opacity_logits_from_bytes(alpha: np.ndarray, eps: float = DEFAULT_OPACITY_EPS) -> np.ndarray:
    """Logits of 8-bit opacities.

    Args:
        alpha: ``[N]`` uint8 (or any integer / float array in 0..255).
        eps: ``alpha / 255`` is clamped to ``[eps, 1 - eps]`` first; must lie in (0, 0.5).

    Returns:
        ``[N]`` float32 logits, finite.
    """
    if not 0.0 < eps < 0.5:
        raise ConfigError(f"opacity_eps must lie in (0, 0.5), got {eps}")
    unit = np.clip(np.asarray(alpha, dtype=np.float64) / 255.0, eps, 1.0 - eps)
    return np.log(unit / (1.0 - unit)).astype(np.float32)


def read_splat(path: Path, opacity_eps: float = DEFAULT_OPACITY_EPS) -> GaussianCloud:
    """Read an antimatter15 ``.splat`` file into a float32 :class:`GaussianCloud` (SH degree 0).

    Conversion to the raw INRIA convention: ``f_dc = (rgb / 255 - 0.5) / SH_C0``,
    ``opacity_logit = logit(clamp(a / 255, eps, 1 - eps))``, ``log_scale = log(scale)``,
    ``quat = (bytes - 128) / 128`` (wxyz, not renormalised).

    Args:
        path: the file.
        opacity_eps: clamp of ``a / 255`` before the logit (see :data:`DEFAULT_OPACITY_EPS`).

    Raises:
        GaussianFormatError: not a regular file (a FIFO or a device such as ``/dev/zero``), empty
            file, size not a multiple of 32 bytes, a non-positive or non-finite scale, a scale
            whose log lies outside the range of :mod:`~clip_gs.gaussians.formats.limits`,
            non-finite position, or an all-zero rotation (naming its index).
    """
    path = Path(path)
    raw = read_regular_file(path)
    size = len(raw)
    if size == 0 or size % SPLAT_RECORD.itemsize:
        raise GaussianFormatError(
            f"{path}: a .splat file is a whole number of {SPLAT_RECORD.itemsize}-byte records, "
            f"got {size:,} bytes" + (" (empty file)" if size == 0 else f" ({size % SPLAT_RECORD.itemsize} left over)")
        )
    records = np.frombuffer(raw, dtype=SPLAT_RECORD)
    scales = records["scale"].astype(np.float32)
    bad_scale = ~(np.isfinite(scales) & (scales > 0)).all(axis=1)
    if bad_scale.any():
        index = int(np.flatnonzero(bad_scale)[0])
        raise GaussianFormatError(
            f"{path}: {int(bad_scale.sum())} Gaussian(s) have a non-positive or non-finite scale "
            f"(first: index {index}, scale {scales[index].tolist()}); .splat scales are linear and must be > 0"
        )
    log_scales = np.log(scales)
    check_log_scales(path, log_scales, "scale")
    quats = (records["rotation"].astype(np.float32) - 128.0) / 128.0
    zero = ~quats.any(axis=1)
    if zero.any():
        index = int(np.flatnonzero(zero)[0])
        raise GaussianFormatError(
            f"{path}: {int(zero.sum())} rotation(s) are all zero (bytes 128,128,128,128), first at index {index}"
        )
    rgba = records["rgba"]
    sh = ((rgba[:, :3].astype(np.float32) / 255.0 - 0.5) / SH_C0)[:, None, :]
    return GaussianCloud(
        means=torch.from_numpy(records["position"].astype(np.float32)),
        sh=torch.from_numpy(np.ascontiguousarray(sh)),
        opacity_logits=torch.from_numpy(opacity_logits_from_bytes(rgba[:, 3], opacity_eps)),
        log_scales=torch.from_numpy(log_scales),
        quats=torch.from_numpy(quats),
        source=str(path),
    )


def splat_importance_order(cloud: GaussianCloud) -> torch.Tensor:
    """``[N]`` indices sorting Gaussians by decreasing ``prod(scale) * opacity``.

    This is the order antimatter15's ``convert.py`` writes (largest, most opaque first), which
    lets a streaming viewer show the object early. Ties keep the input order.
    """
    importance = cloud.log_scales.sum(dim=-1) + torch.nn.functional.logsigmoid(cloud.opacity_logits)
    return torch.sort(-importance, stable=True).indices


def write_splat(cloud: GaussianCloud, path: Path, sort: bool = False, drop_sh: bool = False) -> None:
    """Write ``cloud`` as antimatter15 ``.splat``.

    Quantisation (with rounding to the nearest byte): ``rgb`` is the clamped base colour
    (:attr:`GaussianCloud.rgb`) times 255, ``alpha = opacity * 255``, rotation bytes
    ``round(q / |q| * 128 + 128)`` clipped to 0..255. Positions and (linear) scales are float32.

    Args:
        sort: False (default) keeps the cloud's order, so Gaussian i of the file is Gaussian i of
            the cloud; True writes in antimatter15's importance order (see
            :func:`splat_importance_order`), as its converter does.
        drop_sh: the format has no higher-order SH; a cloud with SH degree > 0 is refused
            unless this is True (then only the base colour is written).

    Raises:
        GaussianFormatError: SH would be lost without ``drop_sh``, a scale overflows float32,
            or the file cannot be written.
    """
    path = Path(path)
    if cloud.sh_degree > 0 and not drop_sh:
        raise GaussianFormatError(
            f"{path}: .splat stores only the base colour; this cloud has SH degree {cloud.sh_degree}. "
            "Pass drop_sh=True to write it without the higher-order coefficients"
        )
    cloud = cloud.to(device="cpu", dtype=torch.float32)
    if sort:
        cloud = cloud.index(splat_importance_order(cloud))
    records = np.empty(cloud.num_gaussians, dtype=SPLAT_RECORD)
    records["position"] = cloud.means.detach().numpy()
    scales = cloud.scales.detach().numpy()
    if not (np.isfinite(scales) & (scales > 0)).all():
        raise GaussianFormatError(
            f"{path}: some scales overflow or underflow float32 as linear values (log-scale outside about [-103, 88])"
        )
    records["scale"] = scales
    rgb = cloud.rgb.detach().numpy().astype(np.float64)
    alpha = cloud.opacity.detach().numpy().astype(np.float64)
    records["rgba"][:, :3] = np.clip(np.rint(rgb * 255.0), 0, 255)
    records["rgba"][:, 3] = np.clip(np.rint(alpha * 255.0), 0, 255)
    quats = cloud.quats.detach().numpy().astype(np.float64)
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    records["rotation"] = np.clip(np.rint(quats * 128.0 + 128.0), 0, 255)
    try:
        records.tofile(str(path))
    except OSError as exc:
        raise GaussianFormatError(f"{path}: cannot write: {exc.strerror or exc}") from exc
