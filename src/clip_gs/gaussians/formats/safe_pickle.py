"""Reading pickled NumPy data without running the pickle's code: a restricted unpickler.

A pickle is a program: unpickling calls whatever global it names (``os.system``,
``builtins.eval``, ``subprocess.Popen``, any class's ``__reduce__``). :class:`RestrictedUnpickler`
resolves only the globals of :data:`ALLOWED_GLOBALS`, the names NumPy and ``torch.save`` use to
spell plain numeric arrays, and hands back **checking stand-ins**, never the real callables:

===================================================== ==============================================
global                                                what the stand-in accepts
===================================================== ==============================================
``numpy.core.multiarray._reconstruct`` (and           ``(ndarray, (0,), b"b")`` only: the empty array
``numpy._core.multiarray._reconstruct``, NumPy 2)     that ``ndarray.__setstate__`` then fills
``numpy.ndarray``                                     a marker for ``_reconstruct``; calling it is refused
``numpy.dtype``                                       the codes of :data:`NUMERIC_DTYPES` (bool, ints,
                                                      floats); object, string and structured refused
``numpy.core.multiarray.scalar`` (``numpy._core``)    a numeric dtype and exactly ``itemsize`` bytes
``numpy.core.numeric._frombuffer`` (``numpy._core``)  protocol 5's arrays: a numeric dtype, a shape
                                                      matching the buffer's length, order ``C`` / ``F``
``_codecs.encode``                                    ``(str, "latin1")`` only: how protocol 2 (the one
                                                      ``torch.save`` writes) spells a ``bytes`` object
===================================================== ==============================================

Any other global is refused with :class:`UnsafePickleError` naming the file and the global
(``builtins.eval``, ``os.system``, ``posix.system``, a custom class ...), before anything is called.
A persistent id (``torch.save``'s tensors and storages) is refused too: only NumPy arrays are read.
What comes out is checked again by :func:`check_numeric_arrays` (numeric dtypes only, no object
arrays) before a caller looks at it.

Containers: :func:`load_pickled` reads a plain pickle stream, a ``torch.save`` zip archive (its one
``<archive>/data.pkl``) or a legacy ``torch.save`` stream (magic number, protocol 1001, system
info, then the object), always through the restricted unpickler.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from clip_gs.errors import GaussianFormatError
from clip_gs.gaussians.formats.limits import check_compression_ratio

NUMERIC_DTYPES = frozenset(
    f"{order}{code}" for order in ("", "<", ">", "|", "=")
    for code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "?")
)  # fmt: skip
"""The dtype codes the ``numpy.dtype`` stand-in builds: booleans, integers and floats (any byte order)."""

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""The first pickled value of a legacy (pre-zip) ``torch.save`` stream."""

TORCH_LEGACY_PROTOCOL = 1001
"""The second one: the legacy stream's protocol version."""

MAX_NESTING = 32
"""Deepest nesting of containers :func:`check_numeric_arrays` walks."""


class UnsafePickleError(GaussianFormatError):
    """A pickled file names a global outside the allow-list (or a persistent id): refused before it is called."""


class _NdarrayMarker:
    """What ``numpy.ndarray`` resolves to: a marker that ``_reconstruct`` accepts, never a callable class."""

    def __repr__(self) -> str:
        return "numpy.ndarray (marker)"


NDARRAY = _NdarrayMarker()


def _numeric_dtype(spec: object, *args: object) -> np.dtype:
    if not isinstance(spec, str) or spec not in NUMERIC_DTYPES or any(not isinstance(a, bool) for a in args):
        raise UnsafePickleError(f"numpy.dtype{(spec, *args)!r}: only numeric dtypes are read (bool, ints, floats)")
    return np.dtype(spec)


def _checked_dtype(dtype: object) -> np.dtype:
    plain = isinstance(dtype, np.dtype) and dtype.fields is None and dtype.subdtype is None
    if not plain or dtype.kind not in "biuf":
        raise UnsafePickleError(f"dtype {dtype!r}: only numeric dtypes are read")
    return dtype


def _reconstruct(subtype: object, shape: object, code: object) -> np.ndarray:
    if subtype is not NDARRAY or shape != (0,) or code != b"b":
        raise UnsafePickleError(f"_reconstruct{(subtype, shape, code)!r}: only NumPy's (ndarray, (0,), b'b') is read")
    return np.empty((0,), dtype=np.int8)  # ndarray.__setstate__ (the pickle's BUILD) gives its shape, dtype, bytes


def _scalar(dtype: object, raw: object = None) -> np.generic:
    dtype = _checked_dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise UnsafePickleError(f"numpy scalar of {dtype}: expected {dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype=dtype)[0]


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    dtype = _checked_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or order not in ("C", "F"):
        raise UnsafePickleError(f"_frombuffer of {type(buffer).__name__} in order {order!r}: not a NumPy array")
    sizes_ok = isinstance(shape, tuple) and all(type(s) is int and s >= 0 for s in shape)
    if not sizes_ok:
        raise UnsafePickleError(f"_frombuffer: shape {shape!r} is not a tuple of non-negative ints")
    data = bytes(buffer)
    if len(data) != int(np.prod(shape, dtype=object)) * dtype.itemsize:
        raise UnsafePickleError(f"_frombuffer: {len(data)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order)


def _latin1(text: object, encoding: object = "utf-8", errors: object = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}): only (str, 'latin1') is read")
    return text.encode("latin-1")


ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _numeric_dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}
"""``(module, name) -> checking stand-in``: every global a pickle may name (module docstring)."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` resolving only :data:`ALLOWED_GLOBALS` (to their stand-ins).

    Args:
        file: the binary stream.
        path: the file it comes from, named in every refusal.
    """

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self.path}: refuses to unpickle global {module}.{name}: only plain NumPy arrays are read from a "
                f"pickle (allowed: {', '.join(f'{m}.{n}' for m, n in ALLOWED_GLOBALS)})"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.path}: refuses persistent id {str(pid)[:80]!r} (a torch tensor or storage); only "
                                "plain NumPy arrays are read from a pickle")  # fmt: skip


def _unpickle(stream: io.BytesIO, path: Path):
    """One object from ``stream`` through :class:`RestrictedUnpickler`; every failure a :class:`GaussianFormatError`."""
    try:
        return RestrictedUnpickler(stream, path).load()
    except GaussianFormatError as exc:
        if str(path) not in str(exc):
            raise type(exc)(f"{path}: {exc}") from None
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises anything (EOFError, ValueError, TypeError, ...)
        raise GaussianFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _torch_zip_member(raw: bytes, path: Path) -> bytes:
    """The ``<archive>/data.pkl`` of a ``torch.save`` zip archive, size checked before it is read."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = [i for i in archive.infolist() if i.filename.count("/") == 1 and i.filename.endswith("/data.pkl")]
        if len(members) != 1:
            raise GaussianFormatError(f"{path}: a zip archive without exactly one <archive>/data.pkl (a torch.save file "
                                      f"has one); members: {[i.filename for i in archive.infolist()][:8]}")  # fmt: skip
        check_compression_ratio(path, members[0].file_size, len(raw), 64, "data.pkl")
        return archive.read(members[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, GaussianFormatError):
            raise
        raise GaussianFormatError(f"{path}: an unreadable zip archive ({type(exc).__name__}: {exc})") from None


def load_pickled(raw: bytes, path: Path):
    """The object pickled in ``raw`` (the content of ``path``), read with :class:`RestrictedUnpickler`.

    Reads a plain pickle (nothing may follow its STOP), a ``torch.save`` zip archive and a legacy
    ``torch.save`` stream (module docstring). The result is not yet checked: see :func:`check_numeric_arrays`.

    Raises:
        UnsafePickleError: a global outside the allow-list or a persistent id (names both).
        GaussianFormatError: anything else unreadable (names the file and the problem).
    """
    if raw[:4] == b"PK\x03\x04":
        return _unpickle(io.BytesIO(_torch_zip_member(raw, path)), path)
    stream = io.BytesIO(raw)
    first = _unpickle(stream, path)
    if type(first) is int and first == TORCH_LEGACY_MAGIC:
        protocol = _unpickle(stream, path)
        if protocol != TORCH_LEGACY_PROTOCOL:
            raise GaussianFormatError(
                f"{path}: legacy torch.save stream of protocol {protocol!r}, not {TORCH_LEGACY_PROTOCOL}"
            )
        _unpickle(stream, path)  # system info: byte order and type sizes
        return _unpickle(stream, path)  # the object; the storages that would follow are refused as persistent ids
    if stream.tell() != len(raw):
        raise GaussianFormatError(f"{path}: {len(raw) - stream.tell():,} bytes after the end of the pickle")
    return first


def check_numeric_arrays(value: object, path: Path) -> None:
    """Refuse any array in ``value`` (dicts, lists and tuples walked, each shared container once) that
    is not a plain numeric ndarray.

    Raises:
        GaussianFormatError: an object, string or structured array (names the file and the key path),
            or containers nested deeper than :data:`MAX_NESTING`.
    """
    seen: set[int] = set()
    pending = [(value, "", 0)]
    while pending:
        item, where, depth = pending.pop()
        if isinstance(item, np.ndarray):
            if type(item) is not np.ndarray or item.dtype.kind not in "biuf" or item.dtype.fields is not None:
                raise GaussianFormatError(f"{path}: {where or 'the value'} is an array of dtype {item.dtype} "
                                          f"({type(item).__name__}); only numeric arrays are read (no object arrays)")  # fmt: skip
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            if depth >= MAX_NESTING:
                raise GaussianFormatError(f"{path}: containers nested deeper than {MAX_NESTING} at {where}")
            seen.add(id(item))
            children = item.items() if isinstance(item, dict) else enumerate(item)
            pending.extend((child, f"{where}[{key!r}]", depth + 1) for key, child in children)


__all__ = [
    "ALLOWED_GLOBALS",
    "NUMERIC_DTYPES",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "check_numeric_arrays",
    "load_pickled",
]
