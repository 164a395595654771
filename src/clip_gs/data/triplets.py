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

SPLITS = ("train", "val", "test")

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
            problems.append(f"text_embeddings must be [{t}, E] (one per caption), got {list(self.text_embeddings.shape)}")
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


def pack_tensors(tensors: dict[str, Tensor], meta: dict) -> bytes:
    """``8-byte header length | JSON header | float32 little-endian data``, tensors in the given
    order: a deterministic function of the values."""
    arrays = {name: t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4") for name, t in tensors.items()}
    entries, offset = [], 0
    for name, array in arrays.items():
        entries.append([name, list(array.shape), offset, array.nbytes])
        offset += array.nbytes
    header = json.dumps({"format_version": FORMAT_VERSION, "meta": meta, "tensors": entries}, sort_keys=True).encode()
    return struct.pack("<Q", len(header)) + header + b"".join(a.tobytes() for a in arrays.values())


def unpack_tensors(blob: bytes) -> tuple[dict[str, Tensor], dict]:
    """Inverse of :func:`pack_tensors`: ``(tensors, meta)``; raises ``ValueError`` on bad input."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    data = memoryview(blob)[8 + length :]
    tensors = {}
    for name, shape, offset, nbytes in header["tensors"]:
        if offset + nbytes > len(data):
            raise ValueError(f"tensor {name!r} runs past the end of the record")
        array = np.frombuffer(data[offset : offset + nbytes], dtype="<f4").reshape(shape)
        tensors[name] = torch.from_numpy(array.astype(np.float32))
    return tensors, header["meta"]


MANIFEST_NAME = "manifest.json"


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

    def write(self, root: str | Path) -> Path:
        path = Path(root) / MANIFEST_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, root: str | Path) -> Manifest:
        """Read ``root/manifest.json`` (a local folder).

        Raises:
            DatasetError: missing or invalid manifest, or a newer format version.
        """
        path = Path(root) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
            manifest = cls(**data)
        except FileNotFoundError as exc:
            raise DatasetError(f"{path}: no manifest; is {root} a dataset written by `clip-gs prepare`?") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise DatasetError(f"{path}: invalid manifest: {exc}") from exc
        if manifest.format_version > FORMAT_VERSION:
            raise DatasetError(
                f"{path}: format version {manifest.format_version} is newer than this clip-gs reads ({FORMAT_VERSION})"
            )
        return manifest

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


__all__ = ["FORMAT_VERSION", "MANIFEST_NAME", "SPLITS", "Manifest", "TripletSample", "pack_tensors", "unpack_tensors"]
