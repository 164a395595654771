"""Opening input files safely: regular files only, never blocking.

Every reader of 3DGS files and meshes opens its input through :func:`open_regular_file` (or
:func:`read_regular_file`). The rules:

- Symlinks are followed; what they point to must be a **regular file**. A FIFO, a character or
  block device (``/dev/zero``, ``/dev/urandom``), a socket or a folder is refused with a typed
  error naming the path and what it is: a device can be endless and a FIFO blocks forever.
- The kind of file is checked with ``os.stat`` **before** opening, so a FIFO is never opened.
  The open itself is non-blocking and the opened descriptor is checked again with ``fstat``, so
  a path swapped for a FIFO or device between the check and the open cannot block or be read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from clip_gs.errors import ClipGSError, GaussianFormatError

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _refusal(path: Path, mode: int, target: str | None) -> str:
    points = f" (a symlink to {target})" if target else ""
    return f"{path}: not a regular file{points}: it is {_kind(mode)}; only regular files are read"


def check_regular_file(path: str | os.PathLike[str], error: type[ClipGSError] = GaussianFormatError) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed), refusing anything but a regular file.

    Raises:
        error: ``path`` is missing, unreadable, or not a regular file (the message says what it is).
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot open: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        target = str(path.resolve()) if path.is_symlink() else None
        raise error(_refusal(path, info.st_mode, target))
    return info


def open_regular_file(path: str | os.PathLike[str], error: type[ClipGSError] = GaussianFormatError) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (see the module rules).

    Raises:
        error: ``path`` is missing, unreadable, or not a regular file.
    """
    path = Path(path)
    check_regular_file(path, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot open: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(_refusal(path, mode, None))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(
    path: str | os.PathLike[str], error: type[ClipGSError] = GaussianFormatError, max_bytes: int | None = None
) -> bytes:
    """The whole content of the regular file ``path`` (see :func:`open_regular_file`).

    Args:
        max_bytes: the most bytes accepted. The file's size is checked (``os.stat``) before it is
            opened, and at most ``max_bytes + 1`` bytes are read, so a file that grows after the
            check is refused too, never read whole.

    Raises:
        error: ``path`` is missing, unreadable, not a regular file, or longer than ``max_bytes``
            (the message gives both sizes).
    """
    path = Path(path)
    if max_bytes is not None:
        size = check_regular_file(path, error).st_size
        if size > max_bytes:
            raise error(f"{path}: {size:,} bytes, above the limit of {max_bytes:,} bytes for this kind of file")
    with open_regular_file(path, error) as fh:
        try:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if max_bytes is not None and len(data) > max_bytes:
        raise error(f"{path}: more than {max_bytes:,} bytes (it grew while being read); refused")
    return data
