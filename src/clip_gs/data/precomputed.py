"""Precomputed teacher embeddings as ``prepare`` input (``--embeddings DIR``): a user who already
has the image (and text) features of the objects' views, from OpenShape's or Cap3D's releases or
from an earlier run, skips rendering and the teacher's image tower.

One safetensors file per object, ``DIR/<key>.safetensors``, where ``<key>`` is the object's id
(its path relative to the source folder without extension, so ``DIR`` may mirror the source
tree) or its file stem (the uid of Objaverse and Cap3D), matched as captions are
(:func:`~clip_gs.data.prepare.list_sources`). Tensors:

- ``image_embeddings [V, E]`` (required): the teacher's embeddings of V views of the object;
- ``text_embeddings [T, E]`` (optional): of the object's T captions, in their order; without
  them the teacher embeds the captions (cheap next to the image tower);
- ``viewmats [V, 4, 4]`` and ``Ks [V, 3, 3]`` (optional): the views' world-to-camera matrices
  (in the normalised object frame every record uses) and intrinsics.

Metadata (safetensors' string header): ``teacher``, the identity (``str(teacher.identity)``) or
load spec of the teacher that made them, checked against the run's teacher; and ``cameras``:
``"stored"`` when the file holds ``viewmats`` / ``Ks``, or ``"orbit"`` when the views were
prepare's own orbit (``--views`` at ``--elevation``, regular azimuths from 0), whose cameras are
then recorded. Nothing is guessed: a file without these facts is refused, naming it, and so is
one with other tensors, tensors that are not floating point, or (the file) anything but a regular
file of at most :data:`MAX_EMBEDDINGS_BYTES`. A file stem that several files share is the key of
none of them (as with captions). :func:`write_embeddings` writes the format.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from clip_gs.errors import DatasetError

SUFFIX = ".safetensors"
CAMERAS = ("stored", "orbit")
TENSORS = ("image_embeddings", "text_embeddings", "viewmats", "Ks")
"""Every tensor a precomputed embeddings file may hold."""

MAX_EMBEDDINGS_BYTES = 256 << 20
"""Largest precomputed embeddings file read (256 MiB: 4,096 views of 16,384-d embeddings)."""


def write_embeddings(path: str | os.PathLike, image_embeddings: torch.Tensor, teacher: str,
                     text_embeddings: torch.Tensor | None = None, viewmats: torch.Tensor | None = None,
                     Ks: torch.Tensor | None = None) -> Path:  # fmt: skip
    """Write one object's precomputed embeddings (see the module docstring); returns the path.

    Args:
        image_embeddings: ``[V, E]``.
        teacher: the identity or load spec of the teacher that made them.
        text_embeddings: ``[T, E]`` of the object's captions, in order (optional).
        viewmats, Ks: ``[V, 4, 4]`` / ``[V, 3, 3]`` cameras of the views; None: prepare's orbit.
    """
    from safetensors.torch import save_file

    tensors = {"image_embeddings": image_embeddings.float().contiguous()}
    if text_embeddings is not None:
        tensors["text_embeddings"] = text_embeddings.float().contiguous()
    if (viewmats is None) != (Ks is None):
        raise DatasetError(f"{path}: give both viewmats and Ks, or neither")
    if viewmats is not None:
        tensors |= {"viewmats": viewmats.float().contiguous(), "Ks": Ks.float().contiguous()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        tensors, str(path), metadata={"teacher": teacher, "cameras": "stored" if viewmats is not None else "orbit"}
    )
    return path


def attach_embeddings(items: Sequence, folder: str | os.PathLike, keys_of) -> list:
    """``items`` with their embedding files (``SourceItem.embeddings``).

    Args:
        keys_of: ``item -> keys`` it may be found under (id first, then its file stem).

    Raises:
        DatasetError: ``folder`` is missing, or objects without a file (naming a few).
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{folder}: the precomputed embeddings folder does not exist")
    files = sorted(root.rglob(f"*{SUFFIX}"))
    table: dict[str, Path] = {p.relative_to(root).with_suffix("").as_posix(): p for p in files}
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    for path in files:
        if stems[path.stem] == 1:  # a stem several files share names none of them
            table.setdefault(path.stem, path)
    out, missing = [], []
    for item in items:
        found = next((table[k] for k in keys_of(item) if k in table), None)
        if found is None:
            missing.append(item.id)
        out.append(replace(item, embeddings=None if found is None else str(found)))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(f"{folder}: no precomputed embeddings for {len(missing)} of {len(items)} objects ({shown}); "
                           f"expected <id>{SUFFIX} or <file stem>{SUFFIX}")  # fmt: skip
    return out


def read_embeddings(path: str, teacher, captions: Sequence[str]):
    """``(text [T, E] or None, image [V, E], viewmats [V, 4, 4] or None, Ks or None)`` of one file,
    checked against the run's ``teacher`` (identity or spec, width) and the object's ``captions``.

    Raises:
        DatasetError: unreadable file, not a regular file or larger than :data:`MAX_EMBEDDINGS_BYTES`,
            missing, unknown or malformed tensors, another teacher, a width other than the
            teacher's, text rows that are not one per caption, unknown cameras.
    """
    from safetensors import safe_open

    from clip_gs.gaussians.files import check_regular_file

    size = check_regular_file(path, DatasetError).st_size
    if size > MAX_EMBEDDINGS_BYTES:
        raise DatasetError(f"{path}: {size:,} bytes, more than a precomputed embeddings file may have "
                           f"({MAX_EMBEDDINGS_BYTES:,})")  # fmt: skip
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open has no iter
    except Exception as exc:  # a damaged or foreign file
        raise DatasetError(f"{path}: cannot read precomputed embeddings: {exc}") from exc
    from clip_gs.teachers.factory import teacher_spec_for

    made_by, identity = meta.get("teacher"), str(teacher.identity)
    try:
        spec = teacher_spec_for(identity)
    except Exception:  # noqa: BLE001 - identities no spec loads (test teachers) only match exactly
        spec = identity
    if made_by not in (identity, spec):
        raise DatasetError(f"{path}: embeddings of teacher {made_by!r}, but this run's teacher is {identity}")
    unknown = sorted(set(tensors) - set(TENSORS))
    if unknown:
        raise DatasetError(f"{path}: unknown tensor(s) {', '.join(unknown)} (a file holds {', '.join(TENSORS)})")
    if not all(t.is_floating_point() for t in tensors.values()):
        raise DatasetError(f"{path}: tensors must be floating point, got "
                           f"{', '.join(f'{n} {t.dtype}' for n, t in tensors.items())}")  # fmt: skip
    image = tensors.get("image_embeddings")
    width = int(teacher.embed_dim)
    if image is None or image.ndim != 2 or image.shape[0] < 1 or image.shape[1] != width:
        raise DatasetError(f"{path}: image_embeddings must be [V >= 1, {width}], got "
                           f"{None if image is None else list(image.shape)}")  # fmt: skip
    text = tensors.get("text_embeddings")
    if text is not None and (text.ndim != 2 or text.shape != (len(captions), width)):
        raise DatasetError(f"{path}: text_embeddings must be one [{width}] row per caption ({len(captions)}), "
                           f"got {list(text.shape)}")  # fmt: skip
    views = image.shape[0]
    cameras = meta.get("cameras")
    if cameras not in CAMERAS:
        raise DatasetError(f"{path}: metadata 'cameras' must be one of {CAMERAS}, got {cameras!r}")
    viewmats, Ks = tensors.get("viewmats"), tensors.get("Ks")
    if cameras == "stored" and (viewmats is None or Ks is None or tuple(viewmats.shape) != (views, 4, 4)
                                or tuple(Ks.shape) != (views, 3, 3)):  # fmt: skip
        raise DatasetError(f"{path}: cameras 'stored' needs viewmats [{views}, 4, 4] and Ks [{views}, 3, 3]")
    return (None if text is None else text.float(), image.float(),
            None if cameras == "orbit" else viewmats.float(), None if cameras == "orbit" else Ks.float())  # fmt: skip


__all__ = ["MAX_EMBEDDINGS_BYTES", "SUFFIX", "TENSORS", "attach_embeddings", "read_embeddings", "write_embeddings"]
