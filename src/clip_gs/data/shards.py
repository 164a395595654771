"""Triplet shards: one LitData dataset per split, written by :func:`write_split` and streamed by
:class:`TripletShardDataset`.

This module is longer than most on purpose: it holds the writer and the reader of one on-disk format
(with the two private LitData settings the pin exists for), so that a change to the format changes
both sides in one place; the format's parsing rules themselves are in :mod:`clip_gs.data.split_format`.

Layout of a prepared dataset (``<root>`` is a local folder or ``s3://bucket/prefix``)::

    <root>/manifest.json              Manifest (teacher, counts, labels, settings)
    <root>/train/index.json           LitData index of the split's chunks
    <root>/train/chunk-0-<i>.bin      uncompressed chunks of TripletSample.to_record() dicts
    <root>/val/...  <root>/test/...

Records are ``{"id": str, "sha256": str, "blob": bytes}`` (:meth:`TripletSample.to_record`);
every read verifies the checksum, so a damaged byte range raises
:class:`~clip_gs.errors.CorruptSampleError` naming the split, the chunk file and the index,
never a silently different sample.

Reading trusts nothing in a split: :func:`read_split_index` (the one reader of a split's
``index.json``, used by every path: :class:`TripletShardDataset`, hence ``verify``, the data
module, evaluation and :func:`iter_records`) refuses an index that is not exactly what
:func:`write_split` writes (:mod:`clip_gs.data.split_format`: no ``pickle`` or other data format,
no chunk outside the split, no count beyond a chunk's size) before LitData sees it, and items are
parsed by clip-gs, not by LitData's decoders. Files beside the splits (``manifest.json``,
``label_embeddings.bin``) are read through :func:`~clip_gs.storage.read_bytes` with a size cap and checked field
by field (:meth:`Manifest.parse`, :func:`read_label_embeddings`).

Chunk size (:data:`DEFAULT_CHUNK_BYTES`, 4 MB): LitData shuffles by permuting whole chunks and
then items inside each chunk, and a loader worker fills a batch from consecutive items of its
current chunk. Small chunks therefore mix better: with a prepared sample of ~0.6 MB (10k
Gaussians, SH degree 0) to ~2.4 MB (SH degree 3) a 4 MB chunk holds 1 to 7 samples, so a batch
of 32 draws from 5 to 32 different, randomly ordered chunks (close to a uniform shuffle), while
one object-store GET still moves megabytes (throughput-bound, not latency-bound).

Remote datasets are cached chunk by chunk in ``cache_dir``; when none is given the cache is
:func:`default_cache_dir` (``shards/`` under :func:`~clip_gs.storage.cache_root`), never LitData's own
default.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# LitData asks PyPI for a newer version of itself (30 s timeout) in every process that builds a
# dataset (each DDP rank, spawned workers), offline clusters included. Off unless the user set it.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

import torch
from litdata import StreamingDataset
from litdata.streaming.item_loader import PyTreeLoader
from litdata.streaming.sampler import ChunkedIndex
from litdata.streaming.writer import BinaryWriter

from clip_gs.data.split_format import (
    INDEX_NAME,
    MAX_INDEX_BYTES,
    RECORD_KEYS,
    SplitIndex,
    check_chunk_table,
    check_local_chunks,
    parse_item,
    parse_split_index,
)
from clip_gs.data.triplets import (
    MANIFEST_NAME,
    Manifest,
    TripletSample,
    pack_tensors,
    unpack_tensors,
)
from clip_gs.errors import CorruptSampleError, DatasetError
from clip_gs.gaussians.files import open_regular_file
from clip_gs.storage import cache_root, is_remote, join, read_bytes, s3_client, split_url, write_bytes

DEFAULT_CHUNK_BYTES = "4MB"
"""Default chunk size of :func:`write_split` (see the module docstring for why)."""

_INDEX = INDEX_NAME
_RECORD_KEYS = RECORD_KEYS


# ---------------------------------------------------------------------------- locations
def default_cache_dir() -> str:
    """Where remote chunks are cached when no ``cache_dir`` is given: ``shards/`` under
    :func:`~clip_gs.storage.cache_root` (``$CLIP_GS_CACHE`` moves it)."""
    return str(cache_root() / "shards")


def allow_plain_http_endpoint(storage_options: dict | None) -> bool:
    """Let LitData's obstore client talk to a plain ``http://`` S3 endpoint (e.g. a local test server).

    LitData downloads chunks with obstore, which refuses non-TLS endpoints unless its client
    option ``allow_http`` is set. LitData has no public switch for that, so this sets the
    private, version-specific ``litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS["allow_http"]``
    (the reason LitData is pinned to 0.2.76 in ``pyproject.toml``; a test checks that the setting is there and
    is what the store is built with). It is the only place in the package that touches it, and it
    does so only when ``storage_options["endpoint_url"]`` starts with ``http://``; https and AWS
    endpoints are left alone.

    Returns:
        True when the option was set.
    """
    endpoint = str((storage_options or {}).get("endpoint_url") or "")
    if not endpoint.startswith("http://"):
        return False
    from litdata.streaming import downloader

    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if not isinstance(options, dict):  # a LitData version without the setting: nothing to do
        return False
    options["allow_http"] = "true"
    return True


# ---------------------------------------------------------------------------- writing
def _check_record(record: Any, position: int, seen: set[str]) -> dict:
    if not isinstance(record, dict) or set(record) != set(_RECORD_KEYS):
        raise DatasetError(f"record {position}: expected a TripletSample.to_record() dict {{'id', 'sha256', 'blob'}}")
    blob = bytes(record["blob"])
    if hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise DatasetError(f"record {position} ({record['id']!r}): sha256 does not match its blob")
    if record["id"] in seen:
        raise DatasetError(f"record {position}: duplicate id {record['id']!r}")
    seen.add(record["id"])
    return {"id": str(record["id"]), "sha256": str(record["sha256"]), "blob": blob}


def write_split(
    records: Iterable[dict],
    output_dir: str | os.PathLike,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    storage_options: dict | None = None,
) -> int:
    """Write one split as a LitData dataset of triplet records, deterministically.

    The records are streamed (never all held in memory) through LitData's own chunk writer
    (``BinaryWriter``, what ``litdata.optimize`` runs in each worker) in input order, in this
    process, uncompressed. The index's ``updated_at`` field (which LitData uses to name and
    invalidate its cache) is a digest of the chunk files instead of a wall-clock time, so the
    same records give byte-identical files, and changed content gets a fresh cache.

    To ``s3://`` each chunk is uploaded as soon as the writer finishes it and then deleted
    locally (local disk holds about one chunk, never the split), with its SHA-256 as object
    metadata; ``index.json`` goes last, so a prefix without it is an unfinished upload. Writing the
    same records again to such a prefix **resumes** it: chunks already there with the same digest
    are kept, not uploaded again.

    Args:
        records: ``TripletSample.to_record()`` dicts (or :class:`TripletSample` objects); ids
            must be unique and each ``sha256`` must match its blob (checked here).
        output_dir: a local folder (created; must be empty or absent) or ``s3://bucket/prefix/split``
            (must not hold a finished dataset).
        chunk_bytes: maximum bytes per chunk (``"4MB"``, or an int); see the module docstring.
        storage_options: boto3 client options for s3 (``endpoint_url``, credentials, ...).

    Returns:
        The number of records written.

    Raises:
        DatasetError: no records, an invalid or duplicate record, an existing dataset at
            ``output_dir``, or an unfinished upload there of other content.
    """
    output_dir = str(output_dir)
    remote = _RemoteSplit(output_dir, storage_options) if is_remote(output_dir) else None
    if remote is None:
        staging_parent, staging = None, output_dir
        if os.path.lexists(staging) and not os.path.isdir(staging):
            raise DatasetError(f"{output_dir}: not a folder; refusing to write a split there")
        if os.path.isdir(staging) and (entries := sorted(os.listdir(staging))):
            raise DatasetError(f"{output_dir}: folder is not empty (holds {entries[0]}); refusing to overwrite it")
    else:
        staging_parent = tempfile.mkdtemp(prefix="clip-gs-write-")
        staging = os.path.join(staging_parent, "split")
    digests: dict[str, bytes] = {}

    def finished(path: str) -> None:
        with open(path, "rb") as f:
            digests[os.path.basename(path)] = hashlib.sha256(f.read()).digest()
        if remote is not None:
            remote.upload(path, digests[os.path.basename(path)].hex())
            os.remove(path)

    try:
        os.makedirs(staging, exist_ok=True)
        writer = BinaryWriter(staging, chunk_bytes=chunk_bytes)
        # Private (LitData is pinned for it, and a test checks it): chunk names chunk-0-<i>.bin whatever
        # process group or LitData worker environment this runs in.
        writer._rank = 0
        seen: set[str] = set()
        count = 0
        with plain_chunk_layout():
            for count, record in enumerate(records, start=1):
                if isinstance(record, TripletSample):
                    record = record.to_record()
                chunk = writer.add_item(count - 1, _check_record(record, count - 1, seen))
                if chunk:
                    finished(chunk)
            if count == 0:
                raise DatasetError(f"{output_dir}: no records to write (LitData cannot read an empty dataset)")
            for chunk in writer.done():
                finished(chunk)
        index = _finalize_index(staging, digests)
        if remote is not None:
            remote.finish(index)
        return count
    finally:
        if staging_parent is not None:
            shutil.rmtree(staging_parent, ignore_errors=True)


@contextlib.contextmanager
def plain_chunk_layout():
    """Chunks in LitData's plain layout (offset table, then the records) whether or not ``pyarrow`` is
    installed: with it, LitData 0.2.76 appends an Arrow IPC copy of dict records instead, a layout that
    :mod:`clip_gs.data.split_format` does not read and that would make a dataset's bytes depend on the
    environment. Private (LitData is pinned for it): ``litdata.streaming.item_loader._PYARROW_AVAILABLE``,
    read by LitData each time it builds a chunk, is False inside."""
    from litdata.streaming import item_loader

    before = item_loader._PYARROW_AVAILABLE
    item_loader._PYARROW_AVAILABLE = False
    try:
        yield
    finally:
        item_loader._PYARROW_AVAILABLE = before


class _RemoteSplit:
    """The ``s3://`` side of :func:`write_split`: refuses a finished dataset, uploads chunks as they
    come (skipping those an interrupted upload of the same content left), then the index."""

    def __init__(self, url: str, storage_options: dict | None) -> None:
        self.url = url
        self.bucket, self.key = split_url(url)
        self.client = s3_client(storage_options)
        self.existing: set[str] = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.key}/"):
            self.existing.update(obj["Key"][len(self.key) + 1 :] for obj in page.get("Contents", []))
        if _INDEX in self.existing:
            raise DatasetError(f"{url}: already holds a dataset; refusing to overwrite it (write to a new prefix)")
        strangers = sorted(name for name in self.existing if not re.fullmatch(r"chunk-\d+-\d+\.bin", name))
        if strangers:
            raise DatasetError(f"{url}: holds objects that are not chunks of a split ({', '.join(strangers[:3])}); "
                               "refusing to write there")  # fmt: skip
        self.uploaded: list[str] = []

    def upload(self, path: str, sha256: str) -> None:
        name = os.path.basename(path)
        key = f"{self.key}/{name}"
        if name in self.existing:
            found = self.client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {}).get("sha256")
            if found == sha256:
                self.uploaded.append(name)
                return  # left by an interrupted upload of the same records
            raise DatasetError(f"{self.url}/{name}: an unfinished upload of other content is there; "
                               "write to a new prefix (or delete that one)")  # fmt: skip
        self.client.upload_file(path, self.bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
        self.uploaded.append(name)

    def finish(self, index_path: str) -> None:
        leftovers = sorted(self.existing - set(self.uploaded))
        if leftovers:  # chunks of an interrupted upload beyond this split's end
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": f"{self.key}/{n}"} for n in leftovers]}
            )
        self.client.upload_file(index_path, self.bucket, f"{self.key}/{_INDEX}")


def _finalize_index(folder: str, digests: dict[str, bytes]) -> str:
    """Turn the writer's ``0.index.json`` into ``index.json`` with a content-derived ``updated_at``
    (from ``digests``: each chunk file's SHA-256); returns its path."""
    part = os.path.join(folder, f"0.{_INDEX}")
    with open(part) as f:
        data = json.load(f)
    digest = hashlib.sha256()
    for chunk in data["chunks"]:
        digest.update(chunk["filename"].encode() + b"\0" + digests[chunk["filename"]])
    # updated_at is only compared for equality and used as a folder name by LitData's cache.
    index = {"chunks": data["chunks"], "config": data["config"], "updated_at": digest.hexdigest()[:32]}
    path = os.path.join(folder, _INDEX)
    with open(path, "w") as f:
        json.dump(index, f, sort_keys=True)
    os.remove(part)
    return path


# ---------------------------------------------------------------------------- manifest
def write_manifest(manifest: Manifest, root: str | os.PathLike, storage_options: dict | None = None) -> str:
    """Write ``<root>/manifest.json`` to a local folder or an ``s3://`` prefix; returns its location."""
    root = str(root)
    if not is_remote(root):
        return str(manifest.write(root))
    bucket, key = split_url(join(root, MANIFEST_NAME))
    body = json.dumps(dataclasses.asdict(manifest), indent=2, sort_keys=True) + "\n"
    s3_client(storage_options).put_object(Bucket=bucket, Key=key, Body=body.encode())
    return join(root, MANIFEST_NAME)


def read_manifest(
    root: str | os.PathLike | Sequence[str | os.PathLike], storage_options: dict | None = None
) -> Manifest | list[Manifest]:
    """Read ``<root>/manifest.json`` from a local folder or an ``s3://`` prefix.

    Args:
        root: one dataset root, or several (a list / tuple) meant to be used together.
        storage_options: boto3 client options for s3 roots.

    Returns:
        The :class:`Manifest` of a single root; for several roots, the list of their manifests,
        after checking that they were all made by the same teacher.

    Raises:
        DatasetError: a missing or invalid manifest, or roots made by different teachers
            (:meth:`Manifest.check_compatible`).
    """
    if isinstance(root, (str, os.PathLike)):
        return Manifest.read(str(root), storage_options)
    roots = [str(r) for r in root]
    if not roots:
        raise DatasetError("read_manifest: no dataset roots given")
    manifests = [Manifest.read(r, storage_options) for r in roots]
    for other_root, other in zip(roots[1:], manifests[1:]):
        manifests[0].check_compatible(other, what=f"datasets {roots[0]} and {other_root}")
    return manifests


LABEL_EMBEDDINGS_NAME = "label_embeddings.bin"
"""Beside the manifest: the teacher's prompt-ensemble text embeddings of the label set
(:func:`~clip_gs.data.triplets.pack_tensors` layout, tensor ``label_embeddings [C, E]`` in
``Manifest.labels`` order), so zero-shot validation never runs the teacher."""


def write_label_embeddings(
    root: str | os.PathLike, labels: Sequence[str], embeddings: torch.Tensor, teacher: str,
    templates: Sequence[str], storage_options: dict | None = None,
) -> str:  # fmt: skip
    """Write ``<root>/label_embeddings.bin`` (local or s3); returns its location."""
    if embeddings.shape[0] != len(labels):
        raise DatasetError(f"{len(labels)} labels but {embeddings.shape[0]} label embeddings")
    blob = pack_tensors({"label_embeddings": embeddings}, {"labels": list(labels), "teacher": teacher,
                                                           "templates": list(templates)})  # fmt: skip
    location = join(str(root), LABEL_EMBEDDINGS_NAME)
    write_bytes(location, blob, storage_options)
    return location


MAX_LABEL_EMBEDDINGS_BYTES = 256 << 20
"""Largest ``label_embeddings.bin`` read (256 MiB: 65,536 labels x 1,024 dimensions)."""


def read_label_embeddings(
    root: str | os.PathLike, storage_options: dict | None = None
) -> tuple[list[str], torch.Tensor, dict]:
    """``(labels, embeddings [C, E], metadata)`` from ``<root>/label_embeddings.bin``.

    The file must be at most :data:`MAX_LABEL_EMBEDDINGS_BYTES` and hold exactly what
    :func:`write_label_embeddings` writes: one tensor ``label_embeddings`` ``[C, E]`` (E >= 1) of
    finite values, and metadata ``labels`` (C distinct texts), ``teacher`` (text) and
    ``templates`` (a list of texts).

    Raises:
        DatasetError: missing, unreadable or malformed file (naming it and the problem).
    """
    location = join(str(root), LABEL_EMBEDDINGS_NAME)
    blob = read_bytes(location, storage_options, max_bytes=MAX_LABEL_EMBEDDINGS_BYTES)
    if blob is None:
        raise DatasetError(f"{location}: no label embeddings; is {root} a dataset written by `clip-gs prepare`?")
    try:
        tensors, meta = unpack_tensors(blob)
    except (ValueError, MemoryError) as exc:
        raise DatasetError(f"{location}: cannot read the label embeddings: {exc}") from exc
    problem = None
    labels = meta.get("labels")
    embeddings = tensors.get("label_embeddings")
    if set(tensors) != {"label_embeddings"} or set(meta) != {"labels", "teacher", "templates"}:
        problem = f"holds tensors {sorted(tensors)} and metadata {sorted(meta)}, not label embeddings"
    elif not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        problem = "its labels are not a list of distinct texts"
    elif not isinstance(meta["teacher"], str):
        problem = "its teacher is not text"
    elif not isinstance(meta["templates"], list) or not all(isinstance(x, str) for x in meta["templates"]):
        problem = "its templates are not a list of texts"
    elif embeddings.ndim != 2 or embeddings.shape[0] != len(labels) or embeddings.shape[1] < 1:
        problem = f"embeddings {list(embeddings.shape)} are not one row per label ({len(labels)})"
    elif not bool(torch.isfinite(embeddings).all()):
        problem = "its embeddings are not all finite"
    if problem:
        raise DatasetError(f"{location}: malformed label embeddings: {problem}")
    return list(labels), embeddings, meta


# ---------------------------------------------------------------------------- reading
def read_split_index(split_dir: str, storage_options: dict | None = None) -> SplitIndex:
    """The checked ``index.json`` of a split (a local folder or an ``s3://`` URL): every reader of
    shards opens a split through this, before LitData reads anything of it.

    The index must be what :func:`write_split` writes (:func:`~clip_gs.data.split_format.parse_split_index`:
    the record format, no pickle, chunk names inside the split, counts that fit the chunk sizes), and
    each chunk it lists must be there with the listed size: locally a regular file inside the split
    folder (:func:`~clip_gs.data.split_format.check_local_chunks`), on s3 an object of the split's prefix.

    Raises:
        DatasetError: naming the split's ``index.json`` (or the chunk) and the problem.
    """
    split_dir = str(split_dir).rstrip("/")
    location = join(split_dir, INDEX_NAME)
    if not is_remote(split_dir):
        if not os.path.isdir(split_dir):
            raise DatasetError(f"{split_dir}: no {INDEX_NAME} (no such folder); not a split written by write_split / "
                               "clip-gs prepare")  # fmt: skip
        if os.path.lexists(location) and Path(location).resolve().parent != Path(split_dir).resolve():
            raise DatasetError(f"{location}: resolves to {Path(location).resolve()}, outside its split folder")
    data = read_bytes(location, storage_options, max_bytes=MAX_INDEX_BYTES)
    if data is None:
        raise DatasetError(f"{split_dir}: no {INDEX_NAME}; not a split written by write_split / clip-gs prepare")
    index = parse_split_index(data, location)
    if not is_remote(split_dir):
        check_local_chunks(index, split_dir)
        return index
    bucket, key = split_url(split_dir)
    sizes: dict[str, int] = {}
    try:
        pages = s3_client(storage_options).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/")
        for page in pages:
            sizes.update((obj["Key"][len(key) + 1 :], obj["Size"]) for obj in page.get("Contents", []))
    except Exception as exc:  # botocore ClientError or connection errors
        raise DatasetError(f"{split_dir}: cannot list the split's chunks: {exc}") from exc
    for chunk in index.chunks:
        if sizes.get(chunk.filename) != chunk.chunk_bytes:
            found = "missing" if chunk.filename not in sizes else f"{sizes[chunk.filename]} bytes"
            raise DatasetError(f"{split_dir}/{chunk.filename}: {found}, {location} says {chunk.chunk_bytes} bytes")
    return index


class _RecordLoader(PyTreeLoader):
    """LitData's item loader for a clip-gs split, reading items with clip-gs's checks instead of
    LitData's decoders (no serializer of LitData's, pickle or any other, ever sees chunk bytes).

    When LitData loads the split's index (in each process), :meth:`setup` refuses one that is not
    the checked :class:`~clip_gs.data.split_format.SplitIndex` (a cached or re-downloaded copy
    that changed). Each item is read from its chunk after the chunk's size and offset table are
    checked (:func:`~clip_gs.data.split_format.check_chunk_table`, the table of the current chunk
    kept) and parsed by :func:`~clip_gs.data.split_format.parse_item`.

    LitData requires the loader's class name to be the index's ``item_loader`` (``PyTreeLoader``),
    hence the ``__name__`` below.
    """

    def __init__(self, index: SplitIndex) -> None:
        super().__init__()
        self.split_index = index
        self._table: tuple[int, Any] | None = None

    def setup(self, config: dict, chunks: list, *args, **kwargs) -> None:
        self.split_index.check_same(config, chunks, where="LitData")
        super().setup(config, chunks, *args, **kwargs)

    def load_item_from_chunk(self, index: int, chunk_index: int, chunk_filepath: str, begin: int,
                             filesize_bytes: int, encryption: Any = None) -> dict:  # fmt: skip
        self._wait_until_chunk_ready(chunk_index, chunk_filepath, filesize_bytes)
        chunk = self.split_index.chunks[chunk_index]
        position = index - begin
        if os.path.basename(chunk_filepath) != chunk.filename or not 0 <= position < chunk.chunk_size:
            raise CorruptSampleError(f"record {position} of {chunk_filepath} is not in the index")
        with open_regular_file(chunk_filepath, CorruptSampleError) as handle:
            size = os.fstat(handle.fileno()).st_size
            if self._table is None or self._table[0] != chunk_index:
                self._table = None
                offsets = check_chunk_table(handle.read(4 * (chunk.chunk_size + 2)), chunk, size)
                self._table = (chunk_index, offsets)
            elif size != chunk.chunk_bytes:
                raise CorruptSampleError(f"{size} bytes, the index says {chunk.chunk_bytes}")
            start, end = (int(x) for x in self._table[1][position : position + 2])
            handle.seek(start)
            raw = handle.read(end - start)
        if len(raw) != end - start:
            raise CorruptSampleError("the chunk ends inside the record")
        return parse_item(raw)

    def load_item_from_bytes(self, raw_bytes: bytes, chunk_index: int) -> dict:
        return parse_item(raw_bytes)


_RecordLoader.__name__ = "PyTreeLoader"


class TripletShardDataset(StreamingDataset):
    """A LitData ``StreamingDataset`` of one split whose items are decoded :class:`TripletSample` s.

    Each item is read, checksum-verified and decoded (:meth:`TripletSample.from_record`)
    with ``where = "<input_dir>/<chunk file>, index <i>"`` (``i`` the global index of the
    sample in the split, the position in which :func:`write_split` wrote it). When
    ``sample_transform`` is given, the item is ``sample_transform(sample, index=i, epoch=e)``
    instead, with ``e`` the 0-based epoch (LitData's ``current_epoch - 1``; the
    ``StreamingDataLoader`` calls ``set_epoch`` at the start of every epoch and a restored
    state dict sets it too), so per-sample randomness can be a pure function of
    ``(seed, epoch, index)``.

    Args:
        input_dir: the split folder or ``s3://.../<split>`` URL.
        cache_dir: where remote chunks are cached (default :func:`default_cache_dir`;
            unused for local folders, which are read in place).
        storage_options: boto3 options for s3 (``endpoint_url``, ...). A plain ``http://``
            endpoint is allowed through :func:`allow_plain_http_endpoint`.
        shuffle: shuffle chunks and items inside chunks (seeded by ``seed`` and the epoch).
        seed: LitData's shuffle seed.
        drop_last: LitData's: ``True`` drops the samples beyond the last full batch of every
            rank; ``None`` is ``True`` in a process group and ``False`` otherwise.
        sample_transform: ``(TripletSample, index=, epoch=) -> item``, run in the loader
            worker; must be picklable.
        max_cache_size: LitData's cache budget for remote chunks.

    The split is opened through :func:`read_split_index` (its ``index.json`` and chunk files
    checked before LitData reads them) and its items are read by clip-gs's own item loader, never
    by a LitData decoder; remote items come from whole downloaded chunks (:attr:`on_demand_bytes`).

    Raises (on construction):
        DatasetError: an ``index.json`` that is not what :func:`write_split` writes, or chunks that
            are missing, of other sizes, not regular files or outside the split (naming the field or chunk).

    Raises (on reading an item):
        CorruptSampleError: checksum mismatch, a chunk whose framing does not hold, or an undecodable
            record, naming the chunk and index.
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
        sample_transform=None,
        max_cache_size: int | str | None = None,
    ) -> None:
        input_dir = str(input_dir)
        self.split_dir = input_dir.rstrip("/")
        self.split_index = read_split_index(self.split_dir, storage_options)
        index_path = None
        if is_remote(input_dir):
            cache_dir = str(cache_dir) if cache_dir is not None else default_cache_dir()
            os.makedirs(cache_dir, exist_ok=True)
            allow_plain_http_endpoint(storage_options)
            # LitData takes the checked index from here instead of downloading index.json again.
            handle, index_path = tempfile.mkstemp(prefix="clip-gs-index-", suffix=".json")
            with os.fdopen(handle, "w") as f:
                json.dump(self.split_index.data, f)
        else:
            cache_dir = None
        try:
            super().__init__(
                input_dir,
                cache_dir=cache_dir,
                item_loader=_RecordLoader(self.split_index),
                storage_options=storage_options,
                shuffle=shuffle,
                seed=seed,
                drop_last=drop_last,
                max_cache_size=max_cache_size,
                index_path=index_path,
            )
        except (DatasetError, OSError):
            raise
        except Exception as exc:  # LitData's own refusals (its errors are ValueError / AssertionError)
            raise DatasetError(f"{self.split_dir}: LitData cannot open the split: {exc}") from exc
        finally:
            if index_path is not None:
                os.remove(index_path)
        chunks = self.split_index.chunks
        if self.subsampled_files != [c.filename for c in chunks] or [tuple(r) for r in self.region_of_interest] != [
            (0, c.chunk_size) for c in chunks
        ]:
            raise DatasetError(f"{self.split_dir}: LitData lists other chunks than {self.split_index.location}, which "
                               "was checked (a stale cached index?)")  # fmt: skip
        self._on_demand_bytes = False
        self.sample_transform = sample_transform
        # Global index of each chunk's first sample (LitData numbers samples chunk after chunk).
        starts, total = [], 0
        for begin, end in self.region_of_interest:
            starts.append(total)
            total += end - begin
        self._chunk_starts, self._num_records = starts, total

    @property
    def on_demand_bytes(self) -> bool:
        """Always False: remote items are read from whole downloaded chunks, whose size and offset
        table are checked, never fetched as byte ranges whose length a chunk's bytes would decide."""
        return False

    @on_demand_bytes.setter
    def on_demand_bytes(self, value: bool) -> None:
        self._on_demand_bytes = False
        if self.cache is not None:
            self.cache._reader.on_demand_bytes = False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """LitData's, taking a state saved without an item loader (``item_loader: None``) as this
        dataset's loader, which reads the same items."""
        if state_dict and state_dict.get("item_loader") is None:
            state_dict = {**state_dict, "item_loader": self.item_loader.state_dict()}
        super().load_state_dict(state_dict)

    def __iter__(self):
        # Worker processes may be spawned (fresh module state): re-apply the endpoint setting there.
        allow_plain_http_endpoint(self.storage_options)
        return super().__iter__()

    def where(self, index: int, chunk_index: int) -> str:
        """``"<split dir>/<chunk file>, index <i>"`` naming a sample in errors."""
        name = self.subsampled_files[chunk_index]
        offset = index - self._chunk_starts[chunk_index]
        return f"{self.split_dir}/{name}, index {index} (record {offset} of the chunk)"

    def _locate(self, index: Any) -> tuple[int, int]:
        if isinstance(index, ChunkedIndex):
            return int(index.index), int(index.chunk_index)
        if isinstance(index, int) and not isinstance(index, bool):
            if not 0 <= index < self._num_records:
                raise IndexError(f"{self.split_dir}: index {index} out of range")
            return index, bisect.bisect_right(self._chunk_starts, index) - 1
        raise TypeError(f"{type(self).__name__} is indexed by an int (got {type(index).__name__})")

    def record(self, index: Any) -> tuple[dict, str]:
        """``(raw record {"id", "sha256", "blob"}, where)`` of ``index``, not decoded (the checksum is
        checked by whoever decodes or rewrites it: :meth:`TripletSample.from_record`, :func:`write_split`)."""
        global_index, chunk_index = self._locate(index)
        where = self.where(global_index, chunk_index)
        try:
            return super().__getitem__(index), where
        except CorruptSampleError as exc:  # from _RecordLoader: the chunk's framing does not hold
            raise CorruptSampleError(f"{where}: {exc}") from exc
        except (DatasetError, OSError):
            raise
        except Exception as exc:  # any other failure of LitData's to read the record
            raise CorruptSampleError(f"{where}: cannot read the record ({type(exc).__name__}: {exc})") from exc

    def __getitem__(self, index: Any) -> Any:
        record, where = self.record(index)
        global_index = self._locate(index)[0]
        sample = TripletSample.from_record(record, where)
        if self.sample_transform is None:
            return sample
        return self.sample_transform(sample, index=global_index, epoch=max(self.current_epoch - 1, 0))


def iter_records(split_dir: str, storage_options: dict | None = None, cache_dir: str | None = None) -> Iterable[dict]:
    """The raw records of a split (local or s3) in the order :func:`write_split` wrote them."""
    dataset = TripletShardDataset(split_dir, cache_dir=cache_dir, storage_options=storage_options)
    for index in range(len(dataset)):
        yield dataset.record(index)[0]


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "LABEL_EMBEDDINGS_NAME",
    "MAX_LABEL_EMBEDDINGS_BYTES",
    "TripletShardDataset",
    "allow_plain_http_endpoint",
    "default_cache_dir",
    "iter_records",
    "read_label_embeddings",
    "read_manifest",
    "plain_chunk_layout",
    "read_split_index",
    "write_manifest",
    "write_split",
]
