"""Objects that must never train: held-out uid lists, and the compact record of what a model trained on.

A held-out file (``clip-gs prepare --holdout FILE``) is one of

- a uid list: one uid per line (``#`` comments and blank lines skipped), or a JSON list of uids;
- the Objaverse-LVIS annotation, ``objaverse.load_lvis_annotations()`` saved as JSON:
  ``{category: [uid, ...]}``;
- OpenShape's split file (``meta_data/split/lvis.json`` and its siblings): a JSON list of objects
  with a ``uid`` (and a ``category``).

An object is held out when its *key* is listed: the last part of its id (the file stem; for
Objaverse, the uid: ``glbs/000-023/<uid>.glb`` has the key ``<uid>``). Held-out objects go to the
:data:`HELDOUT_SPLIT` split, never to train or val, and the manifest records the file's name,
checksum and count.

What a model trained on is kept as :data:`TRAINING_IDS_NAME` in its folder: the sorted 64-bit keys
(:func:`key_hash`, the first 8 bytes of SHA-256 of the key) of its training split, about 8 bytes
per object (1.9 MB for 240K objects), from which :func:`overlap` counts the evaluated objects a
model has seen (a false match needs a 64-bit collision).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from clip_gs.errors import DatasetError
from clip_gs.strict_json import unique_keys

HELDOUT_SPLIT = "heldout"
"""The split held-out objects are written to (beside ``train``, ``val``, ``test``)."""

KEYS_NAME = "keys.safetensors"
"""File at a prepared dataset's root: per split, the sorted :func:`key_hash` of its objects
(:func:`split_keys_bytes`), from which a training export records what it trained on."""

TRAINING_IDS_NAME = "training_ids.safetensors"
"""File of a model folder with the keys of the objects it trained on (:func:`write_training_ids`)."""

MAX_HOLDOUT_BYTES = 256 << 20
"""Largest held-out file read (256 MiB: the LVIS annotation is about 3 MB)."""


def object_key(item_id: str) -> str:
    """The key an object is matched by: the last part of its id (``glbs/000-023/<uid>`` -> ``<uid>``)."""
    return str(item_id).rsplit("/", 1)[-1]


def key_hash(key: str) -> int:
    """A signed 64-bit hash of a key (the first 8 bytes of its SHA-256, little-endian)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little", signed=True)


def read_holdout(path: str | os.PathLike) -> frozenset[str]:
    """The uids a held-out file lists (any of the three forms in the module docstring).

    Raises:
        DatasetError: a missing, oversized or malformed file, naming it and what is wrong; an empty list.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such held-out file")
    size = path.stat().st_size
    if size > MAX_HOLDOUT_BYTES:
        raise DatasetError(f"{path}: {size:,} bytes, more than a held-out file may have ({MAX_HOLDOUT_BYTES:,})")
    text = path.read_bytes().decode("utf-8", errors="strict") if size else ""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text, object_pairs_hook=unique_keys)
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"{path}: invalid JSON: {exc}") from exc
        uids = _json_uids(data, path)
    else:
        uids = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    bad = [u for u in uids if not isinstance(u, str) or not u or "/" in u or len(u) > 256]
    if bad:
        raise DatasetError(f"{path}: {len(bad)} entries are not uids (non-empty text without '/'): {bad[:3]!r}")
    if not uids:
        raise DatasetError(f"{path}: lists no uids")
    return frozenset(uids)


def _json_uids(data, path: Path) -> list:
    if isinstance(data, dict):  # the LVIS annotation: {category: [uid, ...]}
        if not all(isinstance(v, list) for v in data.values()):
            raise DatasetError(f"{path}: a JSON object must map categories to lists of uids (the LVIS annotation)")
        return [u for uids in data.values() for u in uids]
    if all(isinstance(x, dict) for x in data):  # OpenShape's split file
        missing = [i for i, x in enumerate(data) if "uid" not in x]
        if missing:
            raise DatasetError(
                f"{path}: entry {missing[0]} has no 'uid' (OpenShape's split files list {{uid, category}})"
            )
        return [x["uid"] for x in data]
    return list(data)


def holdout_record(path: str | os.PathLike, uids: frozenset[str]) -> dict:
    """What the manifest records of a held-out file: ``{"file", "sha256", "uids"}``."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"file": Path(path).name, "sha256": digest, "uids": len(uids)}


def keys_of(ids: Iterable[str]) -> torch.Tensor:
    """``int64 [N]``: the sorted, distinct :func:`key_hash` of the ids' :func:`object_key`."""
    return torch.tensor(sorted({key_hash(object_key(i)) for i in ids}), dtype=torch.int64)


def split_keys_bytes(ids_by_split: dict[str, Iterable[str]]) -> bytes:
    """The bytes of :data:`KEYS_NAME`: one sorted ``int64 [N_split]`` tensor of keys per split."""
    from safetensors.torch import save

    return save({split: keys_of(ids) for split, ids in ids_by_split.items()},
                metadata={"hash": "sha256(object_key)[:8] little-endian int64"})  # fmt: skip


def read_split_keys(data: bytes, location: str) -> dict[str, torch.Tensor]:
    """The per-split keys of :data:`KEYS_NAME` bytes.

    Raises:
        DatasetError: bytes that are not such a file (names ``location``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise DatasetError(f"{location}: unreadable keys file: {exc}") from exc
    for split, keys in tensors.items():
        _check_keys(keys, f"{location} ({split})")
    return tensors


def read_dataset_keys(root: str, storage_options: dict | None = None) -> dict[str, torch.Tensor] | None:
    """The per-split keys of the prepared dataset at ``root`` (local or ``s3://``; its :data:`KEYS_NAME`),
    None when it has none (prepared before they were written).

    Raises:
        DatasetError: a keys file that is not one (:func:`read_split_keys`).
    """
    from clip_gs.storage import join, read_bytes

    location = join(str(root), KEYS_NAME)
    data = read_bytes(location, storage_options)
    return None if data is None else read_split_keys(data, location)


def _check_keys(keys: torch.Tensor, location: str) -> None:
    if keys.dtype != torch.int64 or keys.ndim != 1:
        raise DatasetError(f"{location}: expected int64 [N] keys, got {keys.dtype} {list(keys.shape)}")
    if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
        raise DatasetError(f"{location}: the keys are not sorted and distinct")


def write_training_ids(folder: str | os.PathLike, keys: torch.Tensor, dataset: str = "") -> Path:
    """Write ``folder/training_ids.safetensors``: ``keys: int64 [N]``, the sorted keys of the training
    objects (:func:`keys_of`), and the dataset they came from in the metadata."""
    from safetensors.torch import save_file

    _check_keys(keys, "training ids")
    path = Path(folder) / TRAINING_IDS_NAME
    save_file({"keys": keys.contiguous()}, str(path),
              metadata={"hash": "sha256(object_key)[:8] little-endian int64", "dataset": str(dataset)})  # fmt: skip
    return path


def read_training_ids(path: str | os.PathLike) -> torch.Tensor:
    """The sorted keys of :func:`write_training_ids` (``int64 [N]``).

    Raises:
        DatasetError: a file that is not one (other tensors, another dtype or shape, unsorted keys).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable training ids: {exc}") from exc
    if set(tensors) != {"keys"}:
        raise DatasetError(f"{path}: expected one tensor 'keys', got {sorted(tensors)}")
    _check_keys(tensors["keys"], str(path))
    return tensors["keys"]


def overlap(ids: Iterable[str], training_keys: torch.Tensor) -> list[str]:
    """The ids whose :func:`object_key` a model trained on (``training_keys`` from :func:`read_training_ids`)."""
    ids = list(ids)
    if not ids or training_keys.numel() == 0:
        return []
    query = torch.tensor([key_hash(object_key(i)) for i in ids], dtype=torch.int64)
    position = torch.searchsorted(training_keys, query).clamp_(max=training_keys.numel() - 1)
    seen = training_keys[position] == query
    return [i for i, s in zip(ids, seen.tolist()) if s]


__all__ = [
    "HELDOUT_SPLIT",
    "KEYS_NAME",
    "TRAINING_IDS_NAME",
    "holdout_record",
    "key_hash",
    "keys_of",
    "object_key",
    "overlap",
    "read_dataset_keys",
    "read_holdout",
    "read_split_keys",
    "read_training_ids",
    "split_keys_bytes",
    "write_training_ids",
]
