"""A small, strict PLY header parser used to validate files *before* any data is allocated.

plyfile allocates ``count`` rows as soon as it reads an element line, so a header that claims
10^12 vertices would exhaust memory. Every PLY-based reader in clip_gs parses the header here
first, checks the claimed sizes against the file size, and only then reads the data.

Rules (each refused with a :class:`GaussianFormatError` naming the file):

- The header ends at the first line that is exactly ``end_header`` (LF or CRLF line end); a
  line that merely contains the word (``comment end_header``) does not end it.
- An element name is declared at most once (a second ``vertex`` element is refused).
- A binary file whose elements have no list properties holds exactly the bytes its header
  declares: fewer is a truncated file, more is data beyond the declared counts. With list
  properties the size is known only after reading the lists, so only a lower bound is checked.
- Only regular files are read (:mod:`clip_gs.gaussians.files`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clip_gs.errors import GaussianFormatError
from clip_gs.gaussians.files import open_regular_file

MAX_HEADER_BYTES = 1 << 20
"""A header longer than this is refused (real 3DGS headers are a few hundred bytes)."""

PLY_SCALAR_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass(frozen=True)
class PlyProperty:
    name: str
    dtype: str  # numpy code without byte order, e.g. "f4"
    list_count_dtype: str | None = None  # set for list properties


@dataclass
class PlyElement:
    name: str
    count: int
    properties: list[PlyProperty] = field(default_factory=list)

    @property
    def property_names(self) -> list[str]:
        return [p.name for p in self.properties]

    @property
    def has_lists(self) -> bool:
        return any(p.list_count_dtype is not None for p in self.properties)

    def row_bytes(self) -> int:
        """Bytes per row in a binary file (only for elements without list properties)."""
        return sum(np.dtype(p.dtype).itemsize for p in self.properties)

    def min_row_bytes(self) -> int:
        """Fewest bytes a binary row can take: a list property takes at least its count field."""
        return sum(np.dtype(p.list_count_dtype or p.dtype).itemsize for p in self.properties)


@dataclass
class PlyHeader:
    format: str  # "ascii", "binary_little_endian" or "binary_big_endian"
    elements: list[PlyElement]
    header_bytes: int  # offset of the first data byte
    comments: list[str] = field(default_factory=list)

    @property
    def byte_order(self) -> str:
        return {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "="}[self.format]

    def element(self, name: str) -> PlyElement | None:
        for element in self.elements:
            if element.name == name:
                return element
        return None


_END_HEADER_LINE = re.compile(rb"\nend_header\r?\n")
_END_HEADER_AT_EOF = re.compile(rb"\nend_header\r?$")


def is_ply(head: bytes) -> bool:
    """True when the bytes start with the PLY magic line."""
    return head.startswith(b"ply\n") or head.startswith(b"ply\r\n")


def find_end_header(raw: bytes) -> tuple[int, int] | None:
    """``(start, data)`` of the first line of ``raw`` that is exactly ``end_header``: ``start`` is
    where the header text ends, ``data`` the offset of the first data byte; None when there is none."""
    match = _END_HEADER_LINE.search(raw)
    return None if match is None else (match.start() + 1, match.end())


def read_ply_header(path: Path) -> PlyHeader:
    """Parse and validate the header of the PLY file at ``path``.

    Checks that the header is complete, the format and types are known and, for binary files
    whose elements have no list properties, that the file holds at least the bytes the header
    claims. For ASCII files the claimed row count must fit in the remaining bytes (each value
    takes at least two characters).

    Raises:
        GaussianFormatError: naming the file and the problem.
    """
    with open_regular_file(path) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(MAX_HEADER_BYTES)
        except OSError as exc:
            raise GaussianFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not is_ply(raw):
        raise GaussianFormatError(f"{path}: not a PLY file (missing the 'ply' magic line)")
    found = find_end_header(raw)
    if found is None:
        if _END_HEADER_AT_EOF.search(raw):
            raise GaussianFormatError(f"{path}: PLY header ends without a newline after 'end_header' (truncated file)")
        raise GaussianFormatError(f"{path}: PLY header has no 'end_header' line (truncated or not a PLY file)")
    end, data_start = found
    try:
        text = raw[:end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise GaussianFormatError(f"{path}: PLY header is not ASCII text") from exc

    fmt: str | None = None
    elements: list[PlyElement] = []
    comments: list[str] = []
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        words = line.split()
        if not words:
            continue
        keyword = words[0]
        if keyword in ("comment", "obj_info"):
            comments.append(line.partition(" ")[2])
        elif keyword == "format":
            if len(words) != 3 or words[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise GaussianFormatError(f"{path}: unknown PLY format line {line!r} (line {lineno})")
            fmt = words[1]
        elif keyword == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise GaussianFormatError(f"{path}: bad PLY element line {line!r} (line {lineno})")
            if any(element.name == words[1] for element in elements):
                raise GaussianFormatError(
                    f"{path}: PLY header declares the element {words[1]!r} more than once (line {lineno})"
                )
            elements.append(PlyElement(words[1], int(words[2])))
        elif keyword == "property":
            if not elements:
                raise GaussianFormatError(f"{path}: PLY property before any element (line {lineno})")
            if len(words) == 5 and words[1] == "list":
                count_t, item_t, name = words[2], words[3], words[4]
                if count_t not in PLY_SCALAR_TYPES or item_t not in PLY_SCALAR_TYPES:
                    raise GaussianFormatError(f"{path}: unknown PLY type in {line!r} (line {lineno})")
                prop = PlyProperty(name, PLY_SCALAR_TYPES[item_t], PLY_SCALAR_TYPES[count_t])
            elif len(words) == 3 and words[1] in PLY_SCALAR_TYPES:
                prop = PlyProperty(words[2], PLY_SCALAR_TYPES[words[1]])
            else:
                raise GaussianFormatError(f"{path}: bad PLY property line {line!r} (line {lineno})")
            if prop.name in elements[-1].property_names:
                raise GaussianFormatError(f"{path}: duplicate PLY property {prop.name!r} in element {elements[-1].name!r}")
            elements[-1].properties.append(prop)
        else:
            raise GaussianFormatError(f"{path}: unknown PLY header keyword {keyword!r} (line {lineno})")
    if fmt is None:
        raise GaussianFormatError(f"{path}: PLY header has no 'format' line")
    header = PlyHeader(fmt, elements, data_start, comments)
    _check_size(path, header, size)
    return header


def _check_size(path: Path, header: PlyHeader, size: int) -> None:
    remaining = size - header.header_bytes
    if header.format == "ascii":
        claimed_values = sum(e.count * max(len(e.properties), 1) for e in header.elements)
        if 2 * claimed_values > remaining + 1:
            raise GaussianFormatError(
                f"{path}: truncated ASCII PLY: the header claims {claimed_values:,} values "
                f"but only {remaining:,} bytes follow it"
            )
        return
    # exact without list properties; with them a lower bound (every list empty), which still
    # stops a header claiming 10^12 faces before plyfile allocates them
    need = sum(element.count * element.min_row_bytes() for element in header.elements)
    lists = any(e.has_lists for e in header.elements)
    declared = ", ".join(f"{e.count:,} {e.name}" for e in header.elements)
    if need > remaining:
        raise GaussianFormatError(
            f"{path}: truncated PLY: the header claims {'at least ' if lists else ''}{need:,} data bytes "
            f"({declared}) but only {remaining:,} follow it"
        )
    if need < remaining and not lists:
        raise GaussianFormatError(
            f"{path}: {remaining - need:,} bytes of data beyond what the PLY header declares "
            f"({declared}: {need:,} bytes)"
        )
