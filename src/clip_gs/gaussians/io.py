"""`load_gaussians` / `save_gaussians`: one entry point for every 3DGS file format.

Formats register a :class:`~clip_gs.gaussians.format_spec.GaussianFormat` (name, extensions, a content sniffer, a reader and
optionally a writer). Loading tries the sniffers on the first bytes of the file in
registration priority order, then falls back to the extension; saving picks by extension or by
an explicit ``format=`` name.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.errors import GaussianFormatError, UnsupportedFormatError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.files import open_regular_file
from clip_gs.gaussians.format_spec import GaussianFormat

SNIFF_BYTES = 4096
"""How many leading bytes of a file the sniffers see."""


_FORMATS: list[GaussianFormat] = []
_builtins_registered = False


def register_format(fmt: GaussianFormat, *, first: bool = False) -> None:
    """Add a format. ``first=True`` puts its sniffer before the others (for a more specific
    variant of an existing container, e.g. a compressed ``.ply`` before the INRIA ``.ply``)."""
    global _FORMATS
    others = [f for f in _FORMATS if f.name != fmt.name]
    _FORMATS = [fmt, *others] if first else [*others, fmt]


def registered_formats() -> list[GaussianFormat]:
    """The registered formats in sniffing order."""
    _ensure_builtin_formats()
    return list(_FORMATS)


def _ensure_builtin_formats() -> None:
    """Register the built-in formats (:data:`clip_gs.gaussians.formats.BUILTIN_FORMATS`) once."""
    global _builtins_registered
    if not _builtins_registered:
        from clip_gs.gaussians.formats import BUILTIN_FORMATS

        for fmt in BUILTIN_FORMATS:
            register_format(fmt)
        _builtins_registered = True


def _describe_supported() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.extensions)})" for f in _FORMATS)


def load_gaussians(path: str | os.PathLike[str], format: str | None = None, **options) -> GaussianCloud:
    """Read a 3DGS file of any supported format into a :class:`GaussianCloud`.

    The format is found from the content (magic bytes / header) first, then from the extension.

    Args:
        path: the file.
        format: force a format by name (see :func:`registered_formats`).
        options: passed to the format's reader (e.g. ``opacity_eps=`` for ``.splat``, compressed
            ``.ply`` and ``.spz``, ``coordinates="stored"`` for ``.spz``); a reader that does not
            take an option raises ``TypeError``.

    Only regular files are read (symlinks followed): a FIFO, device or folder is refused before
    it is opened (:mod:`clip_gs.gaussians.files`). Running out of memory while reading is
    reported as a :class:`GaussianFormatError` naming the file, never as a bare ``MemoryError``.

    Raises:
        GaussianFormatError: the file is missing, unreadable, not a regular file, invalid, or
            too large for the memory available.
        UnsupportedFormatError: no registered format recognises it (the message lists them).
    """
    _ensure_builtin_formats()
    path = Path(path)
    try:
        return _load(path, format, options)
    except MemoryError:
        pass  # raised below, outside this block, so the failed allocation's frames are freed first
    raise GaussianFormatError(f"{path}: not enough memory to read this file")


def _load(path: Path, format: str | None, options: dict) -> GaussianCloud:
    if format is not None:
        return _by_name(format).read(path, **options)
    with open_regular_file(path) as fh:
        try:
            head = fh.read(SNIFF_BYTES)
        except OSError as exc:
            raise GaussianFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    for fmt in _FORMATS:
        if fmt.sniff(head):
            return fmt.read(path, **options)
    for fmt in _FORMATS:
        if _has_extension(path, fmt):
            return fmt.read(path, **options)
    raise UnsupportedFormatError(
        f"{path}: not a recognised 3DGS file (content and extension {path.suffix or '(none)'} match no format); "
        f"supported formats: {_describe_supported()}"
    )


def save_gaussians(cloud: GaussianCloud, path: str | os.PathLike[str], format: str | None = None, **options) -> Path:
    """Write ``cloud`` to ``path`` in the format given by ``format`` or by the extension.

    ``options`` go to the format's writer (e.g. ``ascii=True`` or ``byte_order=">"`` for ply).
    Returns the path written.
    """
    _ensure_builtin_formats()
    path = Path(path)
    if cloud.batch_shape:
        raise GaussianFormatError(f"{path}: save one object at a time, got a batch {list(cloud.batch_shape)}")
    if format is not None:
        fmt = _by_name(format)
    else:
        matches = [f for f in _FORMATS if _has_extension(path, f) and f.write is not None]
        if not matches:
            writable = ", ".join(f"{f.name} ({'/'.join(f.extensions)})" for f in _FORMATS if f.write)
            raise UnsupportedFormatError(
                f"{path}: cannot write extension {path.suffix or '(none)'}; writable: {writable}"
            )
        fmt = matches[0]
    if fmt.write is None:
        raise UnsupportedFormatError(f"{path}: format {fmt.name!r} is read-only")
    fmt.write(cloud, path, **options)
    return path


def find_gaussian_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every file under the folder ``root`` (recursively) whose name ends with the extension of a
    registered 3DGS format, sorted by path. Which of them really hold 3DGS data is decided when
    they are loaded.

    Raises:
        GaussianFormatError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise GaussianFormatError(f"{root}: not a folder")
    formats = registered_formats()
    return sorted(p for p in root.rglob("*") if p.is_file() and any(_has_extension(p, f) for f in formats))


def _has_extension(path: Path, fmt: GaussianFormat) -> bool:
    """True when the file name ends with one of the format's extensions (multi-dot ones such as
    ``.compressed.ply`` included)."""
    return path.name.lower().endswith(fmt.extensions)


def _by_name(name: str) -> GaussianFormat:
    for fmt in _FORMATS:
        if fmt.name == name:
            return fmt
    raise UnsupportedFormatError(f"unknown format {name!r}; supported formats: {_describe_supported()}")
