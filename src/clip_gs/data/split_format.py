"""What a split written by :func:`~clip_gs.data.shards.write_split` is on disk, and the checks every
reader of a split applies before LitData (or anything else) touches its bytes.

A split folder holds ``index.json`` and chunk files ``chunk-<r>-<i>.bin``. The index is refused
(:class:`~clip_gs.errors.DatasetError` naming the split's ``index.json`` and the field) unless it is
exactly what clip-gs writes:

- top level ``{"chunks", "config", "updated_at"}``; ``updated_at`` 32 lowercase hex digits (a
  digest: LitData uses it as a cache folder name, so nothing else may get there);
- ``config`` equal to :data:`RECORD_CONFIG` (the record layout ``id: str, sha256: str, blob: bytes``,
  uncompressed, unencrypted, read with LitData's ``PyTreeLoader``); only its ``chunk_bytes`` (the
  writer's chunk budget, ``1 .. MAX_CHUNK_FILE_BYTES``) may vary. Any other ``data_format``
  (``pickle`` above all: LitData would unpickle chunk bytes) is refused;
- ``chunks``: 1 or more entries ``{"chunk_bytes", "chunk_size", "dim", "filename"}``; ``filename``
  a bare ``chunk-<r>-<i>.bin`` name (:data:`CHUNK_NAME`: no folder, no ``..``, no absolute path, so
  neither a local path nor an ``s3://`` key leaves the split), each name once; ``dim`` null;
  ``chunk_bytes`` the chunk file's size, at most :data:`MAX_CHUNK_FILE_BYTES`; ``chunk_size`` (its
  record count) at least 1 and small enough for ``chunk_bytes``: a chunk of ``n`` records takes at
  least ``8 + n * MIN_RECORD_BYTES`` bytes, so a count that could not fit is refused before any loop
  over it.
- the whole ``index.json`` is at most :data:`MAX_INDEX_BYTES`.

Chunk framing (LitData's, written by ``BinaryWriter``): ``uint32 n | uint32 offsets[n + 1] | items``
with ``offsets[0] == 4 * (n + 2)``, strictly increasing by at least :data:`MIN_ITEM_BYTES`, and
``offsets[n]`` the file size; an item is ``uint32 sizes[3] | id | sha256 | blob``.
:func:`check_chunk_table` and :func:`parse_item` enforce it; a chunk that breaks it is a
:class:`~clip_gs.errors.CorruptSampleError`.

Local chunk files must be regular files (a FIFO, a device such as ``/dev/zero`` or a folder is
refused) that resolve, symlinks followed, to a file inside their split folder
(:func:`check_local_chunks`).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from clip_gs.errors import CorruptSampleError, DatasetError
from clip_gs.gaussians.files import check_regular_file

INDEX_NAME = "index.json"

MAX_INDEX_BYTES = 64 << 20
"""Largest ``index.json`` read (64 MiB: about 800,000 chunks, 3 TB of 4 MB chunks)."""

MAX_CHUNK_FILE_BYTES = (1 << 32) - 1
"""Largest chunk file: LitData's chunk offsets are uint32."""

RECORD_KEYS = ("id", "sha256", "blob")
"""The fields of a stored record, in the order they are written."""

ITEM_HEADER_BYTES = 4 * len(RECORD_KEYS)
"""An item starts with the byte size of each field (uint32)."""

SHA256_HEX_BYTES = 64

MIN_ITEM_BYTES = ITEM_HEADER_BYTES + SHA256_HEX_BYTES
"""Smallest item: the field sizes and a hex SHA-256 digest (an empty id and blob)."""

MIN_RECORD_BYTES = 4 + MIN_ITEM_BYTES
"""Smallest share of a chunk one record takes: its offset entry and its item."""

CHUNK_NAME = re.compile(r"chunk-\d{1,9}-\d{1,9}\.bin")
"""The only chunk file names a split may list (what ``BinaryWriter`` writes)."""

RECORD_CONFIG = {
    "chunk_size": None,
    "compression": None,
    "compression_batch_size": None,
    "compression_level": None,
    "data_format": ["str", "str", "bytes"],
    "encryption": None,
    "ipc_compression": None,
    "item_loader": "PyTreeLoader",
    "types": {"blob": "bytes", "id": "str", "sha256": "str"},
}
"""The ``config`` of every split clip-gs writes, but for ``chunk_bytes`` and ``data_spec``
(:func:`record_data_spec`)."""

_CHUNK_KEYS = {"chunk_bytes", "chunk_size", "dim", "filename"}
_UPDATED_AT = re.compile(r"[0-9a-f]{32}")


@lru_cache(maxsize=1)
def record_data_spec() -> str:
    """The ``data_spec`` LitData's writer records for a ``{"id", "sha256", "blob"}`` record."""
    from litdata.utilities._pytree import tree_flatten, treespec_dumps

    return treespec_dumps(tree_flatten({"id": "", "sha256": "", "blob": b""})[1])


@dataclass(frozen=True)
class ChunkEntry:
    """One chunk of a split: its file name, record count and byte size."""

    filename: str
    chunk_size: int
    chunk_bytes: int


@dataclass(frozen=True)
class SplitIndex:
    """A checked ``index.json`` (see the module docstring).

    Attributes:
        location: the ``index.json`` it was read from (names it in errors).
        chunks: the chunks in record order.
        data: the index as parsed (what LitData reads).
    """

    location: str
    chunks: tuple[ChunkEntry, ...]
    data: dict

    @property
    def num_records(self) -> int:
        return sum(c.chunk_size for c in self.chunks)

    def check_same(self, config: dict, chunks: list, where: str) -> None:
        """Refuse an index LitData loaded (``config``, ``chunks``; ``data_spec`` already a tree spec)
        that is not this one, e.g. a cached or re-downloaded copy that changed after the check.

        Raises:
            DatasetError: naming ``where`` and this index.
        """
        from litdata.utilities._pytree import treespec_dumps

        loaded = dict(config)
        spec = loaded.pop("data_spec", None)
        expected = dict(self.data["config"])
        expected_spec = expected.pop("data_spec")
        if spec is not None and not isinstance(spec, str):  # LitData has turned it into a tree spec
            spec = treespec_dumps(spec)
        same_spec = spec == expected_spec
        if loaded != expected or not same_spec or list(chunks) != self.data["chunks"]:
            raise DatasetError(f"{where}: the index LitData loaded differs from {self.location}, which was checked; "
                               "delete the cached copy and read the split again")  # fmt: skip


def _field(location: str, name: str, problem: str) -> DatasetError:
    return DatasetError(f"{location}: field {name}: {problem}; not a split written by clip-gs (write_split)")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_split_index(data: bytes, location: str) -> SplitIndex:
    """Check the bytes of a split's ``index.json`` (module docstring); chunk files are not looked at.

    Args:
        location: the file, named in errors.

    Raises:
        DatasetError: naming ``location`` and the field.
    """
    if len(data) > MAX_INDEX_BYTES:
        raise DatasetError(f"{location}: {len(data):,} bytes, more than an index.json may have ({MAX_INDEX_BYTES:,})")
    try:
        index = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or nesting deeper than Python's stack
        raise DatasetError(f"{location}: not valid JSON: {exc}") from exc
    except MemoryError as exc:
        raise DatasetError(f"{location}: too large to parse") from exc
    if not isinstance(index, dict):
        raise DatasetError(f"{location}: not a JSON object; not a split written by clip-gs (write_split)")
    if set(index) != {"chunks", "config", "updated_at"}:
        raise _field(location, "(top level)", f"keys {sorted(index)}, expected chunks, config, updated_at")
    if not isinstance(index["updated_at"], str) or not _UPDATED_AT.fullmatch(index["updated_at"]):
        raise _field(location, "updated_at", "not a 32-digit hex digest")
    config = index["config"]
    if not isinstance(config, dict):
        raise _field(location, "config", "not an object")
    expected = RECORD_CONFIG | {"chunk_bytes": None, "data_spec": None}
    for key in sorted(set(config) | set(expected)):
        if key not in config or key not in expected:
            raise _field(location, f"config.{key}", "missing" if key not in config else "unknown")
        value = config[key]
        if key == "chunk_bytes":
            if not _int(value) or not 1 <= value <= MAX_CHUNK_FILE_BYTES:
                raise _field(location, "config.chunk_bytes", f"must be an integer 1..{MAX_CHUNK_FILE_BYTES}")
        elif key == "data_spec":
            if value != record_data_spec():
                raise _field(location, "config.data_spec", "not the {id, sha256, blob} record clip-gs writes")
        elif value != RECORD_CONFIG[key]:
            raise _field(location, f"config.{key}", f"is {_short(value)}, clip-gs writes and reads only "
                                                     f"{_short(RECORD_CONFIG[key])}")  # fmt: skip
    chunks = index["chunks"]
    if not isinstance(chunks, list) or not chunks:
        raise _field(location, "chunks", "must be a non-empty list")
    entries, names = [], set()
    for i, chunk in enumerate(chunks):
        where = f"chunks[{i}]"
        if not isinstance(chunk, dict) or set(chunk) != _CHUNK_KEYS:
            raise _field(location, where, f"must be an object with keys {sorted(_CHUNK_KEYS)}")
        name, size, nbytes = chunk["filename"], chunk["chunk_size"], chunk["chunk_bytes"]
        if not isinstance(name, str) or not CHUNK_NAME.fullmatch(name):
            raise _field(location, f"{where}.filename", f"{_short(name)} is not a chunk file name inside the split "
                                                        "(chunk-<r>-<i>.bin)")  # fmt: skip
        if name in names:
            raise _field(location, f"{where}.filename", f"{name} is listed twice")
        names.add(name)
        if chunk["dim"] is not None:
            raise _field(location, f"{where}.dim", "must be null (records are not token blocks)")
        if not _int(nbytes) or not 1 <= nbytes <= MAX_CHUNK_FILE_BYTES:
            raise _field(location, f"{where}.chunk_bytes", f"must be an integer 1..{MAX_CHUNK_FILE_BYTES}")
        if not _int(size) or size < 1 or 8 + size * MIN_RECORD_BYTES > nbytes:
            raise _field(location, f"{where}.chunk_size", f"{_short(size)} records cannot fit in {nbytes} bytes "
                                                          f"(each takes at least {MIN_RECORD_BYTES})")  # fmt: skip
        entries.append(ChunkEntry(name, size, nbytes))
    return SplitIndex(location, tuple(entries), index)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_local_chunks(index: SplitIndex, folder: str | os.PathLike) -> None:
    """Check the chunk files of a local split: each a regular file inside ``folder`` (symlinks
    resolved) whose size is its ``chunk_bytes``.

    Raises:
        DatasetError: naming the chunk and the problem.
    """
    root = Path(folder).resolve()
    for chunk in index.chunks:
        path = Path(folder, chunk.filename)
        if path.resolve().parent != root:
            raise DatasetError(f"{path}: resolves to {path.resolve()}, outside its split folder {root}")
        info = check_regular_file(path, DatasetError)  # missing, or a FIFO, device or folder
        if info.st_size != chunk.chunk_bytes:
            raise DatasetError(f"{path}: {info.st_size} bytes, {index.location} says {chunk.chunk_bytes}")


def check_chunk_table(head: bytes, chunk: ChunkEntry, file_size: int) -> np.ndarray:
    """The ``n + 1`` item offsets (int64) of a chunk from its first ``4 * (n + 2)`` bytes, checked
    (module docstring). ``n`` is the index's record count, which fits the chunk's size, so the table
    takes at most a tenth of the chunk's size in memory (8 bytes per record of at least
    :data:`MIN_RECORD_BYTES`).

    Raises:
        CorruptSampleError: the chunk's size, record count or offset table is not the index's.
    """
    n = chunk.chunk_size
    if file_size != chunk.chunk_bytes:
        raise CorruptSampleError(f"{file_size} bytes, the index says {chunk.chunk_bytes}")
    if len(head) != 4 * (n + 2):
        raise CorruptSampleError("the chunk ends inside its offset table")
    table = np.frombuffer(head, dtype="<u4").astype(np.int64)
    count, offsets = int(table[0]), table[1:]
    if count != n:
        raise CorruptSampleError(f"the chunk holds {count} records, the index says {n}")
    if offsets[0] != 4 * (n + 2) or offsets[-1] != file_size:
        raise CorruptSampleError("the chunk's offset table does not span its items")
    if bool((np.diff(offsets) < MIN_ITEM_BYTES).any()):
        raise CorruptSampleError("the chunk's offset table does not increase by whole items")
    return offsets


def parse_item(raw: bytes | memoryview) -> dict:
    """A record ``{"id", "sha256", "blob"}`` from an item's bytes (module docstring).

    Raises:
        CorruptSampleError: field sizes that do not add up to the item, an id or digest that is not text.
    """
    raw = memoryview(raw)
    if len(raw) < MIN_ITEM_BYTES:
        raise CorruptSampleError(f"a {len(raw)}-byte item is too short for a record")
    sizes = struct.unpack_from(f"<{len(RECORD_KEYS)}I", raw)
    if sizes[1] != SHA256_HEX_BYTES or ITEM_HEADER_BYTES + sum(sizes) != len(raw):
        raise CorruptSampleError("the item's field sizes do not match its length")
    start = ITEM_HEADER_BYTES
    fields = []
    for size in sizes:
        fields.append(raw[start : start + size])
        start += size
    try:
        return {"id": str(fields[0], "utf-8"), "sha256": str(fields[1], "ascii"), "blob": bytes(fields[2])}
    except UnicodeDecodeError as exc:
        raise CorruptSampleError(f"the record's id or digest is not text ({exc})") from exc


__all__ = [
    "CHUNK_NAME",
    "INDEX_NAME",
    "MAX_CHUNK_FILE_BYTES",
    "MAX_INDEX_BYTES",
    "MIN_ITEM_BYTES",
    "MIN_RECORD_BYTES",
    "RECORD_CONFIG",
    "RECORD_KEYS",
    "ChunkEntry",
    "SplitIndex",
    "check_chunk_table",
    "check_local_chunks",
    "parse_item",
    "parse_split_index",
]
