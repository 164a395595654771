"""The files of a model folder (``save_pretrained``, the training export, a Hub repo), and reading them.

::

    config.json          the architecture (:class:`~clip_gs.model.config.CLIPGSConfig`)        CONFIG_NAME
    model.safetensors    the weights                                                           WEIGHTS_NAME
    teacher.json         the identity of the teacher the model was trained against (optional) TEACHER_NAME
    metrics.json         the training export's record: validation / test metrics, data (opt.) METRICS_NAME
    README.md            the model card (clip_gs.model.card)                                  CARD_NAME
    curves.png           training curves (optional)                                           CURVES_NAME
    eval/report.json     the latest ``clip-gs eval`` report, with its figures (optional)      EVAL_REPORT

Every layer that reads or writes one of these names takes it from here (one name per file), and
``config.json`` and ``teacher.json`` are read by one validating reader each (:func:`read_model_config`,
:func:`read_teacher_record`) through :func:`read_json_object`: at most :data:`MAX_RECORD_BYTES`, UTF-8,
one JSON object without repeated keys; anything else is a :class:`~clip_gs.errors.ConfigError` naming
the file (and the field).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clip_gs.errors import ConfigError, FileNotOnHubError
from clip_gs.model.config import CLIPGSConfig
from clip_gs.strict_json import unique_keys

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TEACHER_NAME = "teacher.json"
METRICS_NAME = "metrics.json"
CARD_NAME = "README.md"
CURVES_NAME = "curves.png"
EVAL_DIR = "eval"
"""Where ``clip-gs eval`` writes into a model folder by default."""
EVAL_REPORT = f"{EVAL_DIR}/report.json"
"""Where ``clip-gs eval`` writes the latest report of a model folder (relative to the folder)."""

MAX_RECORD_BYTES = 1 << 20
"""The largest ``config.json`` / ``teacher.json`` read (1 MiB; what clip-gs writes is under 2 KB). A
larger file is refused unread rather than loaded whole into memory."""


def model_file(source: str, filename: str, required: bool) -> Path | None:
    """A file of a model folder or Hub repo ``source`` (None when absent and not required).

    Raises:
        WeightsUnavailableError: the Hub cannot be reached and the file is not cached (an optional
            file included: its absence cannot be told from its unavailability then).
        FileNotOnHubError: a required file the repo does not have.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        return path if path.is_file() or required else None
    from clip_gs.downloads import hub_download

    try:
        return hub_download(source, filename)
    except FileNotOnHubError:  # absent; an unreachable Hub or a missing cache entry is an error
        if required:
            raise
        return None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in the file ``path`` (a model folder's ``config.json`` or ``teacher.json``).

    Raises:
        ConfigError: the file is missing or unreadable, larger than :data:`MAX_RECORD_BYTES`, not UTF-8,
            not JSON (nesting too deep for the parser included), not an object, or repeats a key (JSON
            keeps the last silently); the message names the file and ``what`` it should be.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: missing; expected the {what} (a model folder holds {CONFIG_NAME} next to {WEIGHTS_NAME})"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable {what}: {exc}") from exc
    if len(raw) > MAX_RECORD_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_RECORD_BYTES} bytes; not a {what}")
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: not UTF-8 text ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, too deep nesting
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_model_config(path: str | os.PathLike) -> CLIPGSConfig:
    """The one reader of ``config.json``: the :class:`CLIPGSConfig` it holds.

    Every field must be there (``save_pretrained`` writes them all: a missing one is not silently
    defaulted), none other, each of its declared type and within :data:`~clip_gs.model.config.SIZE_CAPS`.

    Raises:
        ConfigError: see :func:`read_json_object`; a missing, unknown, mistyped or out-of-range field
            (the message names the file and the field).
    """
    data = read_json_object(path, "CLIPGSConfig (a JSON object of its fields)")
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
    def from_dict(cls, data: Mapping, source: str = "teacher record") -> TeacherRecord:
        """Check the fields of a teacher record.

        Raises:
            ConfigError: a field other than ``teacher`` (a string or null), ``embed_dim`` (a positive
                integer or null) and ``dataset_package_version`` (a string or null), or a value of
                another type (the message names ``source`` and the field).
        """
        unknown = sorted(set(data) - set(TEACHER_FIELDS))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown}; a teacher record holds {list(TEACHER_FIELDS)}")
        teacher, dim, version = (data.get(k) for k in TEACHER_FIELDS)
        if teacher is not None and not isinstance(teacher, str):
            raise ConfigError(f"{source}: 'teacher' must be a teacher identity string, got {teacher!r:.80}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0):
            raise ConfigError(f"{source}: 'embed_dim' must be a positive integer, got {dim!r:.80}")
        if version is not None and not isinstance(version, str):
            raise ConfigError(f"{source}: 'dataset_package_version' must be a string, got {version!r:.80}")
        return cls(teacher or "", dim, version)

    def to_dict(self) -> dict:
        """The fields as ``teacher.json`` holds them (``teacher`` null when none is recorded; absent
        optional fields left out)."""
        data: dict = {"teacher": self.teacher or None}
        if self.embed_dim is not None:
            data["embed_dim"] = self.embed_dim
        if self.dataset_package_version is not None:
            data["dataset_package_version"] = self.dataset_package_version
        return data


TEACHER_FIELDS = ("teacher", "embed_dim", "dataset_package_version")
"""The fields of ``teacher.json`` (:class:`TeacherRecord`)."""


def write_teacher_record(folder: str | os.PathLike, record: Mapping | TeacherRecord) -> None:
    """Write ``folder/teacher.json`` (``{"teacher": identity, "embed_dim": E, ...}``; sorted keys).

    Raises:
        ConfigError: a record :meth:`TeacherRecord.from_dict` refuses (nothing is written).
    """
    if not isinstance(record, TeacherRecord):
        record = TeacherRecord.from_dict(dict(record), f"teacher record for {Path(folder) / TEACHER_NAME}")
    (Path(folder) / TEACHER_NAME).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")


def read_teacher_record(source: str | os.PathLike, *, allow_external_teacher_files: bool = False) -> TeacherRecord:
    """The one reader of ``teacher.json``: the record of a model folder (or Hub repo); an empty record when
    the folder has none.

    A teacher identity that names a local checkpoint file (see
    :func:`~clip_gs.teachers.factory.teacher_file`) must name one inside the folder the record is in:
    a relative path is taken relative to that folder, and a path that leads out of it (absolute,
    ``..``, a symbolic link; any path in a Hub repo, whose files live in the Hub cache) is refused unless
    ``allow_external_teacher_files``.

    Raises:
        ConfigError: see :func:`read_json_object` and :meth:`TeacherRecord.from_dict`; an identity naming a
            file outside the folder.
        WeightsUnavailableError: a Hub repo whose ``teacher.json`` cannot be fetched (offline).
    """
    from clip_gs.teachers.factory import teacher_file

    path = model_file(str(source), TEACHER_NAME, required=False)
    if path is None:
        return TeacherRecord()
    record = TeacherRecord.from_dict(read_json_object(path, "teacher record"), str(path))
    if record.teacher:
        try:
            teacher_file(record.teacher, Path(path).parent, allow_external_files=allow_external_teacher_files)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    return record


__all__ = [
    "CARD_NAME", "CONFIG_NAME", "CURVES_NAME", "EVAL_DIR", "EVAL_REPORT", "MAX_RECORD_BYTES", "METRICS_NAME",
    "TEACHER_FIELDS", "TEACHER_NAME", "WEIGHTS_NAME", "TeacherRecord", "model_file", "read_json_object",
    "read_model_config", "read_teacher_record", "write_teacher_record",
]  # fmt: skip
