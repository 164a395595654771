"""The files of a model folder (``save_pretrained``, the training export, a Hub repo), and reading them.

::

    config.json          the architecture (:class:`~clip_gs.model.config.CLIPGSConfig`)        CONFIG_NAME
    model.safetensors    the weights                                                           WEIGHTS_NAME
    teacher.json         the identity of the teacher the model was trained against (optional) TEACHER_NAME
    metrics.json         the training export's record: validation / test metrics, data (opt.) METRICS_NAME
    README.md            the model card (clip_gs.model.card)                                  CARD_NAME
    curves.png           training curves (optional)                                           CURVES_NAME
    eval/report.json     the latest ``clip-gs eval`` report, with its figures (optional)      EVAL_REPORT

Every layer that reads or writes one of these names takes it from here (one name per file).
"""

from __future__ import annotations

import json
from pathlib import Path

from clip_gs.errors import ConfigError, FileNotOnHubError

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


def write_teacher_record(folder: str | Path, record: dict) -> None:
    """Write ``folder/teacher.json`` (``{"teacher": identity, "embed_dim": E, ...}``; sorted keys)."""
    (Path(folder) / TEACHER_NAME).write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n")


def read_teacher_record(source: str) -> str:
    """The teacher identity in a model folder's (or Hub repo's) ``teacher.json``; ``""`` when absent.

    Raises:
        ConfigError: a ``teacher.json`` that is not a JSON object with a string ``teacher``.
        WeightsUnavailableError: a Hub repo whose ``teacher.json`` cannot be fetched (offline).
    """
    path = model_file(source, TEACHER_NAME, required=False)
    if path is None:
        return ""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable teacher record: {exc}") from exc
    teacher = record.get("teacher") if isinstance(record, dict) else None
    if teacher is not None and not isinstance(teacher, str):
        raise ConfigError(f"{path}: 'teacher' must be a teacher identity string, got {teacher!r}")
    return teacher or ""


__all__ = ["CARD_NAME", "CONFIG_NAME", "CURVES_NAME", "EVAL_DIR", "EVAL_REPORT", "METRICS_NAME", "TEACHER_NAME",
           "WEIGHTS_NAME", "model_file", "read_teacher_record", "write_teacher_record"]
