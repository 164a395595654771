"""Zero-shot protocols: which class names and prompt templates a zero-shot figure is measured with.

A zero-shot accuracy compares with a published one only under the same class list and prompts.
Two protocols are offered (``clip-gs eval --zeroshot-protocol``):

- ``clip-gs`` (default): the package's :data:`~clip_gs.teachers.TEMPLATES` (12 templates for 3D
  objects), names filled by the package's rule (underscores become spaces, "a" becomes "an" before
  a vowel sound), and the dataset's own label list (or a label set given by name or file).
- ``uni3d``: Uni3D's (and, for the class lists, OpenShape's) protocol: the templates of Uni3D's
  ``data/templates.json`` under a key (default :data:`UNI3D_TEMPLATES_KEY`, the 64 templates
  Uni3D uses for every set) and the class list of its ``data/labels.json`` under the benchmark's key
  (:data:`UNI3D_LABEL_KEYS`: ``modelnet40_openshape``, ``scanobjnn_openshape``,
  ``objaverse_lvis_openshape``), names put in verbatim (``template.format(name)``, as its code does).
  The files are read from the user's own copy (``--uni3d-data DIR``: the ``data/`` folder of
  https://github.com/baaivision/Uni3D); the package ships neither.

The classes of a protocol are the ones scored: a dataset's labels are matched to them by name,
ignoring case and treating ``_`` as a space (ModelNet40's ``night_stand`` is Uni3D's
``night stand``); a dataset label that matches none is an error, never dropped.

A label-embedding file (:mod:`clip_gs.teachers.label_embeddings`, ``clip-gs labels``) may stand in
for the teacher's text tower under either protocol, when it was made with the protocol's templates
and prompt rule (:func:`with_label_embeddings`): for ``clip-gs`` its names are the classes; for
``uni3d`` its names must be the protocol's class list (``--uni3d-data`` is still read, to check it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.teachers.label_embeddings import LabelEmbeddings, is_label_embeddings_file, read_label_embeddings

ZEROSHOT_PROTOCOLS = ("clip-gs", "uni3d")
"""The zero-shot protocols (module docstring)."""

UNI3D_TEMPLATES_KEY = "modelnet40_64"
"""The key of Uni3D's ``templates.json`` its zero-shot evaluation uses for every benchmark."""

UNI3D_DATA_HELP = "folder with Uni3D's templates.json and labels.json (its repository's data/)"
UNI3D_TEMPLATES_HELP = "templates.json key (default %(default)s)"
UNI3D_LABELS_HELP = ("the class list's key in Uni3D's labels.json (e.g. modelnet40_openshape, objaverse_lvis_openshape; "
                     "eval: default the benchmark's)")  # fmt: skip
"""Help of ``--uni3d-data`` / ``--uni3d-templates`` / ``--uni3d-labels`` (``clip-gs eval`` and ``clip-gs labels``)."""

UNI3D_LABEL_KEYS = {
    "modelnet40": "modelnet40_openshape",
    "modelnet-splats": "modelnet40_openshape",
    "scanobjectnn": "scanobjnn_openshape",
    "objaverse-lvis": "objaverse_lvis_openshape",
    "objaverse-gs": "objaverse_lvis_openshape",
}
"""Benchmark name -> the key of its class list in Uni3D's ``labels.json``."""

CLIP_GS_LABEL_SETS = {"modelnet40": "modelnet40", "modelnet-splats": "modelnet40", "objaverse-lvis": "objaverse-lvis",
                      "objaverse-gs": "objaverse-lvis"}  # fmt: skip
"""Benchmark name -> the package's shipped label set (:data:`~clip_gs.teachers.prompts.LABEL_SETS`) of the ``clip-gs`` protocol."""


@dataclass(frozen=True)
class ZeroShotProtocol:
    """The class names and prompts of a zero-shot measurement.

    Attributes:
        name: ``"clip-gs"`` or ``"uni3d"``.
        templates: prompt templates (one ``{}`` each).
        prompt_rule: how names fill them (:data:`~clip_gs.teachers.prompts.PROMPT_RULES`).
        class_names: the scored classes, or None for the dataset's own label list.
        source: where the templates and names came from (for reports).
        label_embeddings: the classes' embeddings from a label-embedding file (made with these
            templates and rule), used instead of encoding them; None: the teacher encodes them.
    """

    name: str
    templates: tuple[str, ...]
    prompt_rule: str
    class_names: tuple[str, ...] | None
    source: str
    label_embeddings: LabelEmbeddings | None = None


def _read_key(path: Path, key: str, what: str) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"the uni3d protocol reads Uni3D's {path.name}: {path} does not exist (pass --uni3d-data, the "
                          "data/ folder of a clone of github.com/baaivision/Uni3D)")  # fmt: skip
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(table, dict) or key not in table:
        keys = sorted(table) if isinstance(table, dict) else []
        raise DatasetError(f"{path}: no {what} under {key!r} (keys: {keys})")
    values = table[key]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise DatasetError(f"{path}: {key!r} must be a non-empty list of strings")
    return values


def uni3d_templates(uni3d_data: str | os.PathLike, key: str = UNI3D_TEMPLATES_KEY) -> tuple[str, ...]:
    """The templates under ``key`` of Uni3D's ``templates.json`` in ``uni3d_data`` (one ``{}`` each).

    Raises:
        ConfigError: no such file. DatasetError: unreadable JSON, no such key, templates without ``{}``.
    """
    path = Path(uni3d_data) / "templates.json"
    templates = _read_key(path, key, "templates")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise DatasetError(f"{path}: templates without '{{}}' under {key!r}: {bad[:3]}")
    return tuple(templates)


def uni3d_class_names(uni3d_data: str | os.PathLike, key: str) -> tuple[str, ...]:
    """The class list under ``key`` of Uni3D's ``labels.json`` in ``uni3d_data``.

    Raises:
        ConfigError: no such file. DatasetError: unreadable JSON, no such key.
    """
    return tuple(_read_key(Path(uni3d_data) / "labels.json", key, "class list"))


def zero_shot_protocol(
    name: str = "clip-gs",
    benchmark: str | None = None,
    uni3d_data: str | os.PathLike | None = None,
    templates_key: str = UNI3D_TEMPLATES_KEY,
    labels_key: str | None = None,
    label_set: str | os.PathLike | Sequence[str] | None = None,
) -> ZeroShotProtocol:
    """The protocol ``name`` for a benchmark (module docstring).

    Args:
        name: ``"clip-gs"`` or ``"uni3d"``.
        benchmark: the benchmark's name (picks the class list; None: the dataset's own labels for
            ``clip-gs``, and ``labels_key`` must be given for ``uni3d``).
        uni3d_data: the folder holding Uni3D's ``templates.json`` and ``labels.json`` (``uni3d``).
        templates_key / labels_key: keys into those files (``labels_key`` None: the benchmark's,
            :data:`UNI3D_LABEL_KEYS`).
        label_set: ``clip-gs``: the classes (a registered name, a label-list file or names)
            instead of the benchmark's or the dataset's. Either protocol: a label-embedding file
            (``.safetensors``), used instead of the text tower (:func:`with_label_embeddings`).

    Raises:
        ConfigError: an unknown protocol, a missing file or folder, no class list for ``uni3d``,
            a label list with ``uni3d``, a label-embedding file made with other prompts.
        DatasetError: an unreadable file or a missing key; an invalid label-embedding file.
    """
    from clip_gs.teachers import TEMPLATES, load_label_set

    if name not in ZEROSHOT_PROTOCOLS:
        raise ConfigError(f"zero-shot protocol must be one of {ZEROSHOT_PROTOCOLS}, got {name!r}")
    if is_label_embeddings_file(label_set):
        table = read_label_embeddings(label_set)
        own = zero_shot_protocol(name, benchmark, uni3d_data, templates_key, labels_key,
                                 table.names if name == "clip-gs" else None)  # fmt: skip
        return with_label_embeddings(own, table)
    if name == "clip-gs":
        chosen = label_set if label_set is not None else CLIP_GS_LABEL_SETS.get(benchmark or "")
        names = tuple(load_label_set(chosen)) if chosen is not None else None
        where = f"clip-gs templates ({len(TEMPLATES)}), classes: " + (
            str(chosen) if isinstance(chosen, (str, os.PathLike)) else "the dataset's" if chosen is None else "given")
        return ZeroShotProtocol(name, tuple(TEMPLATES), "clip-gs", names, where)
    if label_set is not None:
        raise ConfigError("the uni3d protocol takes its classes from Uni3D's labels.json (--uni3d-labels), not a label "
                          "list (a label-embedding file made with its templates is accepted)")  # fmt: skip
    if uni3d_data is None:
        raise ConfigError("the uni3d protocol needs --uni3d-data DIR: the data/ folder of github.com/baaivision/Uni3D "
                          "(templates.json, labels.json)")  # fmt: skip
    folder = Path(uni3d_data)
    key = labels_key or UNI3D_LABEL_KEYS.get(benchmark or "")
    if key is None:
        raise ConfigError(f"the uni3d protocol needs a labels.json key for benchmark {benchmark!r} (--uni3d-labels; "
                          f"known: {UNI3D_LABEL_KEYS})")  # fmt: skip
    templates = uni3d_templates(folder, templates_key)
    names = uni3d_class_names(folder, key)
    source = f"uni3d: {folder / 'templates.json'} [{templates_key}] ({len(templates)}), {folder / 'labels.json'} [{key}]"
    return ZeroShotProtocol(name, tuple(templates), "verbatim", tuple(names), source)


def with_label_embeddings(protocol: ZeroShotProtocol, table: LabelEmbeddings) -> ZeroShotProtocol:
    """``protocol`` with its classes' embeddings taken from ``table`` (a label-embedding file)
    instead of a text tower.

    The file must have been made with the protocol's templates and prompt rule. A protocol with its
    own class list (``uni3d``, or ``clip-gs`` with a benchmark's set) needs the file's names to be
    that list (rows put in its order); a ``clip-gs`` protocol taking the dataset's labels takes the
    file's names as the classes.

    Raises:
        ConfigError: other templates or rule, other class names (the message names the file and the protocol).
    """
    import dataclasses

    table.check_prompts(protocol.templates, protocol.prompt_rule, f"the {protocol.name} zero-shot protocol")
    names = protocol.class_names if protocol.class_names is not None else table.names
    if set(names) != set(table.names):
        extra, missing = sorted(set(table.names) - set(names)), sorted(set(names) - set(table.names))
        raise ConfigError(f"{table.where}: its {len(table.names)} classes are not the {protocol.name} protocol's "
                          f"{len(names)} (missing {missing[:5]}, extra {extra[:5]})")  # fmt: skip
    table = table.select(names)
    source = f"{table.path or table.label_set} (label embeddings by {table.teacher}; {protocol.source})"
    return dataclasses.replace(protocol, class_names=tuple(names), source=source, label_embeddings=table)


def protocol_weights(protocol: ZeroShotProtocol, teacher, class_names: Sequence[str] | None = None):
    """``[C, E]`` unit class embeddings of the protocol's classes (or ``class_names``, when the
    protocol takes the dataset's own), encoded by ``teacher`` with the protocol's templates and rule,
    or, for a protocol with :attr:`~ZeroShotProtocol.label_embeddings`, those rows.

    Args:
        teacher: a :class:`~clip_gs.teachers.Teacher`; with label embeddings, the teacher they must
            come from (a Teacher, its identity or the identity's ``str()``): nothing is encoded.

    Raises:
        ConfigError: no class names at all (a ``clip-gs`` protocol without a list and none given).
        TeacherMismatchError: label embeddings made by another teacher (the message names both).
    """
    from clip_gs.teachers import zero_shot_weights

    names = list(protocol.class_names if protocol.class_names is not None else class_names or [])
    if not names:
        raise ConfigError(f"zero-shot protocol {protocol.name!r} has no class names here: give a label set")
    if protocol.label_embeddings is not None:
        if teacher is None:
            raise ConfigError(f"{protocol.label_embeddings.where}: no model teacher to check it against")
        protocol.label_embeddings.check_teacher(teacher, "the model's teacher")
        return protocol.label_embeddings.select(names).weights.float()
    return zero_shot_weights(teacher, names, protocol.templates, protocol.prompt_rule).float()


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def match_labels(labels: Sequence[str], class_names: Sequence[str], where: str = "dataset") -> dict[str, str]:
    """Each distinct dataset label -> the protocol class it is (case and ``_`` / space ignored).

    Raises:
        DatasetError: labels that match no class (the first few named, with the count), or class
            names that collide under the rule.
    """
    index: dict[str, str] = {}
    for c in class_names:
        if _key(c) in index:
            raise DatasetError(f"protocol classes {index[_key(c)]!r} and {c!r} are the same name under the matching rule")
        index[_key(c)] = c
    mapping, missing = {}, []
    for label in dict.fromkeys(labels):
        if _key(label) in index:
            mapping[label] = index[_key(label)]
        else:
            missing.append(label)
    if missing:
        raise DatasetError(f"{where}: {len(missing)} label(s) are not among the protocol's {len(index)} classes: "
                           f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")  # fmt: skip
    return mapping


__all__ = [
    "CLIP_GS_LABEL_SETS",
    "UNI3D_DATA_HELP",
    "UNI3D_LABELS_HELP",
    "UNI3D_LABEL_KEYS",
    "UNI3D_TEMPLATES_HELP",
    "UNI3D_TEMPLATES_KEY",
    "ZEROSHOT_PROTOCOLS",
    "ZeroShotProtocol",
    "match_labels",
    "protocol_weights",
    "uni3d_class_names",
    "uni3d_templates",
    "with_label_embeddings",
    "zero_shot_protocol",
]
