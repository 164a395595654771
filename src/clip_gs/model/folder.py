"""A model folder as the model reads it: ``config.json`` as a :class:`CLIPGSConfig` and ``teacher.json`` as a
:class:`TeacherRecord` whose identity may name a checkpoint file only inside the folder.

The file names and the readers of the files' bytes are :mod:`clip_gs.hub.folder`'s (one reader per file);
this module adds what needs the model and the teachers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clip_gs.errors import ConfigError, WeightsUnavailableError
from clip_gs.hub.folder import read_config_json, read_teacher_json
from clip_gs.model.config import CLIPGSConfig
from clip_gs.teachers.factory import teacher_file, teacher_spec_for


def read_model_config(path: str | os.PathLike) -> CLIPGSConfig:
    """The :class:`CLIPGSConfig` of a ``config.json`` (read by :func:`~clip_gs.hub.folder.read_config_json`).

    Every field must be there (``save_pretrained`` writes them all: a missing one is not silently
    defaulted), none other, each of its declared type and within :data:`~clip_gs.model.config.SIZE_CAPS`.

    Raises:
        ConfigError: see :func:`~clip_gs.hub.folder.read_json_object`; a missing, unknown, mistyped or
            out-of-range field (the message names the file and the field).
    """
    data = read_config_json(path)
    try:
        return CLIPGSConfig.from_dict(data, complete=True)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class TeacherRecord:
    """A model folder's ``teacher.json``: which teacher the model was trained against.

    Attributes:
        teacher: the teacher identity (``str(TeacherIdentity)``); ``""`` when none is recorded (the
            file is absent, or its ``teacher`` is null).
        embed_dim: the teacher's embedding size, when recorded.
        dataset_package_version: the clip-gs version that prepared the training data, when recorded.
    """

    teacher: str = ""
    embed_dim: int | None = None
    dataset_package_version: str | None = None

    @classmethod
    def from_checked(cls, data: Mapping) -> TeacherRecord:
        """From the fields :func:`~clip_gs.hub.folder.check_teacher_record` returns."""
        return cls(data.get("teacher") or "", data.get("embed_dim"), data.get("dataset_package_version"))


def read_teacher_record(source: str | os.PathLike, *, allow_external_teacher_files: bool = False) -> TeacherRecord:
    """The teacher record of a model folder (or Hub repo), read by :func:`~clip_gs.hub.folder.read_teacher_json`;
    an empty record when the folder has none.

    A teacher identity that names a local checkpoint file (see
    :func:`~clip_gs.teachers.factory.teacher_file`) must name one inside the folder the record is in:
    a relative path is taken relative to that folder, and a path that leads out of it (absolute,
    ``..``, a symbolic link; any path in a Hub repo, whose files live in the Hub cache) is refused unless
    ``allow_external_teacher_files``.

    Raises:
        ConfigError: an invalid ``teacher.json`` (:func:`~clip_gs.hub.folder.read_teacher_json`); an identity
            naming a file outside the folder.
        WeightsUnavailableError: a Hub repo whose ``teacher.json`` cannot be fetched (offline).
    """
    found = read_teacher_json(source)
    if found is None:
        return TeacherRecord()
    data, path = found
    record = TeacherRecord.from_checked(data)
    if record.teacher:
        try:
            teacher_file(record.teacher, Path(path).parent, allow_external_files=allow_external_teacher_files)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return record


def card_teacher_spec(identity: str | None) -> str | None:
    """The ``load_teacher`` spec of a teacher identity (:func:`~clip_gs.teachers.factory.teacher_spec_for`) for a
    model card's snippet, or None when there is none to show (no identity, a local checkpoint file, a random
    teacher)."""
    if not identity:
        return None
    try:
        return teacher_spec_for(identity)
    except (ConfigError, WeightsUnavailableError):
        return None


__all__ = ["TeacherRecord", "card_teacher_spec", "read_model_config", "read_teacher_record"]
