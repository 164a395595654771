"""A CLIP-GS model ready for use: the model, its identity and its CLIP teacher.

:func:`load_model` loads any model reference :func:`~clip_gs.model.create_model` takes (a named
pretrained model, a folder written by ``export_pretrained`` / ``save_pretrained``, a Hub repo id, a
Uni3D checkpoint) and reads ``teacher.json``, the identity of the teacher whose embedding space the
model was trained into. That teacher is loaded only when text or images must be embedded
(:meth:`LoadedModel.teacher`): ``clip-gs embed`` never loads it.

Identities (recorded in embedding indexes and compared before any query):

- the model: ``clip-gs:<config name>@sha256:<16 hex>`` of its ``model.safetensors`` bytes, so two
  copies of one model are the same model wherever they lie;
- the teacher: ``str(TeacherIdentity)``, e.g. ``file:synthetic-clip@sha256:2cbded4fb06663dc`` or
  ``open_clip:EVA02-E-14-plus/laion2b_s9b_b144k``. :func:`teacher_spec_for` turns one back into
  the spec string :func:`~clip_gs.teachers.load_teacher` takes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clip_gs.errors import CheckpointError, ClipGSError, ConfigError
from clip_gs.hub.folder import TEACHER_NAME, WEIGHTS_NAME, model_file
from clip_gs.model.folder import read_teacher_record
from clip_gs.model.precision import resolve_device
from clip_gs.teachers.base import Teacher, check_same_teacher
from clip_gs.teachers.factory import teacher_spec_for


def load_recorded_teacher(
    recorded: str,
    override: str | Teacher | None = None,
    what: str = "the model",
    *,
    folder: str | os.PathLike | None = None,
    allow_external_files: bool = False,
    **kwargs,
) -> Teacher:
    """Load the teacher an identity names (or ``override``), checking that it is that teacher.

    Args:
        recorded: the teacher identity recorded with a model or an index (``""``: none recorded).
        override: a spec string or a :class:`Teacher` to use instead of :func:`teacher_spec_for`
            (e.g. ``--teacher NAME@FILE`` for a teacher from a local file).
        what: what recorded it, for messages.
        folder, allow_external_files: where a recorded identity may name a checkpoint file
            (:func:`teacher_spec_for`: none, unless ``allow_external_files``).
        **kwargs: ``device``, ``batch_size``, ``precision`` for :func:`~clip_gs.teachers.load_teacher`.

    Raises:
        ConfigError: nothing recorded and no override; a recorded identity naming a file outside ``folder``.
        WeightsUnavailableError: the teacher's weights are not available offline (the message
            says which teacher ``what`` needs).
        TeacherMismatchError: the loaded teacher is not the recorded one.
    """
    from clip_gs.teachers import load_teacher

    if not recorded and override is None:
        raise ConfigError(f"{what} records no teacher; pass --teacher SPEC (the teacher it was trained with)")
    spec = override
    try:
        if spec is None:
            spec = teacher_spec_for(recorded, folder, allow_external_files)
        teacher = load_teacher(spec, **kwargs)
    except ClipGSError as exc:
        raise type(exc)(f"{what} needs teacher {recorded or spec}, which cannot be loaded: {exc}") from exc
    if recorded:
        check_same_teacher(
            recorded,
            teacher,
            what=f"{what} and the teacher loaded from {spec if isinstance(spec, str) else 'the given Teacher'}",
        )
    return teacher


@dataclass
class LoadedModel:
    """A loaded CLIP-GS model with what using it needs.

    Attributes:
        model: the :class:`~clip_gs.CLIPGS` (eval mode, on ``device``).
        source: the folder or Hub repo id it was loaded from.
        identity: ``clip-gs:<config name>@sha256:<16 hex>`` of its weights file.
        teacher_record: the teacher identity from ``teacher.json`` (``""`` when the folder has none).
        teacher_override: a ``--teacher`` spec (or Teacher) to use instead of the recorded one.
        device: where the model (and its teacher, when loaded) run.
        teacher_folder: the folder ``teacher.json`` was read from (where a recorded identity may name a
            checkpoint file); None: none.
        allow_external_teacher_files: a recorded identity may name a checkpoint file anywhere.
    """

    model: object
    source: str
    identity: str
    teacher_record: str = ""
    teacher_override: str | Teacher | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    teacher_folder: Path | None = None
    allow_external_teacher_files: bool = False
    _teacher: Teacher | None = field(default=None, repr=False)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def teacher_identity(self) -> str:
        """The teacher identity to record: the recorded one, else that of the override (loaded)."""
        if self.teacher_record:
            return self.teacher_record
        if self.teacher_override is not None:
            return str(self.teacher().identity)
        return ""

    def teacher(self) -> Teacher:
        """The model's teacher, loaded on first use (see :func:`load_recorded_teacher`)."""
        if self._teacher is None:
            teacher = load_recorded_teacher(
                self.teacher_record, self.teacher_override, f"model {self.source}", folder=self.teacher_folder,
                allow_external_files=self.allow_external_teacher_files, device=self.device,
            )  # fmt: skip
            if teacher.embed_dim != self.embed_dim:
                raise ConfigError(
                    f"teacher {teacher.identity} embeds in {teacher.embed_dim} dimensions, model {self.source} in "
                    f"{self.embed_dim}"
                )
            self._teacher = teacher
        return self._teacher


def load_model(
    source: str | os.PathLike,
    teacher: str | Teacher | None = None,
    device: str | torch.device | None = "auto",
    *,
    allow_external_teacher_files: bool = False,
) -> LoadedModel:
    """Load a model with its teacher: the one loader behind every command (classify, embed, search,
    eval, the demo).

    Args:
        source: a named pretrained model (``uni3d-b-no-lvis``; :func:`~clip_gs.model.list_models`), a
            folder written by ``export_pretrained`` / ``save_pretrained``, a Hub repo id, or a Uni3D
            checkpoint (local ``model.pt`` or ``hf://...``); see :func:`~clip_gs.model.create_model`.
        teacher: a teacher spec (or :class:`Teacher`) to use instead of the one ``teacher.json``
            records; when both exist they must be the same teacher.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
        allow_external_teacher_files: let ``teacher.json`` name a teacher checkpoint outside the model
            folder (:func:`~clip_gs.model.folder.read_teacher_record`; refused by default).

    Raises:
        CheckpointError / WeightsUnavailableError: see :meth:`CLIPGS.from_pretrained`; a ``teacher.json``
            whose ``embed_dim`` is not the model's.
        ConfigError: an invalid ``teacher.json`` (:func:`~clip_gs.model.folder.read_teacher_record`).
    """
    from clip_gs.hub.downloads import model_location
    from clip_gs.model.factory import create_model
    from clip_gs.model.pretrained import resolve_model_reference
    from clip_gs.teachers.open_clip_teacher import file_checksum

    source = str(source)
    device = resolve_device(device)
    folder = model_location(resolve_model_reference(source))
    record = read_teacher_record(folder, allow_external_teacher_files=allow_external_teacher_files)
    model = create_model(folder, device=device)
    if record.embed_dim is not None and record.embed_dim != model.config.embed_dim:
        raise CheckpointError(
            f"{source}: {TEACHER_NAME} records a teacher of {record.embed_dim} dimensions, the model embeds in "
            f"{model.config.embed_dim}"
        )
    weights = model_file(folder, WEIGHTS_NAME, required=True)
    identity = f"clip-gs:{model.config.name}@{file_checksum(weights)}"
    teacher_folder = Path(weights).parent
    return LoadedModel(model, source, identity, record.teacher, teacher, device, teacher_folder,
                      allow_external_teacher_files)  # fmt: skip


__all__ = [
    "LoadedModel",
    "load_model",
    "load_recorded_teacher",
    "teacher_spec_for",
]
