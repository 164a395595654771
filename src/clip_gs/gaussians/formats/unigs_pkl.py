"""UniGS's per-object ``.pkl`` files (Objaverse 3DGS, huggingface.co/datasets/lihy285/UniGS), read
without running the pickle's code.

What UniGS writes (``gaussian-splatting/scripts/Objaverse/make_datasets.py`` of
github.com/Li-Hao-yuan/UniGS; read back there with ``torch.load``): ``torch.save`` of one dict
per object, a zip archive whose ``data.pkl`` is a protocol-2 pickle holding

============================ ===================================================================
key                          value
============================ ===================================================================
``"3dgs"``                   ``[N, 14]`` float32 ndarray, the fitted Gaussians (SH degree 0), raw
                             INRIA values in the columns of :data:`COLUMNS`: ``x y z``,
                             ``f_dc_0..2``, ``opacity`` (logit), ``scale_0..2`` (log),
                             ``rot_0..3`` (quaternion wxyz, unnormalised)
``"machine_prompt"``         Cap3D's automated caption (str; absent when Cap3D has none)
``"human_prompt"``           Cap3D's human captions (list of str; absent when there are none)
``"label"``                  the LVIS category (OpenShape's ``lvis.json``), ``""`` outside LVIS
``"label_count"``            its index in UniGS's sorted category list (0 outside LVIS)
``"name"``                   the Objaverse uid
``"item_path"``, ``"img"``,  paths on UniGS's machines (ignored)
``"glb_path"``, ``"dataset"``
============================ ===================================================================

Every file is read through :mod:`~clip_gs.gaussians.formats.safe_pickle`'s restricted unpickler
(plain pickles, ``torch.save`` zip archives and legacy ``torch.save`` streams alike): only NumPy's
numeric arrays are rebuilt, and a file naming any other global is refused naming it. The file's
size is checked against ``max_bytes`` (:data:`~clip_gs.gaussians.formats.limits.MAX_PICKLE_BYTES`)
before it is read. The array must be ``[N, 14]`` (N >= 1) of a float dtype, every value finite,
the log-scales within :func:`~clip_gs.gaussians.formats.limits.check_log_scales`'s range.

**Frame.** UniGS's converter turns each GLB's points from glTF's ``+y`` up into Blender's ``+z``
up (``(x, y, z) -> (x, -z, y)``, the frame of Zero123's renders the fits are made from), and scales
them into a unit cube. The clouds are returned as stored; :data:`UNIGS_UP_AXIS` is the up axis
:func:`~clip_gs.gaussians.frames.default_up_axis` gives ``.pkl`` files, so ``load_asset`` brings
them into the model's ``+y`` frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clip_gs.errors import GaussianFormatError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.files import read_regular_file
from clip_gs.gaussians.formats.limits import MAX_PICKLE_BYTES, check_log_scales
from clip_gs.gaussians.formats.safe_pickle import check_numeric_arrays, load_pickled

COLUMNS = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
           "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
"""The 14 columns of UniGS's ``"3dgs"`` array, in order (the INRIA ``.ply`` property names)."""

GAUSSIANS_KEY = "3dgs"
UNIGS_UP_AXIS = "+z"
"""The up axis UniGS's Objaverse fits stand in (module docstring, Frame)."""


@dataclass(frozen=True)
class UniGSObject:
    """One UniGS ``.pkl``: the Gaussians, the captions and the LVIS label.

    Attributes:
        cloud: the Gaussians, ``N`` of them, SH degree 0, float32, in the file's frame (``+z`` up).
        human_captions: Cap3D's human captions (empty when the file has none).
        machine_caption: Cap3D's automated caption, or None.
        label: the LVIS category, or None for an object outside LVIS (``""`` in the file).
        uid: the Objaverse uid the file names (``"name"``), or None.
    """

    cloud: GaussianCloud
    human_captions: tuple[str, ...] = ()
    machine_caption: str | None = None
    label: str | None = None
    uid: str | None = None

    @property
    def captions(self) -> tuple[str, ...]:
        """Every caption, the human ones first (UniGS's retrieval uses the first), empty ones left out."""
        return tuple(c for c in (*self.human_captions, self.machine_caption or "") if c)


def _text(record: dict, key: str, path: Path) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise GaussianFormatError(f"{path}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _captions(record: dict, path: Path) -> tuple[tuple[str, ...], str | None]:
    human = record.get("human_prompt", [])
    if isinstance(human, str):
        human = [human]
    if not isinstance(human, (list, tuple)) or not all(isinstance(c, str) for c in human):
        raise GaussianFormatError(f"{path}: 'human_prompt' must be a list of strings, got {type(human).__name__}")
    machine = record.get("machine_prompt")
    if isinstance(machine, (list, tuple)) and machine and all(isinstance(c, str) for c in machine):
        machine = machine[0]  # UniGS's reader takes the first when it is a list
    if machine is not None and not isinstance(machine, str):
        raise GaussianFormatError(f"{path}: 'machine_prompt' must be a string, got {type(machine).__name__}")
    return tuple(c for c in human if c), machine or None


def gaussians_from_array(array: object, path: Path) -> GaussianCloud:
    """A :class:`GaussianCloud` from UniGS's ``[N, 14]`` array (:data:`COLUMNS`), as stored.

    Raises:
        GaussianFormatError: not a float ndarray of shape ``[N, 14]`` with N >= 1, a non-finite value
            (names the first row and column), a log-scale out of range, an all-zero quaternion.
    """
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        what = f"an array of dtype {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
        raise GaussianFormatError(f"{path}: {GAUSSIANS_KEY!r} must be a float array [N, {len(COLUMNS)}], got {what}")
    if array.ndim != 2 or array.shape[1] != len(COLUMNS) or array.shape[0] < 1:
        raise GaussianFormatError(f"{path}: {GAUSSIANS_KEY!r} must have shape [N, {len(COLUMNS)}] with N >= 1 (columns "
                                  f"{', '.join(COLUMNS)}), got {list(array.shape)}")  # fmt: skip
    values = np.array(array, dtype=np.float32, order="C")  # a writable copy (a pickled buffer may be read-only)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise GaussianFormatError(f"{path}: {int(bad.sum())} non-finite value(s) in {GAUSSIANS_KEY!r} (first: row {row}, "
                                  f"column {COLUMNS[col]}: {array[row, col]!r})")  # fmt: skip
    check_log_scales(path, values[:, 7:10], "scale_0..2")
    tensor = torch.from_numpy(values)
    return GaussianCloud(
        means=tensor[:, 0:3].contiguous(),
        sh=tensor[:, None, 3:6].contiguous(),
        opacity_logits=tensor[:, 6].contiguous(),
        log_scales=tensor[:, 7:10].contiguous(),
        quats=tensor[:, 10:14].contiguous(),
        source=str(path),
    )


def read_unigs_pkl(path: str | Path, max_bytes: int = MAX_PICKLE_BYTES) -> UniGSObject:
    """Read one UniGS ``.pkl`` (module docstring) without running its code.

    Args:
        path: the file.
        max_bytes: the largest file read (checked from its size before reading).

    Returns:
        :class:`UniGSObject`: the cloud (``[N]`` Gaussians), the captions, the LVIS label and the uid.

    Raises:
        UnsafePickleError: the file names a global outside the allow-list (``os.system``,
            ``builtins.eval``, a custom class ...) or holds torch tensors; nothing was called.
        GaussianFormatError: not a regular file, above ``max_bytes``, not a readable pickle, not a
            dict with ``"3dgs"``, an object array, a wrong shape, a non-finite value, a caption or
            label that is not text (each naming the file and the problem).
    """
    path = Path(path)
    record = load_pickled(read_regular_file(path, max_bytes=max_bytes), path)
    check_numeric_arrays(record, path)
    if not isinstance(record, dict) or GAUSSIANS_KEY not in record:
        keys = sorted(map(str, record))[:10] if isinstance(record, dict) else None
        raise GaussianFormatError(f"{path}: not a UniGS object (a dict with {GAUSSIANS_KEY!r}); got "
                                  f"{f'a dict with keys {keys}' if keys is not None else type(record).__name__}")  # fmt: skip
    cloud = gaussians_from_array(record[GAUSSIANS_KEY], path)
    human, machine = _captions(record, path)
    return UniGSObject(cloud, human, machine, _text(record, "label", path) or None, _text(record, "name", path) or None)


def read_unigs_cloud(path: str | Path, max_bytes: int = MAX_PICKLE_BYTES) -> GaussianCloud:
    """The Gaussians of a UniGS ``.pkl`` (:func:`read_unigs_pkl`): the reader ``load_gaussians`` uses for ``.pkl``."""
    return read_unigs_pkl(path, max_bytes).cloud


__all__ = ["COLUMNS", "UNIGS_UP_AXIS", "UniGSObject", "gaussians_from_array", "read_unigs_cloud", "read_unigs_pkl"]
