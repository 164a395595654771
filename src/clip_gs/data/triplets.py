"""Triplet samples (3DGS, rendered views' teacher embeddings, captions) and the dataset manifest.

A :class:`TripletSample` is what ``clip-gs prepare`` writes and ``GaussianDataModule`` reads:

- the Gaussians as stored (``means``, ``sh`` with every band, ``opacity_logits``,
  ``log_scales``, ``quats``) at the object's own count;
- its captions, an optional class label, an id and the source path;
- the teacher's text embeddings ``[T, E]`` (one per caption) and image embeddings ``[V, E]`` of
  V rendered views, with each view's camera (``viewmats [V, 4, 4]``, ``Ks [V, 3, 3]``).

On disk a sample is one record ``{"id": str, "sha256": str, "blob": bytes}``: the blob is a
JSON header (metadata, and name, shape and byte range of each float32 tensor, in a fixed order)
followed by the raw little-endian tensor bytes (no pickle; unlike safetensors, whose writer
orders equal-dtype tensors differently from run to run, the same sample always gives the same
bytes), and ``sha256`` is its digest, verified on every read. LitData has no checksums of its own (an overwritten byte range decodes silently into wrong
values); here it raises :class:`~clip_gs.errors.CorruptSampleError` naming where the record was.

The :class:`Manifest` (``manifest.json`` at the dataset root) records the teacher identity,
counts per split, the label set, the preparation settings and the package version; datasets
made by different teachers are refused together (:meth:`Manifest.check_compatible`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import CorruptSampleError, DatasetError
from clip_gs.gaussians import GaussianCloud

FORMAT_VERSION = 1
"""Version of the sample and manifest layout written by this package."""

SPLITS = ("train", "val", "test", "heldout")
"""Splits of a prepared dataset; ``heldout`` holds the objects ``prepare --holdout`` keeps from training
(:mod:`clip_gs.data.holdout`)."""

_CLOUD_FIELDS = ("means", "sh", "opacity_logits", "log_scales", "quats")
_VIEW_FIELDS = ("text_embeddings", "image_embeddings", "viewmats", "Ks")


@dataclass(frozen=True, eq=False)
class TripletSample:
    """One prepared object (see the module docstring for the fields).

    Attributes:
        id: unique id within the dataset (e.g. the relative source path without extension).
        source: where the object came from (file path or ``synthetic:<seed>``).
        cloud: the Gaussians as stored, unbatched, float32.
        captions: ``T >= 0`` captions.
        label: class label or None.
        text_embeddings: ``[T, E]`` float32 unit vectors of the captions.
        image_embeddings: ``[V, E]`` float32 unit vectors of the rendered views.
        viewmats: ``[V, 4, 4]`` world-to-camera matrices of the views (normalised object frame).
        Ks: ``[V, 3, 3]`` intrinsics of the views.
        fit: for Gaussians fitted to views (``prepare --gaussians fitted``), the fit's facts
            (:meth:`~clip_gs.fitting.FitResult.summary`: held-out PSNR and SSIM, count, iterations,
            seconds); None for stored or surface-sampled Gaussians (and then not in the record).
    """

    id: str
    source: str
    cloud: GaussianCloud
    captions: tuple[str, ...]
    label: str | None
    text_embeddings: Tensor
    image_embeddings: Tensor
    viewmats: Tensor
    Ks: Tensor
    fit: dict | None = None

    def __post_init__(self) -> None:
        t, v = len(self.captions), self.image_embeddings.shape[0]
        problems = []
        if self.cloud.batch_shape:
            problems.append("the cloud must be unbatched")
        if self.text_embeddings.ndim != 2 or self.text_embeddings.shape[0] != t:
            problems.append(
                f"text_embeddings must be [{t}, E] (one per caption), got {list(self.text_embeddings.shape)}"
            )
        if self.image_embeddings.ndim != 2:
            problems.append(f"image_embeddings must be [V, E], got {list(self.image_embeddings.shape)}")
        elif t and self.text_embeddings.shape[1] != self.image_embeddings.shape[1]:
            problems.append("text and image embeddings differ in width")
        if tuple(self.viewmats.shape) != (v, 4, 4) or tuple(self.Ks.shape) != (v, 3, 3):
            problems.append(f"viewmats / Ks must be [{v}, 4, 4] / [{v}, 3, 3]")
        if problems:
            raise DatasetError(f"sample {self.id!r} ({self.source}): " + "; ".join(problems))

    @property
    def embed_dim(self) -> int:
        return self.image_embeddings.shape[1]

    def to_record(self) -> dict:
        """The stored record ``{"id", "sha256", "blob"}`` (see the module docstring)."""
        tensors = {name: getattr(self.cloud, name) for name in _CLOUD_FIELDS}
        tensors |= {name: getattr(self, name) for name in _VIEW_FIELDS}
        meta = {"id": self.id, "source": self.source, "captions": list(self.captions), "label": self.label}
        if self.fit is not None:
            meta["fit"] = self.fit
        blob = pack_tensors(tensors, meta)
        return {"id": self.id, "sha256": hashlib.sha256(blob).hexdigest(), "blob": blob}

    @classmethod
    def from_record(cls, record: dict, where: str) -> TripletSample:
        """Decode a stored record, verifying its checksum.

        Args:
            where: what names the record in errors (e.g. ``"train/chunk-0-3.bin, index 17"``).

        Raises:
            CorruptSampleError: checksum mismatch, or a blob that does not decode.
        """
        try:
            blob, digest = bytes(record["blob"]), str(record["sha256"])
        except (KeyError, TypeError) as exc:
            raise CorruptSampleError(f"{where}: not a clip-gs triplet record ({exc})") from exc
        if hashlib.sha256(blob).hexdigest() != digest:
            raise CorruptSampleError(f"{where}: checksum mismatch (sample {record.get('id')!r}); the shard is corrupt")
        try:
            tensors, meta = unpack_tensors(blob)
            _check_sample_fields(tensors, meta, record.get("id"))
            cloud = GaussianCloud(**{name: tensors[name] for name in _CLOUD_FIELDS}, source=meta["source"])
            return cls(
                id=meta["id"],
                source=meta["source"],
                cloud=cloud,
                captions=tuple(meta["captions"]),
                label=meta["label"],
                **{name: tensors[name] for name in _VIEW_FIELDS},
                fit=meta.get("fit"),
            )
        except Exception as exc:  # a record with a valid digest but undecodable content
            raise CorruptSampleError(f"{where}: cannot decode sample {record.get('id')!r}: {exc}") from exc


def _check_sample_fields(tensors: dict, meta: dict, record_id) -> None:
    """Refuse a decoded record whose tensors or metadata are not a sample's: the tensors
    :data:`_CLOUD_FIELDS` and :data:`_VIEW_FIELDS`; ``id`` (the record's), ``source`` text,
    ``captions`` a list of text, ``label`` text or null, and ``fit`` (when present) an object."""
    problem = None
    if set(tensors) != set(_CLOUD_FIELDS + _VIEW_FIELDS):
        problem = f"tensors {sorted(tensors)} are not a sample's"
    elif not {"id", "source", "captions", "label"} <= set(meta) <= {"id", "source", "captions", "label", "fit"}:
        problem = f"metadata keys {sorted(meta)} are not a sample's"
    elif meta["id"] != record_id or not isinstance(meta["id"], str):
        problem = f"the blob's id {meta['id']!r:.80} is not the record's"
    elif not isinstance(meta["source"], str):
        problem = "source is not text"
    elif not isinstance(meta["captions"], list) or not all(isinstance(c, str) for c in meta["captions"]):
        problem = "captions are not a list of text"
    elif meta["label"] is not None and not isinstance(meta["label"], str):
        problem = "label is not text or null"
    elif "fit" in meta and not isinstance(meta["fit"], dict):
        problem = "fit is not an object"
    if problem:
        raise ValueError(problem)


def pack_tensors(tensors: dict[str, Tensor], meta: dict) -> bytes:
    """``8-byte header length | JSON header | float32 little-endian data``, tensors in the given
    order: a deterministic function of the values."""
    arrays = {
        name: t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4") for name, t in tensors.items()
    }
    entries, offset = [], 0
    for name, array in arrays.items():
        entries.append([name, list(array.shape), offset, array.nbytes])
        offset += array.nbytes
    header = json.dumps({"format_version": FORMAT_VERSION, "meta": meta, "tensors": entries}, sort_keys=True).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(a.tobytes() for a in arrays.values())


def unpack_tensors(blob: bytes) -> tuple[dict[str, Tensor], dict]:
    """Inverse of :func:`pack_tensors`: ``(tensors, meta)``.

    The layout is checked before any tensor is made: a JSON object header ``{"format_version",
    "meta", "tensors"}`` of a version this package reads, ``meta`` an object, and ``tensors`` a list
    of ``[name, shape, offset, nbytes]`` with unique names, non-negative integer dimensions,
    ``nbytes`` = 4 x the shape's product, each tensor starting where the previous one ends and the
    last ending at the end of the blob. So no tensor is larger than the blob.

    Raises:
        ValueError: naming what breaks the layout.
    """
    if len(blob) < 8:
        raise ValueError("shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", blob[:8])
    if length > len(blob) - 8:
        raise ValueError(f"the header claims {length} bytes, the blob has {len(blob) - 8}")
    try:
        header = json.loads(blob[8 : 8 + length])
    except RecursionError as exc:
        raise ValueError("the header nests too deeply") from exc
    if not isinstance(header, dict) or set(header) != {"format_version", "meta", "tensors"}:
        raise ValueError("the header is not {format_version, meta, tensors}")
    version = header["format_version"]
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"format version {version!r}; this clip-gs reads 1..{FORMAT_VERSION}")
    if not (isinstance(header["meta"], dict) and isinstance(header["tensors"], list)):
        raise ValueError("the header's meta is not an object or its tensors not a list")  # noqa: TRY004 - a layout error
    data = memoryview(blob)[8 + length :]
    tensors: dict[str, Tensor] = {}
    end = 0
    for entry in header["tensors"]:
        if not isinstance(entry, list) or len(entry) != 4:
            raise ValueError(f"tensor entry {entry!r:.80} is not [name, shape, offset, nbytes]")
        name, shape, offset, nbytes = entry
        if not isinstance(name, str) or name in tensors:
            raise ValueError(f"tensor name {name!r:.80} is not a new string")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r}: shape {shape!r:.80} is not a list of sizes")
        if offset != end or not _is_int(nbytes) or nbytes != 4 * math.prod(shape) or end + nbytes > len(data):
            raise ValueError(f"tensor {name!r}: bytes {offset!r:.20}+{nbytes!r:.20} do not follow the previous "
                             f"tensor or do not fit its shape {shape} or the blob")  # fmt: skip
        array = np.frombuffer(data[offset : offset + nbytes], dtype="<f4").reshape(shape)
        tensors[name] = torch.from_numpy(array.astype(np.float32))
        end += nbytes
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after the last tensor")
    return tensors, header["meta"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MANIFEST_NAME = "manifest.json"

MAX_MANIFEST_BYTES = 16 << 20
"""Largest ``manifest.json`` read (16 MiB: room for a label set of hundreds of thousands of names)."""

MAX_EMBED_DIM = 1 << 16
"""Widest embedding a manifest may declare (CLIP teachers are 512 to 1,280 wide); readers size
buffers by it."""


_MANIFEST_RULES = {
    "teacher": "text",
    "embed_dim": f"an integer 1..{MAX_EMBED_DIM}",
    "counts": f"an object from {', '.join(SPLITS)} to counts >= 0",
    "labels": "a sorted list of distinct texts",
    "settings": "an object",
    "failures": "an integer >= 0",
    "caption_coverage": "null or a number in [0, 1]",
    "package_version": "text",
    "format_version": f"an integer 1..{FORMAT_VERSION} (the versions this clip-gs reads)",
    "holdout": "null or an object {file: text, sha256: 64 hex, uids: integer >= 0}",
}


def _manifest_value_ok(key: str, value) -> bool:
    """Whether ``value`` follows ``_MANIFEST_RULES[key]``."""
    if key in ("teacher", "package_version"):
        return isinstance(value, str)
    if key == "embed_dim":
        return _is_int(value) and 1 <= value <= MAX_EMBED_DIM
    if key == "counts":
        return isinstance(value, dict) and all(k in SPLITS and _is_int(n) and n >= 0 for k, n in value.items())
    if key == "labels":
        return isinstance(value, list) and all(isinstance(x, str) for x in value) and value == sorted(set(value))
    if key == "settings":
        return isinstance(value, dict)
    if key == "failures":
        return _is_int(value) and value >= 0
    if key == "holdout":
        return value is None or (
            isinstance(value, dict) and set(value) == {"file", "sha256", "uids"} and isinstance(value["file"], str)
            and isinstance(value["sha256"], str) and len(value["sha256"]) == 64 and _is_int(value["uids"])
            and value["uids"] >= 0
        )  # fmt: skip
    if key == "caption_coverage":
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1)
    return _is_int(value) and 1 <= value <= FORMAT_VERSION  # format_version


@dataclass
class Manifest:
    """What a prepared dataset is: written as ``manifest.json`` at its root.

    Attributes:
        teacher: the teacher's identity string (which model made the embeddings).
        embed_dim: width of the stored embeddings.
        counts: samples per split (``train``, ``val``, ``test``).
        labels: the sorted label set (empty when samples carry no labels).
        settings: the preparation settings (views, image size, background, seeds, ...).
        failures: number of inputs that failed (listed in ``failures.jsonl``).
        caption_coverage: share of the objects that have at least one caption (None: written
            before coverage was recorded).
        package_version: clip-gs version that wrote it.
        format_version: :data:`FORMAT_VERSION`.
        holdout: the held-out file the ``heldout`` split was made from (``{"file", "sha256", "uids"}``),
            None when none was given.
    """

    teacher: str
    embed_dim: int
    counts: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    failures: int = 0
    caption_coverage: float | None = None
    package_version: str = ""
    format_version: int = FORMAT_VERSION
    holdout: dict | None = None

    def write(self, root: str | Path) -> Path:
        path = Path(root) / MANIFEST_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, root: str | Path, storage_options: dict | None = None) -> Manifest:
        """Read ``root/manifest.json`` from a local folder or an ``s3://`` prefix (``storage_options``:
        boto3 client options); :func:`~clip_gs.data.shards.read_manifest` reads several roots together.

        Raises:
            DatasetError: missing or invalid manifest (:meth:`parse`).
        """
        from clip_gs.storage import join, read_bytes

        location = join(str(root), MANIFEST_NAME)
        data = read_bytes(location, storage_options, max_bytes=MAX_MANIFEST_BYTES)
        if data is None:
            raise DatasetError(f"{location}: no manifest; is {root} a dataset written by `clip-gs prepare`?")
        return cls.parse(data, location)

    @classmethod
    def parse(cls, data: bytes, location: str) -> Manifest:
        """The manifest in ``data`` (the bytes of ``location``, named in errors), checked field by field.

        Rules: at most :data:`MAX_MANIFEST_BYTES`; a JSON object with ``teacher`` (text) and
        ``embed_dim`` (an integer 1..:data:`MAX_EMBED_DIM`) and no keys but the attributes'. The
        others may be absent (manifests written before they existed) and then take the defaults
        above; when present: ``counts`` an object from split names (:data:`SPLITS`) to integers
        >= 0, ``labels`` a sorted list of distinct texts, ``settings`` an object, ``failures`` an
        integer >= 0, ``caption_coverage`` null or a number in [0, 1], ``package_version`` text,
        ``format_version`` an integer 1..:data:`FORMAT_VERSION`.

        Raises:
            DatasetError: naming ``location`` and the field.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise DatasetError(
                f"{location}: {len(data):,} bytes, more than a manifest may have ({MAX_MANIFEST_BYTES:,})"
            )
        try:
            values = json.loads(data)
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or nesting deeper than Python's stack
            raise DatasetError(f"{location}: invalid manifest: {exc}") from exc
        if not isinstance(values, dict):
            raise DatasetError(f"{location}: invalid manifest: not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DatasetError(f"{location}: invalid manifest: unknown field {unknown[0]!r:.80}")
        for key in ("teacher", "embed_dim"):
            if key not in values:
                raise DatasetError(f"{location}: invalid manifest: field {key} is missing")

        for key, rule in _MANIFEST_RULES.items():
            if key in values and not _manifest_value_ok(key, values[key]):
                raise DatasetError(
                    f"{location}: invalid manifest: field {key} is {values[key]!r:.80}; it must be {rule}"
                )
        return cls(**values)

    def check_compatible(self, other: Manifest, what: str = "datasets") -> None:
        """Refuse to mix embeddings of different teachers (or widths).

        Raises:
            DatasetError: naming both teachers.
        """
        if self.teacher != other.teacher or self.embed_dim != other.embed_dim:
            raise DatasetError(
                f"cannot mix {what} made by different teachers: {self.teacher!r} ({self.embed_dim}-d) "
                f"vs {other.teacher!r} ({other.embed_dim}-d)"
            )


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_EMBED_DIM",
    "MAX_MANIFEST_BYTES",
    "SPLITS",
    "Manifest",
    "TripletSample",
    "pack_tensors",
    "unpack_tensors",
]
