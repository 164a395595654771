"""``load_teacher(spec)``: one string names any teacher, in code, configs and on the command line.

Spec strings (the same for ``load_teacher``, config files and ``--teacher SPEC``):

==================================  =====================================================================
``synthetic-clip``                  the offline teacher shipped with the package (:data:`OFFLINE_TEACHER`)
``NAME/TAG``                        open_clip architecture + pretrained tag, e.g.
                                    ``EVA02-E-14-plus/laion2b_s9b_b144k`` (the paper's, the default of
                                    ``CLIPGSConfig``) or ``ViT-B-32/laion2b_s34b_b79k``
``hf-hub:ORG/NAME``                 an open_clip model repo on the Hugging Face Hub
``NAME@/path/to/file``              a local checkpoint file for architecture ``NAME`` (``.safetensors``,
                                    or ``.pt`` / ``.bin`` read with ``torch.load(weights_only=True)``),
                                    e.g. ``EVA02-E-14-plus@/data/open_clip_pytorch_model.bin`` or
                                    ``synthetic-clip@/tmp/rebuilt.safetensors``
==================================  =====================================================================

``NAME/TAG`` also accepts a file path as ``TAG`` (open_clip's own ``pretrained=`` convention), so
``ViT-B-32//abs/file.pt`` works, but ``NAME@FILE`` is the documented form for files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clip_gs.errors import ConfigError, WeightsUnavailableError
from clip_gs.teachers.base import Teacher
from clip_gs.teachers.synthetic import OFFLINE_TEACHER

DEFAULT_TEACHER = "EVA02-E-14-plus/laion2b_s9b_b144k"
"""The paper's teacher (needs the Hub or a local file)."""


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed spec string.

    Attributes:
        kind: ``"offline"``, ``"open_clip"`` (name + tag), ``"hf-hub"`` or ``"file"``.
        model: architecture name or hub id.
        pretrained: tag or file path (``""`` for offline / hub).
    """

    kind: str
    model: str
    pretrained: str = ""


def parse_teacher_spec(spec: str) -> TeacherSpec:
    """Parse a spec string without loading anything (see the module docstring for the forms).

    Raises:
        ConfigError: empty or malformed spec (the message lists the accepted forms).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"teacher spec must be a non-empty string, got {spec!r}; {_FORMS}")
    spec = spec.strip()
    if spec == OFFLINE_TEACHER:
        return TeacherSpec("offline", OFFLINE_TEACHER)
    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:") :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ConfigError(f"teacher spec {spec!r}: hf-hub ids look like hf-hub:ORG/NAME; {_FORMS}")
        return TeacherSpec("hf-hub", spec)
    if "@" in spec:
        name, path = spec.split("@", 1)
        if not name or not path:
            raise ConfigError(f"teacher spec {spec!r}: expected NAME@/path/to/file; {_FORMS}")
        return TeacherSpec("file", name, path)
    if "/" in spec:
        name, tag = spec.split("/", 1)
        if not name or not tag:
            raise ConfigError(f"teacher spec {spec!r}: expected NAME/TAG; {_FORMS}")
        return TeacherSpec("open_clip", name, tag)
    raise ConfigError(f"teacher spec {spec!r} names no weights: {_bare_name_help(spec)}; {_FORMS}")


_FORMS = (
    f"accepted forms: '{OFFLINE_TEACHER}' (offline), 'NAME/TAG' (open_clip, e.g. '{DEFAULT_TEACHER}'), "
    "'hf-hub:ORG/NAME', 'NAME@/path/to/checkpoint'"
)


def _bare_name_help(name: str) -> str:
    try:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
    except Exception:  # noqa: BLE001 - only used to improve an error message
        tags = []
    return f"add a tag ({', '.join(f'{name}/{t}' for t in tags[:6])})" if tags else "add a tag or a file"


def load_teacher(spec: str | Teacher, **kwargs) -> Teacher:
    """Build the teacher a spec string names (a :class:`Teacher` passes through unchanged).

    Args:
        spec: see the module docstring.
        **kwargs: ``batch_size``, ``device``, ``precision`` (and ``cache_dir`` for Hub teachers).

    Raises:
        ConfigError: malformed spec, unknown architecture or tag.
        WeightsUnavailableError: weights not available offline (the message says how to pass a file).
        CheckpointError: a local file that is unreadable or does not fit the architecture.
    """
    if isinstance(spec, Teacher):
        return spec
    parsed = parse_teacher_spec(spec)
    from clip_gs.teachers.open_clip_teacher import OpenCLIPTeacher
    from clip_gs.teachers.synthetic import ARCHITECTURE, SyntheticCLIPTeacher, register_architecture

    if parsed.kind == "offline":
        return SyntheticCLIPTeacher(**kwargs)
    if parsed.kind == "hf-hub":
        return OpenCLIPTeacher(parsed.model, None, **kwargs)
    if parsed.model == ARCHITECTURE:
        if parsed.kind == "file":
            return SyntheticCLIPTeacher(parsed.pretrained, **kwargs)
        register_architecture()
    if parsed.kind == "file" and not Path(parsed.pretrained).is_file():
        raise ConfigError(f"teacher spec {spec!r}: checkpoint file {parsed.pretrained} does not exist")
    return OpenCLIPTeacher(parsed.model, parsed.pretrained, **kwargs)


def teacher_spec_for(identity: str, folder: str | os.PathLike | None = None, allow_external_files: bool = False) -> str:
    """The :func:`~clip_gs.teachers.load_teacher` spec of a recorded teacher identity.

    ``open_clip:NAME/TAG`` -> ``NAME/TAG``; ``hf-hub:ORG/NAME`` -> ``hf-hub:ORG/NAME``;
    ``file:synthetic-clip@sha256:...`` -> ``synthetic-clip`` (the shipped offline teacher; the
    checksum is compared once it is loaded).

    An identity is read from a file (``teacher.json``, an index, a dataset manifest), so one that
    names a local checkpoint file (:func:`teacher_file`) is confined to ``folder``: the spec names the
    file inside ``folder`` it resolves to, and a file elsewhere (or any file when no ``folder`` is given)
    is refused unless ``allow_external_files``.

    Raises:
        WeightsUnavailableError: a teacher loaded from some other local file (only that file
            will do; the message says how to pass it with ``--teacher NAME@FILE``).
        ConfigError: an identity no teacher can be loaded from (random or test teachers); one naming a
            file outside ``folder``.
    """
    spec = _recorded_spec(identity)
    path = _confined_file(identity, spec, folder, allow_external_files)
    return spec if path is None else f"{parse_teacher_spec(spec).model}@{path}"


def teacher_file(
    identity: str, folder: str | os.PathLike | None = None, allow_external_files: bool = False
) -> Path | None:
    """The local checkpoint file a recorded teacher identity names, resolved; None when it names none.

    An identity names a file when its spec (:func:`teacher_spec_for`) is ``NAME@PATH``, or
    ``NAME/TAG`` whose ``TAG`` is a path (it holds a path separator or starts with ``.`` or ``~``) or
    names an existing file relative to the working directory or to ``folder`` (the open_clip teacher
    takes an existing file for a tag). A relative path is taken relative to ``folder``; the resolved
    path (symbolic links followed) must lie inside ``folder``.

    Raises:
        ConfigError: the file lies outside ``folder`` (or no ``folder`` is given) and not
            ``allow_external_files``; the message names the identity and the path.
    """
    try:
        spec = _recorded_spec(identity)
        parse_teacher_spec(spec)
    except (ConfigError, WeightsUnavailableError):
        return None  # an identity nothing is loaded from names no file
    return _confined_file(identity, spec, folder, allow_external_files)


def _recorded_spec(identity: str) -> str:
    if not isinstance(identity, str):
        raise ConfigError(f"a teacher identity must be a string, got {type(identity).__name__}")
    kind, _, rest = identity.partition(":")
    if kind == "open_clip" and "/" in rest:
        return rest
    if kind == "hf-hub" and rest:
        return f"hf-hub:{rest.split('@', 1)[0]}"
    if kind == "file" and rest:
        name = rest.split("@", 1)[0]
        if name == OFFLINE_TEACHER:
            return OFFLINE_TEACHER
        checksum = rest.partition("@")[2] or "the recorded one"
        raise WeightsUnavailableError(
            f"teacher {identity} was loaded from a local checkpoint file; pass that file with "
            f"--teacher {name}@/path/to/checkpoint (its checksum must be {checksum})"
        )
    raise ConfigError(
        f"teacher {identity!r:.200} cannot be loaded (not an open_clip, hf-hub or file teacher); pass --teacher SPEC"
    )


def _confined_file(identity: str, spec: str, folder: str | os.PathLike | None, allow_external: bool) -> Path | None:
    parsed = parse_teacher_spec(spec)
    if not (parsed.kind == "file" or (parsed.kind == "open_clip" and _is_file_name(parsed.pretrained, folder))):
        return None
    named = parsed.pretrained
    try:
        path = Path(named)
        base = Path(folder).resolve() if folder is not None else None
        resolved = (base / path if base is not None else path).resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symbolic-link loop
        raise ConfigError(f"teacher {identity!r:.200} names the file {named!r:.200}, which cannot be resolved: {exc}")
    if base is not None and resolved.is_relative_to(base):
        return resolved
    if allow_external:
        return resolved
    where = f"outside the model folder {base}" if base is not None else "a local file (no folder to confine it to)"
    raise ConfigError(
        f"teacher {identity!r:.200} names the checkpoint file {named!r:.200}, {where}; refused: a recorded identity "
        "may only name a file inside the folder it came with (allow_external_teacher_files=True reads it anyway)"
    )


def _is_file_name(tag: str, folder: str | os.PathLike | None) -> bool:
    """Whether an open_clip ``TAG`` is a file path rather than a pretrained tag (see :func:`teacher_file`)."""
    if any(sep in tag for sep in ("/", "\\")) or tag.startswith((".", "~")):
        return True
    try:
        return Path(tag).is_file() or (folder is not None and (Path(folder) / tag).is_file())
    except (OSError, ValueError):
        return True


__all__ = [
    "DEFAULT_TEACHER", "TeacherSpec", "load_teacher", "parse_teacher_spec", "teacher_file",
    "teacher_spec_for",
]  # fmt: skip
