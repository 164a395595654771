"""The work folder of ``prepare``: finished per-object records kept between runs, so that a rerun
skips what is done.

A record of object ``id`` is ``<work>/<2 hex>/<24 hex key>.blob`` (the serialised
:class:`~clip_gs.data.triplets.TripletSample`) and ``.json`` (its meta, written last: it marks the
record done), or ``.failed.json`` for a per-object fault (:data:`~clip_gs.data.object_work.FAILURE_FIELDS`).
The folder is fanned out over 256 sub-folders by key prefix (about 1,900 files each at 240K objects),
and folder fsyncs are batched (:data:`SYNC_EVERY`). One process writes it (:class:`RecordWriter`),
whichever processes or machines did the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from clip_gs.data.object_work import FAILURE_FIELDS, ObjectResult, input_fingerprint
from clip_gs.data.prepare_settings import PrepareSettings
from clip_gs.data.sources import SourceItem
from clip_gs.data.triplets import SPLITS, Manifest
from clip_gs.errors import ClipGSError, DatasetError
from clip_gs.storage import atomic_write, sync_folder

SYNC_EVERY = 64
"""Records written between folder fsyncs (:meth:`RecordWriter.sync`): a crash loses at most the records
since the last sync (their files may be gone), and those are prepared again."""

TEACHER_STREAK = 5
"""Teacher failures in a row, before any object succeeded, that stop the run: a fault that will recur."""


def record_key(item_id: str) -> str:
    """The 24-hex-digit key a record of ``item_id`` is filed under."""
    return hashlib.sha256(item_id.encode()).hexdigest()[:24]


def record_path(work: Path, item_id: str, suffix: str) -> Path:
    """Where a record file of ``item_id`` lives: ``<work>/<2 hex>/<24 hex key><suffix>``."""
    key = record_key(item_id)
    return work / key[:2] / f"{key}{suffix}"


def finished_meta(work: Path, item: SourceItem) -> dict | None:
    """The meta of the finished record ``work`` holds of exactly this input, else None."""
    meta_path = record_path(work, item.id, ".json")
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not record_path(work, item.id, ".blob").is_file():
        return None  # a record whose blob is gone is redone
    if not isinstance(meta, dict) or meta.get("id") != item.id or meta.get("label") != item.label:
        return None
    if meta.get("split") not in SPLITS or not re.fullmatch(r"[0-9a-f]{64}", str(meta.get("sha256"))):
        return None
    return meta if meta.get("input") == input_fingerprint(item) else None


def failure_of(work: Path, item: SourceItem) -> dict | None:
    """The failure record of ``item`` in ``work``; None when there is none or it is not one of
    ``item``'s (then the run reports that no record was written)."""
    path = record_path(work, item.id, ".failed.json")
    try:
        failure = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if (not isinstance(failure, dict) or set(failure) != set(FAILURE_FIELDS)
            or not all(isinstance(v, str) for v in failure.values()) or failure["id"] != item.id):  # fmt: skip
        return None
    return failure


def work_records(work: Path, metas: Sequence[dict]) -> Iterable[dict]:
    """The stored records of ``metas`` (in this order), read from the work folder one by one."""
    for meta in metas:
        yield {"id": meta["id"], "sha256": meta["sha256"], "blob": record_path(work, meta["id"], ".blob").read_bytes()}


class RecordWriter:
    """The one writer of a work folder: files each :class:`~clip_gs.data.object_work.ObjectResult`
    (a record, or a failure) and stops the run on a fault that will recur.

    Args:
        work: the work folder.
        succeeded_before: objects already finished (the teacher-streak rule counts only from nothing).
    """

    def __init__(self, work: Path, succeeded_before: int = 0) -> None:
        self.work, self.succeeded = Path(work), succeeded_before
        self.failed = 0
        self.streak: list[str] = []  # the teacher's consecutive failures while nothing has succeeded
        self._unsynced: set[Path] = set()
        self._unsynced_records = 0

    def write(self, result: ObjectResult) -> bool:
        """File ``result``; True for a record, False for a failure.

        Raises:
            DatasetError: the teacher failed alike on the first :data:`TEACHER_STREAK` objects; a full disk.
        """
        if result.failure is not None:
            self.failed += 1
            atomic_write(record_path(self.work, result.id, ".failed.json"), json.dumps(result.failure).encode())
            failure = result.failure
            if failure["stage"] == "teacher" and self.succeeded == 0 and not _ours(failure["error"]):
                self.streak.append(failure["error"])
                if len(self.streak) >= TEACHER_STREAK and len(set(self.streak)) == 1:
                    raise DatasetError(
                        f"the teacher failed on the first {len(self.streak)} objects with {failure['error']}: "
                        f"{failure['message']}; stopping: a fault that recurs for every object (see failures.jsonl "
                        "for the objects)"
                    )
            return False
        try:
            atomic_write(record_path(self.work, result.id, ".blob"), result.blob, sync=False)
            meta_path = record_path(self.work, result.id, ".json")
            atomic_write(meta_path, json.dumps(result.meta).encode(), sync=False)  # written last: marks it done
        except OSError as exc:
            raise DatasetError(f"{self.work}: cannot write the record of {result.id}: {exc}; stopping") from exc
        record_path(self.work, result.id, ".failed.json").unlink(missing_ok=True)
        self.succeeded += 1
        self.streak.clear()
        self._unsynced.add(meta_path.parent)
        self._unsynced_records += 1
        if self._unsynced_records >= SYNC_EVERY:
            self.sync()
        return True

    def sync(self) -> None:
        """Make the records written since the last sync durable: one fsync per record folder touched
        (:data:`SYNC_EVERY`), not one per file."""
        for folder in sorted(self._unsynced):
            sync_folder(folder)
        self._unsynced.clear()
        self._unsynced_records = 0


def _ours(error: str) -> bool:
    """Whether ``error`` names one of the package's own error types (a fault of the object, not of the teacher)."""
    import clip_gs.errors

    kind = getattr(clip_gs.errors, error, None)
    return isinstance(kind, type) and issubclass(kind, ClipGSError)


def default_work_dir(out: str) -> Path:
    """Where per-object records are kept: ``<out>/.work`` for a local ``out``; for an ``s3://``
    output, ``<cache root>/prepare/<digest of out>`` on this machine
    (:func:`~clip_gs.storage.cache_root`)."""
    from clip_gs.storage import cache_root, is_remote

    if not is_remote(out):
        return Path(out) / ".work"
    return cache_root() / "prepare" / hashlib.sha256(out.encode()).hexdigest()[:16]


SETTINGS_NAME = "settings.json"
"""The settings record of a work folder (:func:`read_fingerprint`)."""

WRITTEN_NAME = "written.json"
"""What a work folder's run last wrote: a digest per split and of the manifest."""

MAX_SETTINGS_BYTES = 1 << 20
"""Largest settings record (or ``written.json``) read (1 MiB; prepare writes a few hundred bytes)."""

_FINGERPRINT_FIELDS = {"source": (str,), "settings": (dict,), "image_size": (int,), "teacher": (str,),
                       "captions": (str, type(None)), "compute": (dict,), "embeddings": (str,),
                       "holdout": (str,)}  # fmt: skip
_FINGERPRINT_OPTIONAL = ("compute", "embeddings", "holdout")


def check_fingerprint(value, location: str) -> dict:
    """``value`` if it is a settings record as :func:`_fingerprint` makes it (``<work>/settings.json``),
    else a typed refusal.

    Rules: a JSON object with ``source``, ``teacher`` (texts), ``settings`` (an object whose names
    are :class:`~clip_gs.data.prepare_settings.PrepareSettings` fields), ``image_size`` (an integer >= 1), ``captions`` (null or a
    SHA-256 in hex), optionally ``compute`` (``device`` and ``precision`` texts), ``embeddings``
    (text) and ``holdout`` (the held-out file's SHA-256); nothing else.

    Raises:
        DatasetError: naming ``location`` and the field.
    """

    def refuse(problem: str):
        raise DatasetError(f"{location}: not a clip-gs prepare settings record: {problem}; move the work folder "
                           "away (or use --overwrite to start afresh)")  # fmt: skip

    if not isinstance(value, dict):
        refuse(f"a JSON {type(value).__name__}, not an object")
    missing = [k for k in _FINGERPRINT_FIELDS if k not in value and k not in _FINGERPRINT_OPTIONAL]
    unknown = sorted(set(value) - set(_FINGERPRINT_FIELDS))
    if missing or unknown:
        refuse(f"missing {', '.join(missing) or 'nothing'}, unknown {', '.join(unknown) or 'nothing'}")
    for name, kinds in _FINGERPRINT_FIELDS.items():
        if name in value and (not isinstance(value[name], kinds) or isinstance(value[name], bool)):
            refuse(f"{name} is a {type(value[name]).__name__}")
    names = {f.name for f in fields(PrepareSettings)}
    if not set(value["settings"]) <= names:
        refuse(f"unknown settings {', '.join(sorted(set(value['settings']) - names))}")
    if value["image_size"] < 1:
        refuse(f"image_size {value['image_size']}")
    for name in ("captions", "holdout"):
        if value.get(name) is not None and not re.fullmatch(r"[0-9a-f]{64}", value[name]):
            refuse(f"{name} is not a SHA-256")
    compute = value.get("compute", {"device": "", "precision": ""})
    if set(compute) != {"device", "precision"} or not all(isinstance(v, str) for v in compute.values()):
        refuse("compute must be an object of device and precision")
    return value


def _read_json(location: Path, what: str):
    """The JSON value of a small file prepare wrote (None when absent), at most :data:`MAX_SETTINGS_BYTES`."""
    from clip_gs.storage import read_bytes

    data = read_bytes(str(location), max_bytes=MAX_SETTINGS_BYTES)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise DatasetError(f"{location}: a corrupt {what} ({exc}); move the work folder away (or use --overwrite "
                           "to start afresh)") from exc  # fmt: skip


def read_fingerprint(location: str | os.PathLike) -> dict | None:
    """The one reader of settings records (``<work>/settings.json``): the checked record
    (:func:`check_fingerprint`), or None when there is none.

    Raises:
        DatasetError: not a regular file, larger than :data:`MAX_SETTINGS_BYTES`, not JSON, or not a
            settings record (naming the file and the problem).
    """
    value = _read_json(Path(location), "settings record")
    return None if value is None else check_fingerprint(value, str(location))


def read_written(location: Path) -> dict[str, str]:
    """``<work>/written.json``: ``{split, "manifest" or "keys": digest}`` (empty when absent)."""
    value = _read_json(location, "record of written splits")
    if value is None:
        return {}
    names = (*SPLITS, "manifest", "keys")
    if not isinstance(value, dict) or not all(k in names and isinstance(v, str) for k, v in value.items()):
        raise DatasetError(f"{location}: not a record of written splits (an object from split names and 'manifest' "
                           "to digests); move the work folder away (or use --overwrite)")  # fmt: skip
    return value


def legacy_work(folder: Path) -> bool:
    """A work folder written before markers existed: it holds a valid settings record."""
    try:
        return read_fingerprint(folder / SETTINGS_NAME) is not None
    except DatasetError:
        return False


def legacy_output(folder: Path) -> bool:
    """An output folder written before markers existed: it holds a clip-gs manifest, or a default
    work folder (:func:`legacy_work`)."""
    try:
        Manifest.read(folder)
        return True
    except DatasetError:
        return (folder / ".work").is_dir() and legacy_work(folder / ".work")


__all__ = [
    "MAX_SETTINGS_BYTES",
    "SETTINGS_NAME",
    "SYNC_EVERY",
    "TEACHER_STREAK",
    "WRITTEN_NAME",
    "RecordWriter",
    "check_fingerprint",
    "default_work_dir",
    "failure_of",
    "finished_meta",
    "legacy_output",
    "legacy_work",
    "read_fingerprint",
    "read_written",
    "record_key",
    "record_path",
    "work_records",
]
