"""Where clip-gs keeps bytes: local files written atomically, ``s3://`` objects, and the one cache root.

- :func:`atomic_write` / :func:`atomic_path`: a crash leaves the old file or the whole new one (a
  temporary file in the same folder, fsynced, renamed over the target, then the folder fsynced).
- :func:`read_bytes` / :func:`write_bytes`: a local file or an ``s3://`` object, with a size cap on reads.
- :func:`is_remote`, :func:`join`, :func:`split_url`: locations that are local paths or URLs.
- :func:`s3_client`: a boto3 client built from ``storage_options`` as LitData builds its own (``boto3`` is
  imported when the first client is made; it comes with LitData).
- :func:`cache_root`: the one folder clip-gs caches what it makes under.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clip_gs.errors import DatasetError
from clip_gs.gaussians.files import open_regular_file

CACHE_ENV = "CLIP_GS_CACHE"
"""Environment variable that moves :func:`cache_root`."""


def cache_root() -> Path:
    """The one folder clip-gs caches what it makes under: converted pretrained models (``models/``), the
    demo's gallery (``demo/``), converted benchmark meshes (``benchmarks/``), remote shards' chunks
    (``shards/``), rendered training views (``views/``) and the work folders of remote outputs
    (``prepare/``). ``$CLIP_GS_CACHE`` if set, else ``$XDG_CACHE_HOME/clip-gs``, else ``~/.cache/clip-gs``.
    Downloads themselves stay in the Hugging Face cache (``HF_HUB_CACHE``), where ``hf download`` puts them."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clip-gs"


# ---------------------------------------------------------------------------- locations
def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an object-store URL (``s3://...``, any ``scheme://``) rather than a local path."""
    return "://" in str(path)


def join(root: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local folder or a URL (``s3://b/p`` + ``train`` -> ``s3://b/p/train``)."""
    root = str(root)
    if is_remote(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(root, *parts)


def split_url(url: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://bucket/key`` URL.

    Raises:
        DatasetError: another scheme.
    """
    scheme, rest = url.split("://", 1)
    if scheme != "s3":
        raise DatasetError(f"{url}: only s3:// object storage is supported here (got {scheme}://)")
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def s3_client(storage_options: dict | None):
    """A boto3 S3 client built from ``storage_options`` exactly as LitData builds its own
    (``boto3.Session().client("s3", **storage_options)``)."""
    import boto3

    return boto3.Session().client("s3", **dict(storage_options or {}))


# ---------------------------------------------------------------------------- local files
def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder (the renames into it made durable)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a path (``save_gaussians``, say). When the
    block ends, the file is fsynced and renamed over ``path``, then the folder fsynced (``sync=False``
    leaves that to the caller: :func:`sync_folder`); when it raises, the file is removed and ``path`` is
    untouched. Missing folders are made. The temporary name holds the process id, so processes sharing a
    folder never collide."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        sync_folder(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str, sync: bool = True) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` so that a crash leaves the old file or the
    whole new one (through :func:`atomic_path`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path, sync) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


# ---------------------------------------------------------------------------- bytes, local or remote
def read_bytes(location: str, storage_options: dict | None = None, max_bytes: int | None = None) -> bytes | None:
    """The bytes of a local file or an ``s3://`` object; None when it does not exist.

    A local path must be a regular file (symlinks followed): a folder, FIFO or device such as
    ``/dev/zero`` is refused, never read.

    Args:
        max_bytes: refuse a file or object larger than this (checked before reading it).

    Raises:
        DatasetError: not a regular file, larger than ``max_bytes``, or unreadable (naming ``location``).
    """
    if not is_remote(location):
        if not os.path.lexists(location):
            return None
        with open_regular_file(location, DatasetError) as handle:
            size = os.fstat(handle.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise DatasetError(f"{location}: {size:,} bytes, more than it may have ({max_bytes:,})")
            try:
                data = _read_all(handle.read, max_bytes)
            except OSError as exc:
                raise DatasetError(f"{location}: cannot read: {exc.strerror or exc}") from exc
    else:
        bucket, key = split_url(location)
        client = s3_client(storage_options)
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            size = response.get("ContentLength")
            if max_bytes is not None and size is not None and size > max_bytes:
                raise DatasetError(f"{location}: {size:,} bytes, more than it may have ({max_bytes:,})")
            data = _read_all(response["Body"].read, max_bytes)
        except client.exceptions.NoSuchKey:
            return None
        except DatasetError:
            raise
        except Exception as exc:  # botocore ClientError (403, no such bucket, ...) or connection errors
            raise DatasetError(f"{location}: cannot read: {exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise DatasetError(f"{location}: more than it may have ({max_bytes:,} bytes)")
    return data


_READ_PIECE = 1 << 20


def _read_all(read, max_bytes: int | None) -> bytes:
    """Everything ``read(n)`` gives, in 1 MiB pieces (a single ``read(n)`` may allocate ``n`` bytes at
    once), stopping once more than ``max_bytes`` came."""
    pieces, total = [], 0
    while max_bytes is None or total <= max_bytes:
        piece = read(_READ_PIECE)
        if not piece:
            break
        pieces.append(piece)
        total += len(piece)
    return b"".join(pieces)


def write_bytes(location: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write a local file (atomically, fsynced) or an ``s3://`` object."""
    if is_remote(location):
        bucket, key = split_url(location)
        s3_client(storage_options).put_object(Bucket=bucket, Key=key, Body=data)
        return
    atomic_write(location, data)


__all__ = [
    "CACHE_ENV",
    "atomic_path",
    "atomic_write",
    "cache_root",
    "is_remote",
    "join",
    "read_bytes",
    "s3_client",
    "split_url",
    "sync_folder",
    "write_bytes",
]
