"""Which folders ``clip-gs prepare`` writes into and clears: only its own.

``prepare`` never deletes or overwrites what it did not write. The rules:

- **Marker.** The local folders ``prepare`` writes into as a whole (the output folder and the work
  folder) carry the marker file :data:`MARKER_NAME`, holding exactly :data:`MARKER_TEXT`. It is
  written (:func:`claim_folder`) before anything else is written there.
- **Writing into a folder** (:func:`check_claimable`, :func:`claim_folder`): the path must be
  absent, an empty folder, or a folder that is ours: it carries the marker, or (a folder written
  before markers existed) the caller's evidence says so (a clip-gs manifest, a valid settings
  record). Anything else is refused, naming the folder and one of its entries; a path that is a
  file (or anything but a folder) is refused too. Entries of an owned folder that ``prepare``
  does not write are left as they are.
- **Clearing a folder** (:func:`check_clearable`, :func:`clear_folder`), as a rewritten split, a
  work folder on ``--overwrite``, a node's part and the finished parts are cleared: every entry,
  at any depth, must be one that ``prepare`` writes there (:data:`LAYOUTS`: names by kind of
  folder; regular files and folders only, never a symlink or a special file). One foreign entry
  and nothing is removed: :class:`~clip_gs.errors.DatasetError` names the folder and that entry.
  Then exactly the listed entries are removed, files first, then the emptied folders
  (``os.rmdir``: a folder that gained an entry meanwhile is refused, not emptied). ``s3://``
  prefixes follow the same names (:func:`foreign_key`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from clip_gs.errors import DatasetError

MARKER_NAME = ".clip-gs-prepare"
"""The file that marks a folder as written by ``clip-gs prepare``."""

MARKER_TEXT = b"This folder is written by clip-gs prepare, which clears only what it wrote here.\n"
"""The marker's exact content (a file of that name with other content is no marker)."""

_TMP = r"(\.\d+\.tmp)?"  # the temporary file an atomic write leaves beside its target when killed
_SPLIT_FILES = r"index\.json|\d+\.index\.json|chunk-\d+-\d+\.bin"
_SPLITS = r"train|val|test|heldout"
_WORK_FILES = rf"(settings|written)\.json{_TMP}|{re.escape(MARKER_NAME)}{_TMP}"
_RECORD_FILES = rf"[0-9a-f]{{24}}\.(blob|json|failed\.json){_TMP}"

LAYOUTS: dict[str, tuple[tuple[str, str | None], ...]] = {
    # a split written by write_split: LitData's index (and its unfinished form) and chunks
    "split": ((_SPLIT_FILES, None),),
    # a work folder: the settings record, what was written, and 256 folders of records by key prefix
    "work": ((_WORK_FILES, None), (r"[0-9a-f]{2}", "records")),
    # one of them: per-object records and failures
    "records": ((_RECORD_FILES, None),),
    # one node's part: part.json and one split per split
    "part": ((rf"part\.json{_TMP}", None), (_SPLITS, "split")),
    # the parts folder: one part per node, named <rank>-of-<nodes>
    "parts": ((r"\d+-of-\d+", "part"),),
}
"""Kind of folder -> ``(name pattern, kind of sub-folder or None for a file)``: every entry
``prepare`` writes in a folder of that kind."""


def _allowed(kind: str, parts: tuple[str, ...], is_dir: bool) -> bool:
    name, rest = parts[0], parts[1:]
    for pattern, child in LAYOUTS[kind]:
        if re.fullmatch(pattern, name):
            if child is None:
                return not rest and not is_dir
            return (not rest and is_dir) or (bool(rest) and _allowed(child, rest, is_dir))
    return False


def _entries(folder: Path) -> Iterable[tuple[Path, str]]:
    """``(path, "file" | "dir" | "other")`` of every entry below ``folder``, sorted, depth first
    (a folder after its contents); symlinks are "other" and never followed."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list the folder: {exc.strerror or exc}") from exc
    for name in names:
        path = folder / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            yield from _entries(path)
            yield path, "dir"
        else:
            yield path, "file" if stat.S_ISREG(mode) else "other"


def foreign_entry(folder: str | os.PathLike, kind: str) -> str | None:
    """The first entry below ``folder`` (relative, ``/``-separated) that ``prepare`` does not write
    in a folder of ``kind`` (:data:`LAYOUTS`), else None (also for an absent folder)."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return None
    for path, what in _entries(folder):
        parts = path.relative_to(folder).parts
        if what == "other" or not _allowed(kind, parts, what == "dir"):
            return "/".join(parts)
    return None


def foreign_key(keys: Iterable[str], kind: str) -> str | None:
    """The first of ``keys`` (object keys relative to an ``s3://`` prefix of ``kind``) that
    ``prepare`` does not write there, else None."""
    for key in sorted(keys):
        parts = tuple(key.split("/"))
        if "" in parts or not _allowed(kind, parts, False):
            return key
    return None


def _not_a_folder(folder: Path) -> str | None:
    if os.path.lexists(folder) and not folder.is_dir():
        return f"{folder}: not a folder; clip-gs prepare writes into a folder (absent, empty or its own)"
    return None


def check_clearable(folder: str | os.PathLike, kind: str) -> None:
    """Refuse clearing ``folder`` unless it holds only what ``prepare`` writes in a folder of ``kind``.

    Raises:
        DatasetError: ``folder`` is not a folder, or holds a foreign entry (naming both).
    """
    folder = Path(folder)
    if problem := _not_a_folder(folder):
        raise DatasetError(problem)
    if folder.is_symlink():
        raise DatasetError(f"{folder}: a symlink where clip-gs prepare wrote a folder; refusing to clear it")
    foreign = foreign_entry(folder, kind)
    if foreign is not None:
        raise DatasetError(f"{folder}: holds {foreign}, which clip-gs prepare did not write; refusing to clear the "
                           "folder (move that file away, or use another output)")  # fmt: skip


def clear_folder(folder: str | os.PathLike, kind: str) -> None:
    """Remove ``folder`` and what ``prepare`` wrote in it, after :func:`check_clearable`; an absent
    folder is left absent.

    Raises:
        DatasetError: a foreign entry (nothing is removed), or an entry that cannot be removed.
    """
    folder = Path(folder)
    check_clearable(folder, kind)
    if not folder.exists():
        return
    entries = list(_entries(folder))
    try:
        for path, what in entries:
            if what == "file":
                path.unlink(missing_ok=True)
        for path, what in entries:
            if what == "dir":
                path.rmdir()
        folder.rmdir()
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot clear what clip-gs prepare wrote there: {exc.strerror or exc} "
                           f"({exc.filename})")  # fmt: skip


def is_marked(folder: str | os.PathLike) -> bool:
    """True when ``folder`` carries the marker (a regular file holding exactly :data:`MARKER_TEXT`)."""
    path = Path(folder) / MARKER_NAME
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            return handle.read(len(MARKER_TEXT) + 1) == MARKER_TEXT
    except OSError:
        return False


def check_claimable(folder: str | os.PathLike, what: str, evidence: Callable[[Path], bool] | None = None) -> None:
    """Refuse writing into ``folder`` unless it is absent, empty, marked, or ``evidence(folder)``
    says ``prepare`` wrote it.

    Args:
        what: what the folder is, for messages (``"output folder"``, ``"work folder"``).
        evidence: recognises a folder written before markers existed.

    Raises:
        DatasetError: not a folder, or a folder of someone else's (naming one of its entries).
    """
    folder = Path(folder)
    if problem := _not_a_folder(folder):
        raise DatasetError(problem.replace("not a folder", f"the {what} is not a folder"))
    if not folder.exists() or is_marked(folder):
        return
    try:
        entries = sorted(os.listdir(folder))
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot list the {what}: {exc.strerror or exc}") from exc
    if not entries or (evidence is not None and evidence(folder)):
        return
    first = next(iter(_entries(folder)), (folder / entries[0], "file"))[0].relative_to(folder).as_posix()
    raise DatasetError(
        f"{folder}: the {what} holds {first}, and clip-gs prepare did not write this folder (no {MARKER_NAME}); "
        "refusing to write there: give an empty or new folder"
    )


def claim_folder(folder: str | os.PathLike, what: str, evidence: Callable[[Path], bool] | None = None) -> None:
    """Create ``folder`` if needed and mark it as ``prepare``'s, after :func:`check_claimable`."""
    folder = Path(folder)
    check_claimable(folder, what, evidence)
    if is_marked(folder):
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        from clip_gs.storage import atomic_write

        atomic_write(folder / MARKER_NAME, MARKER_TEXT)
    except OSError as exc:
        raise DatasetError(f"{folder}: cannot create the {what}: {exc.strerror or exc}") from exc


__all__ = [
    "LAYOUTS",
    "MARKER_NAME",
    "MARKER_TEXT",
    "check_claimable",
    "check_clearable",
    "claim_folder",
    "clear_folder",
    "foreign_entry",
    "foreign_key",
    "is_marked",
]
