"""The files of a model folder (``save_pretrained``, the training export, a Hub repo): their names and
one reader each.

::

    config.json          the architecture (a CLIPGSConfig's fields)                            CONFIG_NAME
    model.safetensors    the weights                                                           WEIGHTS_NAME
    teacher.json         the identity of the teacher the model was trained against (optional) TEACHER_NAME
    metrics.json         the training export's record: validation / test metrics, data (opt.) METRICS_NAME
    README.md            the model card (:mod:`clip_gs.hub.card`)                              CARD_NAME
    curves.png           training curves (optional)                                           CURVES_NAME
    eval/report.json     the latest ``clip-gs eval`` report, with its figures (optional)      EVAL_REPORT

Every layer that reads or writes one of these names takes it from here. The JSON records have one reader
each, all through :func:`read_json_object` (at most :data:`MAX_RECORD_BYTES`, UTF-8, one JSON object
without repeated keys; anything else is a :class:`~clip_gs.errors.ConfigError` naming the file):
:func:`read_config_json` (``config.json``, a plain dict: :func:`clip_gs.model.folder.read_model_config`
makes the ``CLIPGSConfig``), :func:`read_teacher_json` (``teacher.json``, its fields checked) and
:func:`read_metrics_json` (``metrics.json``). The evaluation report has its own schema and reader,
:func:`clip_gs.evaluation.report.read_eval_report`; here are its name and :func:`report_location`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from clip_gs.errors import ConfigError, FileNotOnHubError, ModelCardError
from clip_gs.gaussians.files import open_regular_file
from clip_gs.hub.downloads import hub_download
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
"""The largest JSON record read (1 MiB; the ``config.json`` / ``teacher.json`` clip-gs writes are under 2 KB). A
larger file is refused unread rather than loaded whole into memory."""

TEACHER_FIELDS = ("teacher", "embed_dim", "dataset_package_version")
"""The fields of ``teacher.json``: ``teacher`` (a teacher identity string or null), ``embed_dim`` (a positive
integer or null), ``dataset_package_version`` (a string or null)."""


def model_file(source: str, filename: str, required: bool, local_files_only: bool = False) -> Path | None:
    """A file of a model folder or Hub repo ``source`` (None when absent and not required).

    Args:
        local_files_only: take a Hub repo's file from the local Hugging Face cache only (no request).

    Raises:
        WeightsUnavailableError: the Hub cannot be reached and the file is not cached (an optional
            file included: its absence cannot be told from its unavailability then).
        FileNotOnHubError: a required file the repo does not have.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / filename
        return path if path.is_file() or required else None
    try:
        return hub_download(source, filename, local_files_only=local_files_only)
    except FileNotOnHubError:  # absent; an unreachable Hub or a missing cache entry is an error
        if required:
            raise
        return None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in the file ``path`` (a model folder's ``config.json``, ``teacher.json``, ``metrics.json``).

    Raises:
        ConfigError: the file is missing, unreadable or not a regular file (a FIFO or device is never
            read), larger than :data:`MAX_RECORD_BYTES`, not UTF-8, not JSON (nesting too deep for the
            parser included), not an object, or repeats a key (JSON keeps the last silently); the message
            names the file and ``what`` it should be.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise ConfigError(
            f"{path}: missing; expected the {what} (a model folder holds {CONFIG_NAME} next to {WEIGHTS_NAME})"
        )
    with open_regular_file(path, ConfigError) as fh:  # a FIFO or device is refused, never read
        try:
            raw = fh.read(MAX_RECORD_BYTES + 1)
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


def read_config_json(path: str | os.PathLike) -> dict:
    """The one reader of ``config.json``: its JSON object (the fields of a ``CLIPGSConfig``, checked by
    :func:`clip_gs.model.folder.read_model_config`).

    Raises:
        ConfigError: see :func:`read_json_object`.
    """
    return read_json_object(path, "CLIPGSConfig (a JSON object of its fields)")


def check_teacher_record(data: Mapping, source: str = "teacher record") -> dict:
    """The fields of a teacher record, checked; ``{"teacher": identity or None, "embed_dim": E or None,
    "dataset_package_version": str or None}``.

    Raises:
        ConfigError: a field other than :data:`TEACHER_FIELDS`, or a value of another type (the message
            names ``source`` and the field).
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
    return {"teacher": teacher or None, "embed_dim": dim, "dataset_package_version": version}


def read_teacher_json(source: str | os.PathLike, local_files_only: bool = False) -> tuple[dict, Path] | None:
    """The one reader of ``teacher.json`` of a model folder or Hub repo: its checked fields
    (:func:`check_teacher_record`) and the file's path; None when there is none.

    Raises:
        ConfigError: see :func:`read_json_object` and :func:`check_teacher_record`.
        WeightsUnavailableError: a Hub repo whose ``teacher.json`` cannot be fetched (offline).
    """
    path = model_file(str(source), TEACHER_NAME, required=False, local_files_only=local_files_only)
    if path is None or not path.is_file():
        return None
    return check_teacher_record(read_json_object(path, "teacher record"), str(path)), path


def write_teacher_json(folder: str | os.PathLike, record: Mapping) -> None:
    """Write ``folder/teacher.json`` (``{"teacher": identity, "embed_dim": E, ...}``; sorted keys; absent
    optional fields left out).

    Raises:
        ConfigError: a record :func:`check_teacher_record` refuses (nothing is written).
    """
    path = Path(folder) / TEACHER_NAME
    checked = check_teacher_record(dict(record), f"teacher record for {path}")
    data = {"teacher": checked["teacher"]} | {k: v for k, v in checked.items() if k != "teacher" and v is not None}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_metrics_json(source: str | os.PathLike, local_files_only: bool = False) -> dict | None:
    """The one reader of ``metrics.json`` of a model folder or Hub repo, the training export's record
    (``metrics``: name -> number, ``checkpoint``, ``data``, ``history``, ``test``); None when there is none.

    Raises:
        ConfigError: see :func:`read_json_object`.
        ModelCardError: ``metrics`` does not map metric names to numbers.
        WeightsUnavailableError: a Hub repo whose ``metrics.json`` cannot be fetched (offline).
    """
    path = model_file(str(source), METRICS_NAME, required=False, local_files_only=local_files_only)
    if path is None or not path.is_file():
        return None
    record = read_json_object(path, "export record")
    metrics = record.get("metrics", {})
    if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
        raise ModelCardError(f"{path}: 'metrics' must map metric names to numbers")
    return record


def report_location(folder: str | os.PathLike, eval_report: str | os.PathLike | None = None) -> Path | None:
    """The evaluation report of a model folder: ``eval_report`` (which must exist), else
    ``folder/eval/report.json`` when present, else None.

    Raises:
        ModelCardError: an ``eval_report`` that is not a file.
    """
    if eval_report is not None:
        path = Path(eval_report)
        if not path.is_file():
            raise ModelCardError(f"{path}: no evaluation report there (the --eval-report / eval_report given)")
        return path
    default = Path(folder) / EVAL_REPORT
    return default if default.is_file() else None


def eval_images(folder: str | os.PathLike, report_path: str | os.PathLike | None) -> list[Path]:
    """The evaluation figures next to the report (``*.png`` in its folder, sorted), or in ``folder/eval``."""
    where = Path(report_path).parent if report_path is not None else Path(folder) / EVAL_DIR
    return sorted(p for p in where.glob("*.png") if p.is_file()) if where.is_dir() else []


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


__all__ = [
    "CARD_NAME", "CONFIG_NAME", "CURVES_NAME", "EVAL_DIR", "EVAL_REPORT", "MAX_RECORD_BYTES", "METRICS_NAME",
    "TEACHER_FIELDS", "TEACHER_NAME", "WEIGHTS_NAME", "check_teacher_record", "eval_images", "model_file",
    "read_config_json", "read_json_object", "read_metrics_json", "read_teacher_json", "report_location",
    "write_teacher_json",
]  # fmt: skip
