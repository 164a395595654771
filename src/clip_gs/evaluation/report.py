"""The evaluation report's schema (what ``clip-gs eval`` writes as ``report.json``), its checker and its reader.

The shape (fractions in [0, 1], any task may be missing)::

    {"model": str, "data": str, "split": str, "teacher": str, "num_objects": int,
     "tasks": {"zeroshot": {"top1", "top3", "top5": float, "per_class": {name: float},
                            "label_set": str, "num_classes": int, "num_samples"?: int, "protocol"?: str},
               "fewshot": {"<ways>-way-<shots>-shot": {"mean": float, "std": float, "episodes": int,
                                                       "protocol"?, "queries_per_class"?, "support_split"?, "note"?,
                                                       "draws_sha256"?, "episodes_file"?, "episodes_file_use"?}},
               "retrieval": {"text_to_3d" | "3d_to_text" | "image_to_3d" | "3d_to_image":
                             {"r1", "r5", "r10": float,
                              "definition"?: {"queries", "gallery", "hit": str}}}},
     "created": iso8601, "clip_gs_version": str,
     "failures"?: {task: message}, "benchmark"?: str}

:func:`read_eval_report` is the one reader of a report file; a report read through it is what the model
card (:func:`clip_gs.hub.card.folder_card`) takes.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from clip_gs.errors import ModelCardError
from clip_gs.gaussians.files import open_regular_file

REPORT_FIELDS = {"model": str, "data": str, "split": str, "teacher": str, "num_objects": int, "tasks": dict,
                 "created": str, "clip_gs_version": str}  # fmt: skip
REPORT_OPTIONAL = {"failures": dict, "benchmark": str}
ZEROSHOT_FIELDS = {"top1": float, "top3": float, "top5": float, "per_class": dict, "label_set": str, "num_classes": int}
ZEROSHOT_OPTIONAL = {"num_samples": int, "protocol": str}
FEWSHOT_FIELDS = {"mean": float, "std": float, "episodes": int}
FEWSHOT_OPTIONAL = {"protocol": str, "queries_per_class": int, "support_split": str, "note": str, "draws_sha256": str,
                    "episodes_file": str, "episodes_file_use": str}  # fmt: skip
RETRIEVAL_DIRECTIONS = ("text_to_3d", "3d_to_text", "image_to_3d", "3d_to_image")
RECALL_FIELDS = {"r1": float, "r5": float, "r10": float}
RECALL_OPTIONAL = {"definition": dict}
DEFINITION_FIELDS = {"queries": str, "gallery": str, "hit": str}
FEWSHOT_KEY = re.compile(r"^(\d+)-way-(\d+)-shot$")
FRACTIONS = frozenset({"top1", "top3", "top5", "mean", "std", "r1", "r5", "r10"})
"""The fields that are fractions in [0, 1]."""


def read_eval_report(path: str | os.PathLike) -> dict:
    """Read and check an evaluation report (shape in the module docstring).

    Raises:
        ModelCardError: missing file, not a regular file (a FIFO or device is never read), invalid JSON, a missing / unknown / mistyped field, a fraction
            outside [0, 1] (the message names the file and the field).
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise ModelCardError(f"{path}: no evaluation report there (run `clip-gs eval` to write one)")
    with open_regular_file(path, ModelCardError) as fh:  # a FIFO or device is refused, never read
        try:
            report = json.loads(fh.read().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelCardError(f"{path}: unreadable evaluation report: {exc}") from exc
    check_eval_report(report, str(path))
    return report


def check_eval_report(report: object, source: str) -> None:
    """Raise :class:`ModelCardError` naming ``source`` and the field unless ``report`` has the report's shape."""
    _check_fields(report, REPORT_FIELDS, source, "", REPORT_OPTIONAL)
    for task, message in report.get("failures", {}).items():
        _check_value(message, str, source, f"failures.{task}")
    try:
        datetime.fromisoformat(report["created"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise ModelCardError(f"{source}: 'created' is not an ISO 8601 time: {report['created']!r}") from exc
    tasks = report["tasks"]
    unknown = sorted(set(tasks) - {"zeroshot", "fewshot", "retrieval"})
    if unknown:
        raise ModelCardError(f"{source}: unknown task(s) {unknown} under 'tasks'; known: zeroshot, fewshot, retrieval")
    if "zeroshot" in tasks:
        zeroshot = tasks["zeroshot"]
        _check_fields(zeroshot, ZEROSHOT_FIELDS, source, "tasks.zeroshot.", ZEROSHOT_OPTIONAL)
        for name, value in zeroshot["per_class"].items():
            _check_value(value, float, source, f"tasks.zeroshot.per_class.{name}", fraction=True)
    if "fewshot" in tasks:
        _check_type(tasks["fewshot"], dict, source, "tasks.fewshot")
        for setting, entry in tasks["fewshot"].items():
            if not FEWSHOT_KEY.match(setting):
                raise ModelCardError(f"{source}: tasks.fewshot key {setting!r} is not '<ways>-way-<shots>-shot'")
            _check_fields(entry, FEWSHOT_FIELDS, source, f"tasks.fewshot.{setting}.", FEWSHOT_OPTIONAL)
    if "retrieval" in tasks:
        _check_type(tasks["retrieval"], dict, source, "tasks.retrieval")
        for direction, entry in tasks["retrieval"].items():
            if direction not in RETRIEVAL_DIRECTIONS:
                raise ModelCardError(
                    f"{source}: unknown retrieval direction {direction!r}; known: {list(RETRIEVAL_DIRECTIONS)}"
                )
            _check_fields(entry, RECALL_FIELDS, source, f"tasks.retrieval.{direction}.", RECALL_OPTIONAL)
            if "definition" in entry:
                _check_fields(entry["definition"], DEFINITION_FIELDS, source, f"tasks.retrieval.{direction}.definition.")


def _check_fields(
    data: object, fields: Mapping[str, type], source: str, prefix: str, optional: Mapping[str, type] | None = None
) -> None:
    _check_type(data, dict, source, prefix.rstrip(".") or "the report")
    missing = [f"{prefix}{k}" for k in fields if k not in data]
    unknown = [f"{prefix}{k}" for k in data if k not in fields and k not in (optional or {})]
    if missing or unknown:
        detail = "; ".join(
            p for p in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if p
        )
        raise ModelCardError(f"{source}: not an evaluation report of clip-gs: {detail}")
    for key, kind in {**fields, **(optional or {})}.items():
        if key in data:
            _check_value(data[key], kind, source, prefix + key, fraction=key in FRACTIONS)


def _check_value(value: object, kind: type, source: str, where: str, fraction: bool = False) -> None:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ModelCardError(f"{source}: {where} must be a finite number, got {value!r}")
        if fraction and not 0.0 <= value <= 1.0:
            raise ModelCardError(f"{source}: {where} must be a fraction in [0, 1], got {value!r}")
        return
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ModelCardError(f"{source}: {where} must be a non-negative integer, got {value!r}")
    _check_type(value, kind, source, where)


def _check_type(value: object, kind: type, source: str, where: str) -> None:
    if not isinstance(value, kind):
        raise ModelCardError(f"{source}: {where} must be a {kind.__name__}, got {type(value).__name__} {value!r}")


def build_report(
    model: str, data: str, split: str, teacher: str, num_objects: int, tasks: dict, failures: dict | None = None
) -> dict:
    """An evaluation report of the shape in the module docstring (JSON-ready), stamped with the UTC time and
    this clip-gs version; ``"failures"`` only when a protocol could not run. The runner adds ``"benchmark"``
    for a benchmark source.

    Args:
        model, data, split, teacher, num_objects: what was evaluated, on what, against which teacher.
        tasks: ``{"zeroshot" | "fewshot" | "retrieval": entry}`` of the tasks that ran.
        failures: ``{task: message}`` of the protocols that could not run.
    """
    import clip_gs

    report = {
        "model": model, "data": data, "split": split, "teacher": teacher, "num_objects": int(num_objects),
        "tasks": tasks, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "clip_gs_version": clip_gs.__version__,
    }  # fmt: skip
    if failures:
        report["failures"] = dict(failures)
    return report


__all__ = [
    "DEFINITION_FIELDS", "FEWSHOT_FIELDS", "FEWSHOT_KEY", "FEWSHOT_OPTIONAL", "FRACTIONS", "RECALL_FIELDS",
    "RECALL_OPTIONAL", "REPORT_FIELDS", "REPORT_OPTIONAL", "RETRIEVAL_DIRECTIONS", "ZEROSHOT_FIELDS",
    "ZEROSHOT_OPTIONAL", "build_report", "check_eval_report", "read_eval_report",
]  # fmt: skip
