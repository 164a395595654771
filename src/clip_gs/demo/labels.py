"""The demo's configured label set (``--labels`` / ``--label-set``) and its label embeddings.

The configured model's default labels are :attr:`DemoSettings.labels` (names) or
:attr:`DemoSettings.label_set` (a registered set, a label-list file or a label-embedding file). A
label-embedding file is used as it is (after checking that the model's teacher made it). Names are
encoded once by the model's teacher with :data:`~clip_gs.teachers.TEMPLATES` and the result is
written as a label-embedding file under ``<cache>/labels/`` (:func:`cached_label_file`: the name
holds a digest of the teacher, the names and the templates); later starts read it, so classifying
over those names needs no text tower.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

from clip_gs.demo.settings import DemoSettings
from clip_gs.errors import ClipGSError
from clip_gs.teachers.label_embeddings import (
    FORMAT_VERSION,
    LabelEmbeddings,
    is_label_embeddings_file,
    read_label_embeddings,
    write_label_embeddings,
)

logger = logging.getLogger("clip_gs")

LABELS_DIR = "labels"
"""The cache sub-folder of computed label-embedding files."""


def configured_labels(settings: DemoSettings) -> tuple[list[str], str] | None:
    """``(names, where they come from)`` of the settings' label set, or None when none is set.

    Raises:
        ConfigError: an invalid label set or list. DatasetError: an invalid label-embedding file.
    """
    from clip_gs.teachers.label_options import parse_labels
    from clip_gs.teachers.prompts import load_label_set

    if settings.labels:
        return parse_labels(settings.labels), "the labels this demo was started with"
    if not settings.label_set:
        return None
    if is_label_embeddings_file(settings.label_set):
        table = read_label_embeddings(settings.label_set)
        return list(table.names), f"the label-embedding file {Path(settings.label_set).name} (by {table.teacher})"
    return load_label_set(settings.label_set), f"the label set {settings.label_set}"


def cached_label_file(settings: DemoSettings, teacher: str, names: list[str]) -> Path:
    """Where the label embeddings of ``names`` by ``teacher`` (with :data:`~clip_gs.teachers.TEMPLATES`)
    are cached: ``<cache>/labels/<label set>-<digest>.safetensors``."""
    from clip_gs.teachers.prompts import TEMPLATES

    recipe = json.dumps([FORMAT_VERSION, teacher, names, list(TEMPLATES), "clip-gs"])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(settings.label_set).stem if settings.label_set else "labels")[:60]
    return settings.cache / LABELS_DIR / f"{stem}-{digest}.safetensors"


def label_file(settings: DemoSettings, usage) -> Path | None:
    """The label-embedding file that serves the settings' label set for ``usage`` (the given one, or
    the cache's, which may not exist yet); None without a label set, or when it cannot be read (the
    error shows when the labels are used)."""
    if is_label_embeddings_file(settings.label_set):
        return Path(settings.label_set)
    try:
        configured = configured_labels(settings)
        teacher = usage.teacher_record
    except ClipGSError:
        return None
    if configured is None or not teacher:
        return None
    return cached_label_file(settings, teacher, configured[0])


def configured_label_embeddings(settings: DemoSettings, usage) -> LabelEmbeddings | None:
    """The label embeddings of the settings' label set for the model ``usage``: the given
    label-embedding file, or the cached file (written now, by the model's teacher, when absent or
    unusable); None without a label set.

    Raises:
        TeacherMismatchError: a label-embedding file made by another teacher (names both).
        ConfigError / DatasetError: an invalid label set or label-embedding file.
        WeightsUnavailableError: the teacher is needed (first start) and cannot be loaded.
    """
    from clip_gs.teachers.prompts import TEMPLATES
    from clip_gs.usage.classify import model_label_embeddings

    configured = configured_labels(settings)
    if configured is None:
        return None
    if is_label_embeddings_file(settings.label_set):
        return model_label_embeddings(usage, settings.label_set)
    names = configured[0]
    path = label_file(settings, usage)
    if path is not None and path.is_file():
        try:
            table = model_label_embeddings(usage, read_label_embeddings(path))
            if list(table.names) == names and table.templates == tuple(TEMPLATES) and table.prompt_rule == "clip-gs":
                return table
            logger.warning("%s: cached label embeddings of other names or templates; encoding them again", path)
        except ClipGSError as exc:
            logger.warning("%s: unusable cached label embeddings (%s); encoding them again", path, exc)
    source = settings.label_set or names
    logger.info("encoding %d labels with teacher %s (once; cached in %s)", len(names), usage.teacher_identity, path)
    table = model_label_embeddings(usage, source, progress=None)
    if path is None:  # a model without a recorded teacher: nothing to key a cache on
        return table
    write_label_embeddings(path, table.names, table.weights, table.teacher, table.templates, table.prompt_rule,
                           table.label_set)  # fmt: skip
    return dataclasses.replace(table, path=str(path))


__all__ = ["LABELS_DIR", "cached_label_file", "configured_label_embeddings", "configured_labels", "label_file"]
