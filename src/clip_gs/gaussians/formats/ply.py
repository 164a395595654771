"""The INRIA 3DGS ``.ply`` format (what the reference trainer and nearly every 3DGS tool write).

Vertex properties, found by name: ``x y z`` (positions), ``nx ny nz`` (optional, ignored),
``f_dc_0..2`` (SH DC), ``f_rest_0..M-1`` (higher-order SH, **channel-major**: all R
coefficients, then G, then B; ``M = 3 * ((d+1)^2 - 1)`` for degree d), ``opacity`` (logit),
``scale_0..2`` (log), ``rot_0..3`` (quaternion wxyz). Binary little/big-endian and ASCII.
Other properties and other scalar elements are tolerated and reported with an
:class:`UnknownPropertiesWarning`; they are not loaded.

Rules (refused with a :class:`GaussianFormatError` naming the file and the property), beyond
the header rules of :mod:`~clip_gs.gaussians.formats.ply_header` (``end_header`` as a whole line,
no repeated element, exact size of binary files):

- The properties read must have a float type (:data:`FLOAT_TYPES`): an integer ``opacity`` or
  ``scale_0`` would be a quantised value, not the logit / log the format stores.
- No element may have list properties (a 3DGS ply holds scalar rows only), so the data size is
  exact for binary files.
- An ASCII file holds exactly one line per declared row; non-blank lines after the last declared
  row are data beyond the declared counts.
- Log-scales must lie in the range of :mod:`~clip_gs.gaussians.formats.limits`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import plyfile
import torch

from clip_gs.errors import ConfigError, GaussianFormatError, NotGaussianDataError, UnsupportedFormatError
from clip_gs.gaussians.cloud import MAX_SH_DEGREE, GaussianCloud, sh_coeff_count
from clip_gs.gaussians.files import open_regular_file
from clip_gs.gaussians.formats.limits import check_log_scales
from clip_gs.gaussians.formats.ply_header import PLY_SCALAR_TYPES, PlyHeader, read_ply_header

POSITION = ("x", "y", "z")
NORMALS = ("nx", "ny", "nz")
SH_DC = ("f_dc_0", "f_dc_1", "f_dc_2")
OPACITY = ("opacity",)
SCALES = ("scale_0", "scale_1", "scale_2")
ROTATION = ("rot_0", "rot_1", "rot_2", "rot_3")
REQUIRED = POSITION + SH_DC + OPACITY + SCALES + ROTATION

FLOAT_TYPES = ("f4", "f8")
"""numpy codes of the PLY types accepted for the properties read (``float``/``float32``,
``double``/``float64``)."""


class UnknownPropertiesWarning(UserWarning):
    """A 3DGS ply holds vertex properties or scalar elements that clip_gs does not use (they are
    not loaded)."""


def f_rest_names(degree: int) -> list[str]:
    return [f"f_rest_{i}" for i in range(3 * (sh_coeff_count(degree) - 1))]


def _classify_non_gaussian(path: Path, header: PlyHeader, missing: list[str]) -> str:
    vertex = header.element("vertex")
    names = set(vertex.property_names) if vertex else set()
    if header.element("chunk") is not None:
        return (
            f"{path}: this is a SuperSplat/PlayCanvas compressed PLY (it has a 'chunk' element); "
            "compressed PLY is not supported by this reader"
        )
    kind = "a mesh PLY (it has faces)" if header.element("face") is not None else "a point-cloud PLY"
    if set(POSITION) <= names:
        return f"{path}: {kind}, not a 3DGS PLY: vertex lacks the Gaussian properties {missing}"
    return f"{path}: not a 3DGS PLY: vertex lacks {missing}"


def read_ply(path: Path) -> GaussianCloud:
    """Read an INRIA 3DGS ply into a float32 :class:`GaussianCloud` (rules: see the module).

    Raises:
        GaussianFormatError: unreadable, truncated, data beyond the declared counts, a property
            of a non-float type, list properties, log-scales out of range, or not a 3DGS ply
            (the message says what the file is and what is missing).
        UnsupportedFormatError: a compressed PLY given to this reader.
    """
    path = Path(path)
    header = read_ply_header(path)
    vertex = header.element("vertex")
    if vertex is None:
        raise GaussianFormatError(
            f"{path}: PLY has no 'vertex' element (elements: {[e.name for e in header.elements]})"
        )
    names = vertex.property_names
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        message = _classify_non_gaussian(path, header, missing)
        error = UnsupportedFormatError if header.element("chunk") is not None else NotGaussianDataError
        raise error(message)
    for element in header.elements:
        list_props = [p.name for p in element.properties if p.list_count_dtype is not None]
        if list_props:
            raise GaussianFormatError(
                f"{path}: element {element.name!r} has list properties {list_props}; a 3DGS ply has only scalars"
            )
    rest = [name for name in names if name.startswith("f_rest_")]
    degree = _sh_degree_from_rest(path, len(rest))
    expected_rest = f_rest_names(degree)
    if sorted(rest) != sorted(expected_rest):
        raise GaussianFormatError(f"{path}: f_rest properties are not f_rest_0..f_rest_{len(rest) - 1}")
    used = set(REQUIRED) | set(expected_rest)
    type_names = {code: name for name, code in reversed(PLY_SCALAR_TYPES.items())}
    for prop in vertex.properties:
        if prop.name in used and prop.dtype not in FLOAT_TYPES:
            raise GaussianFormatError(
                f"{path}: vertex property {prop.name!r} has type {type_names[prop.dtype]}; a 3DGS ply stores it "
                "as float or double (an integer value would be a quantised colour, opacity or scale, "
                "not the raw value this format holds)"
            )
    known = used | set(NORMALS)
    unknown = [name for name in names if name not in known]
    if unknown:
        warnings.warn(
            f"{path}: ignoring {len(unknown)} unknown vertex propert{'y' if len(unknown) == 1 else 'ies'}: {unknown}",
            UnknownPropertiesWarning,
            stacklevel=3,
        )
    others = [element.name for element in header.elements if element.name != "vertex"]
    if others:
        warnings.warn(
            f"{path}: ignoring {len(others)} element{'' if len(others) == 1 else 's'} other than 'vertex': {others}",
            UnknownPropertiesWarning,
            stacklevel=3,
        )

    try:
        if header.format == "ascii":
            with open_regular_file(path) as fh:
                data = plyfile.PlyData.read(fh)["vertex"].data
            _check_ascii_rows(path, header)
        else:
            # Binary data is memory-mapped (sizes were checked against the file above) and copied
            # column by column below; plyfile's non-mmap binary path is ~30x slower on 1M Gaussians.
            data = _map_binary_vertex(path, header)
    except (plyfile.PlyParseError, ValueError, EOFError, OSError, KeyError, IndexError) as exc:
        raise GaussianFormatError(f"{path}: cannot parse PLY data: {exc}") from exc

    def columns(fields) -> np.ndarray:
        return np.stack([np.asarray(data[name], dtype=np.float32) for name in fields], axis=-1)

    n = len(data)
    k = sh_coeff_count(degree)
    sh = np.empty((n, k, 3), dtype=np.float32)
    sh[:, 0, :] = columns(SH_DC)
    if degree > 0:
        # channel-major: f_rest_{c*(k-1)+j} is coefficient j+1 of channel c
        sh[:, 1:, :] = columns(expected_rest).reshape(n, 3, k - 1).transpose(0, 2, 1)
    log_scales = columns(SCALES)
    for i, name in enumerate(SCALES):
        check_log_scales(path, log_scales[:, i], f"vertex property {name!r}")
    return GaussianCloud(
        means=torch.from_numpy(columns(POSITION)),
        sh=torch.from_numpy(sh),
        opacity_logits=torch.from_numpy(columns(OPACITY)[:, 0].copy()),
        log_scales=torch.from_numpy(log_scales),
        quats=torch.from_numpy(columns(ROTATION)),
        source=str(path),
    )


def _map_binary_vertex(path: Path, header: PlyHeader) -> np.ndarray:
    """Memory-map only the vertex rows of a binary PLY whose elements have no list properties.

    plyfile would parse every element, and pre-allocates a list length read from the data of
    any other element (2^32 - 1 items: 16 GiB) before finding the file too short.
    """
    offset = header.header_bytes
    for element in header.elements:
        if element.name == "vertex":
            dtype = np.dtype([(p.name, header.byte_order + p.dtype) for p in element.properties])
            if element.count == 0:
                return np.empty(0, dtype=dtype)
            with open_regular_file(path) as fh:
                return np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=(element.count,))
        offset += element.count * element.row_bytes()
    raise GaussianFormatError(f"{path}: PLY has no 'vertex' element")


def _check_ascii_rows(path: Path, header: PlyHeader) -> None:
    """Refuse non-blank lines after the rows an ASCII PLY declares (one line per row)."""
    rows = sum(element.count for element in header.elements)
    with open_regular_file(path) as fh:
        fh.seek(header.header_bytes)
        for index, line in enumerate(fh):
            if index >= rows and line.strip():
                raise GaussianFormatError(
                    f"{path}: data beyond the {rows:,} rows the ASCII PLY header declares "
                    f"(line {index + 1} after the header: {line[:40]!r})"
                )


def _sh_degree_from_rest(path: Path, count: int) -> int:
    for degree in range(MAX_SH_DEGREE + 1):
        if count == 3 * (sh_coeff_count(degree) - 1):
            return degree
    raise GaussianFormatError(
        f"{path}: {count} f_rest properties; expected 3*((d+1)^2-1) for SH degree d in 0..3 (0, 9, 24 or 45)"
    )


UP_AXIS_COMMENT = "up_axis"
"""Header comment ``comment up_axis +y`` with which clip-gs records a file's world up axis."""

UP_AXIS_VALUES = ("+y", "-y", "+z", "-z")


def declared_up_axis(header: PlyHeader) -> str | None:
    """The up axis a ply header declares in a ``comment up_axis <axis>`` line (clip-gs writes one
    when asked, see :func:`write_ply`), or None."""
    for comment in header.comments:
        key, _, value = comment.strip().partition(" ")
        if key == UP_AXIS_COMMENT and value.strip() in UP_AXIS_VALUES:
            return value.strip()
    return None


def write_ply(
    cloud: GaussianCloud, path: Path, ascii: bool = False, byte_order: str = "<", up_axis: str | None = None
) -> None:
    """Write ``cloud`` as an INRIA 3DGS ply (property names and order as the reference trainer).

    Normals are written as zeros, as the reference trainer does. float32 values round-trip
    bitwise through binary and ASCII files.

    Args:
        ascii: write the ASCII variant instead of binary.
        byte_order: ``"<"`` little-endian (default) or ``">"`` big-endian, for binary files.
        up_axis: record the object's world up axis (``"+y"``, ``"-y"``, ``"+z"``, ``"-z"``) as a
            header comment, read back by :func:`declared_up_axis` (``clip-gs render`` uses it).
    """
    if byte_order not in ("<", ">"):
        raise ConfigError(f"byte_order must be '<' or '>', got {byte_order!r}")
    if up_axis is not None and up_axis not in UP_AXIS_VALUES:
        raise ConfigError(f"up_axis must be one of {UP_AXIS_VALUES}, got {up_axis!r}")
    cloud = cloud.to(device="cpu", dtype=torch.float32)
    n, k = cloud.num_gaussians, cloud.sh.shape[-2]
    rest = f_rest_names(cloud.sh_degree)
    names = [*POSITION, *NORMALS, *SH_DC, *rest, *OPACITY, *SCALES, *ROTATION]
    sh = cloud.sh.detach().numpy()
    blocks = [
        cloud.means.detach().numpy(),
        np.zeros((n, 3), dtype=np.float32),
        sh[:, 0, :],
        sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1)),
        cloud.opacity_logits.detach().numpy()[:, None],
        cloud.log_scales.detach().numpy(),
        cloud.quats.detach().numpy(),
    ]
    values = np.concatenate(blocks, axis=1)
    record = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        record[name] = values[:, i]
    element = plyfile.PlyElement.describe(record, "vertex")
    try:
        comments = [] if up_axis is None else [f"{UP_AXIS_COMMENT} {up_axis}"]
        plyfile.PlyData([element], text=ascii, byte_order=byte_order, comments=comments).write(str(path))
    except OSError as exc:
        raise GaussianFormatError(f"{path}: cannot write: {exc.strerror or exc}") from exc
