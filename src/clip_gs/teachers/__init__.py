"""CLIP teachers: frozen image-text models whose embeddings CLIP-GS aligns 3DGS objects to.

- :class:`Teacher` (``base``): the interface: ``encode_text(list[str]) -> [T, E]``,
  ``encode_images(images) -> [B, E]`` (unit norm, float32), ``embed_dim``, ``image_size``,
  ``identity``; frozen, batched, fp16 / bf16 on CUDA when asked. :func:`check_same_teacher`
  refuses to mix embeddings of different teachers.
- :class:`OpenCLIPTeacher`: any open_clip model (name + tag, ``hf-hub:``, local file); the paper's
  ``EVA02-E-14-plus`` / ``laion2b_s9b_b144k`` by default.
- :func:`load_teacher`: one spec string for any teacher (see :mod:`clip_gs.teachers.factory`).
- :data:`OFFLINE_TEACHER` (``"synthetic-clip"``): a small CLIP trained by this project on rendered
  synthetic objects, shipped in the package, loading with no network
  (:mod:`clip_gs.teachers.synthetic`; rebuilt by ``clip-gs teacher build``).
- Prompt ensembles: :data:`TEMPLATES`, :func:`zero_shot_weights`, :func:`load_label_set`.

Importing this package loads only torch; open_clip is imported when a teacher is built. No Lightning.
"""

from clip_gs.teachers.base import Teacher, TeacherIdentity, TeacherMismatchError, check_same_teacher
from clip_gs.teachers.factory import DEFAULT_TEACHER, TeacherSpec, load_teacher, parse_teacher_spec
from clip_gs.teachers.open_clip_teacher import OpenCLIPTeacher
from clip_gs.teachers.prompts import TEMPLATES, fill_template, load_label_set, synthetic_label_set, zero_shot_weights
from clip_gs.teachers.synthetic import OFFLINE_TEACHER, SyntheticCLIPTeacher

__all__ = [
    "DEFAULT_TEACHER",
    "OFFLINE_TEACHER",
    "TEMPLATES",
    "OpenCLIPTeacher",
    "SyntheticCLIPTeacher",
    "Teacher",
    "TeacherIdentity",
    "TeacherMismatchError",
    "TeacherSpec",
    "check_same_teacher",
    "fill_template",
    "load_label_set",
    "load_teacher",
    "parse_teacher_spec",
    "synthetic_label_set",
    "zero_shot_weights",
]
