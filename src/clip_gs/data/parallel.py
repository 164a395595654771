"""``clip-gs prepare`` on many processes and many machines.

- **Workers** (``--workers N``): LitData's ``map`` runs an
  :class:`~clip_gs.data.prepare.ObjectPreparer` over the objects in ``N`` worker processes on
  this machine (LitData's own work queue; with ``--device cuda``, or ``auto`` where CUDA is
  available, each worker takes the GPU LitData assigns it, worker rank modulo the GPU count; the
  device is resolved once, before the workers start). Each worker writes finished records into the
  work folder, exactly as a single process does.
- **Nodes** (``--num-nodes M --node-rank R``): node ``R`` takes the objects whose id hashes to it
  (:func:`node_share`), prepares them (with its workers) and writes its **part** under
  ``<out>/parts/R-of-M/``: one LitData split per split, in id order, and ``part.json`` (written
  last) with the records' metas, the failures, and the run's settings. The **merge**
  (``--merge``, once every part is there) reads the parts and writes the one dataset, in id order,
  with the single-process writer: the dataset is byte for byte the one a single process makes,
  whatever the number of nodes and workers (records do not depend on them either, see
  :class:`~clip_gs.data.prepare.ObjectPreparer`). A part that is replaced, and the parts once
  merged, are removed only when they hold nothing but what the nodes wrote
  (:mod:`clip_gs.data.ownership`); each ``part.json`` is checked before it is used (:func:`parse_part`).

Why the node split and the merge are ours and not LitData's: LitData documents multi-node
processing only on its own platform (Lightning Studios), and its merge concatenates each worker's
chunks, so the order of samples and the chunk boundaries depend on the number of machines and
workers. A hash split needs no coordination (every node lists the same inputs and keeps its
share), and merging the parts in id order gives one dataset for every layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence

from clip_gs.errors import ConfigError, DatasetError

PARTS = "parts"
"""Folder (or prefix) under the output that holds the nodes' parts."""

PART_NAME = "part.json"

MAX_PART_BYTES = 1 << 30
"""Largest ``part.json`` read (1 GiB: the metas of about a million objects)."""


def node_share(items: Sequence, num_nodes: int, node_rank: int) -> list:
    """The items node ``node_rank`` of ``num_nodes`` prepares: those whose id's SHA-256 (first 8
    bytes, little-endian) is ``node_rank`` modulo ``num_nodes``. Stable when objects are added, and
    the same on every node that lists the same inputs.

    Raises:
        ConfigError: ``num_nodes < 1`` or a rank outside ``[0, num_nodes)``.
    """
    check_nodes(num_nodes, node_rank)
    return [it for it in items
            if int.from_bytes(hashlib.sha256(it.id.encode()).digest()[:8], "little") % num_nodes == node_rank]  # fmt: skip


def check_nodes(num_nodes: int, node_rank: int) -> None:
    if num_nodes < 1 or not 0 <= node_rank < num_nodes:
        raise ConfigError(f"node rank must lie in [0, num_nodes), got rank {node_rank} of {num_nodes} nodes")


@contextlib.contextmanager
def _environ(**values: str):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_workers(preparer, items: Sequence, workers: int) -> None:
    """Run ``preparer`` over ``items`` in ``workers`` processes with LitData's ``map``.

    LitData clears its cache folders (``/tmp/chunks``, ``/tmp/data`` by default) at every start,
    which would break concurrent runs on one machine: each run gets private ones. The compiled
    rasterizer gets ``cores // workers`` threads per worker (``NUMBA_NUM_THREADS``).

    Raises:
        DatasetError: a worker stopped on a fault that recurs for every object (its message).
    """
    from litdata import map as litdata_map

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="clip-gs-litdata-") as cache:
        env = {"DATA_OPTIMIZER_CACHE_FOLDER": os.path.join(cache, "chunks"),
               "DATA_OPTIMIZER_DATA_CACHE_FOLDER": os.path.join(cache, "data"),
               "NUMBA_NUM_THREADS": str(max(1, cores // workers))}  # fmt: skip
        with _environ(**env):
            try:
                litdata_map(preparer, list(items), output_dir=str(preparer.work), num_workers=workers,
                            reorder_files=False, start_method="spawn")  # fmt: skip
            except RuntimeError as exc:  # LitData re-raises a worker's traceback as text
                text = str(exc).strip().rstrip(".")
                last = next((line for line in reversed(text.splitlines()) if line.strip()), text)
                raise DatasetError(f"a prepare worker stopped: {last.strip()}") from exc


# ---------------------------------------------------------------------------- parts
def part_root(out: str, node_rank: int, num_nodes: int) -> str:
    from clip_gs.data.shards import join

    return join(out, PARTS, f"{node_rank}-of-{num_nodes}")


def write_part(out: str, node_rank: int, num_nodes: int, fingerprint: dict, metas: list[dict],
               failures: list[dict], records_of, storage_options: dict | None = None) -> str:  # fmt: skip
    """Write node ``node_rank``'s part: its records as one LitData split per split (id order), then
    ``part.json``. A finished part with the same contents is left as it is; another one (after a
    rerun that retried failures) is replaced.

    Args:
        records_of: ``metas -> iterable of records`` (from the node's work folder).

    Returns:
        The part's location.
    """
    from clip_gs.data.shards import read_bytes, write_bytes, write_split
    from clip_gs.data.triplets import SPLITS

    root = part_root(out, node_rank, num_nodes)
    body = {"node_rank": node_rank, "num_nodes": num_nodes, "fingerprint": fingerprint,
            "metas": sorted(metas, key=lambda m: m["id"]), "failures": sorted(failures, key=lambda f: f["id"])}  # fmt: skip
    data = (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()
    if read_bytes(_join(root, PART_NAME), storage_options, max_bytes=MAX_PART_BYTES) == data:
        return root
    _remove(root, "part", storage_options)
    for split in SPLITS:
        split_metas = [m for m in body["metas"] if m["split"] == split]
        if split_metas:
            write_split(records_of(split_metas), _join(root, split), storage_options=storage_options)
    write_bytes(_join(root, PART_NAME), data, storage_options)
    return root


def read_parts(out: str, num_nodes: int, fingerprint: dict, storage_options: dict | None = None) -> list[dict]:
    """Every node's ``part.json``, checked: all ``num_nodes`` present (:func:`parse_part`) and made
    with this run's settings and teacher.

    Raises:
        DatasetError: missing parts (naming the nodes that have not finished), a malformed part, or
            a part made with other settings.
    """
    from clip_gs.data.shards import read_bytes

    parts, missing = [], []
    for rank in range(num_nodes):
        location = _join(part_root(out, rank, num_nodes), PART_NAME)
        data = read_bytes(location, storage_options, max_bytes=MAX_PART_BYTES)
        if data is None:
            missing.append(rank)
            continue
        part = parse_part(data, location, rank, num_nodes)
        if part["fingerprint"] != json.loads(json.dumps(fingerprint)):
            raise DatasetError(
                f"{location}: this part was prepared with other settings or another teacher than the merge"
            )
        part["root"] = part_root(out, rank, num_nodes)
        parts.append(part)
    if missing:
        raise DatasetError(
            f"{_join(out, PARTS)}: no finished part of node(s) {', '.join(map(str, missing))} of {num_nodes}; "
            "run prepare with --node-rank on each of them first, then merge"
        )
    return parts


def parse_part(data: bytes, location: str, node_rank: int, num_nodes: int) -> dict:
    """The ``part.json`` of node ``node_rank`` of ``num_nodes`` in ``data``, checked.

    Rules: a JSON object with exactly ``node_rank`` and ``num_nodes`` (these), ``fingerprint`` (a
    settings record, :func:`~clip_gs.data.prepare.check_fingerprint`), ``metas`` (objects with a
    text ``id``, a hex SHA-256 ``sha256``, a ``split`` of :data:`~clip_gs.data.triplets.SPLITS`
    and a ``label`` text or null) and ``failures`` (objects of the texts
    :data:`~clip_gs.data.prepare.FAILURE_FIELDS`); no id twice.

    Raises:
        DatasetError: naming ``location`` and the problem.
    """
    from clip_gs.data.prepare import FAILURE_FIELDS, check_fingerprint
    from clip_gs.data.triplets import SPLITS

    def refuse(problem: str):
        raise DatasetError(f"{location}: not a part written by clip-gs prepare: {problem}")

    try:
        part = json.loads(data)
    except (ValueError, RecursionError, MemoryError) as exc:
        refuse(f"invalid JSON ({type(exc).__name__}: {exc})")
    keys = {"node_rank", "num_nodes", "fingerprint", "metas", "failures"}
    if not isinstance(part, dict) or set(part) != keys:
        refuse(f"expected an object of {', '.join(sorted(keys))}")
    if part["node_rank"] != node_rank or part["num_nodes"] != num_nodes:
        refuse(f"it says node {part['node_rank']!r} of {part['num_nodes']!r}, where node {node_rank} of {num_nodes} "
               "belongs")  # fmt: skip
    check_fingerprint(part["fingerprint"], f"{location}: fingerprint")
    metas, failures = part["metas"], part["failures"]
    if not isinstance(metas, list) or not isinstance(failures, list):
        refuse("metas and failures must be lists")
    for position, meta in enumerate(metas):
        if not (isinstance(meta, dict) and isinstance(meta.get("id"), str) and meta.get("split") in SPLITS
                and isinstance(meta.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"])
                and (meta.get("label") is None or isinstance(meta["label"], str))):  # fmt: skip
            refuse(f"metas[{position}] is not an object with id, sha256, split and label")
    for position, failure in enumerate(failures):
        if not (isinstance(failure, dict) and set(failure) == set(FAILURE_FIELDS)
                and all(isinstance(v, str) for v in failure.values())):  # fmt: skip
            refuse(f"failures[{position}] is not an object of {', '.join(FAILURE_FIELDS)} texts")
    ids = [m["id"] for m in metas] + [f["id"] for f in failures]
    if len(set(ids)) != len(ids):
        refuse(f"object {next(i for i in ids if ids.count(i) > 1)!r} is listed twice")
    return part


def merged_records(parts: Sequence[dict], split: str, storage_options: dict | None = None,
                   cache_dir: str | None = None) -> Iterable[dict]:  # fmt: skip
    """The records of ``split`` across ``parts``, in id order (each part's split is in id order)."""
    from clip_gs.data.shards import iter_records

    streams = [iter_records(_join(p["root"], split), storage_options, cache_dir)
               for p in parts if any(m["split"] == split for m in p["metas"])]  # fmt: skip
    return heapq.merge(*streams, key=lambda record: record["id"])


def remove_parts(out: str, storage_options: dict | None = None) -> None:
    """Delete ``<out>/parts`` once the merged dataset is written (only what the nodes wrote there:
    :mod:`clip_gs.data.ownership`)."""
    _remove(_join(out, PARTS), "parts", storage_options)


# ---------------------------------------------------------------------------- local or s3 files
def _join(root: str, *parts: str) -> str:
    from clip_gs.data.shards import join

    return join(root, *parts)


def _remove(location: str, kind: str, storage_options: dict | None) -> None:
    """Remove the folder or prefix ``location`` of ``kind`` (:data:`~clip_gs.data.ownership.LAYOUTS`)
    when it holds only what prepare writes there; anything else is refused and nothing removed.

    Raises:
        DatasetError: a foreign file or object, naming it.
    """
    from clip_gs.data.ownership import clear_folder, foreign_key
    from clip_gs.data.shards import _s3_client, _split_url, is_remote

    if not is_remote(location):
        clear_folder(location, kind)
        return
    bucket, key = _split_url(location)
    client = _s3_client(storage_options)
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/")
            for obj in page.get("Contents", [])]  # fmt: skip
    foreign = foreign_key([k[len(key) + 1 :] for k in keys], kind)
    if foreign is not None:
        raise DatasetError(f"{location}: holds {foreign}, which clip-gs prepare did not write; refusing to delete "
                           "the prefix (move that object away)")  # fmt: skip
    for start in range(0, len(keys), 1000):  # S3 deletes at most 1,000 keys per request
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})


__all__ = [
    "MAX_PART_BYTES",
    "PARTS",
    "merged_records",
    "node_share",
    "parse_part",
    "read_parts",
    "remove_parts",
    "run_workers",
    "write_part",
]
