"""Label-embedding files: the text embeddings of a label set, computed once by a teacher and shipped,
so zero-shot classification needs no text tower.

A label set's classifier is ``[C, E]``: each of the C class names filled into T prompt templates,
encoded by the teacher, averaged over the templates and renormalised
(:func:`~clip_gs.teachers.prompts.zero_shot_weights`). For a large teacher (Uni3D's
``EVA02-E-14-plus``) that text tower is several GB; a label-embedding file holds the result.

File (safetensors, little-endian):

- one tensor ``weights``: float32 ``[C, E]``, finite, rows of unit length;
- string metadata: ``format`` (:data:`FORMAT`), ``format_version`` (:data:`FORMAT_VERSION`),
  ``names`` (a JSON list of the C class names, in row order, distinct), ``teacher`` (the identity
  of the teacher that encoded them, ``str(teacher.identity)``, e.g.
  ``open_clip:EVA02-E-14-plus/laion2b_s9b_b144k``), ``embed_dim`` (E), ``templates`` (a JSON list of
  the T templates, one ``{}`` each), ``prompt_rule`` (how names fill them:
  :data:`~clip_gs.teachers.prompts.PROMPT_RULES`) and ``label_set`` (where the names came from).

A *label source*, wherever the package takes labels (``classify``, ``eval``, the demo), is one of:
a registered label-set name (``modelnet40``, ``objaverse-lvis``, ``synthetic``), a label-list file
(one name per line, or a JSON list), a sequence of names, or a label-embedding file (a path ending
in ``.safetensors``, :func:`is_label_embeddings_file`); :func:`load_label_source` reads any of them.
A label-embedding file is used only with the teacher that made it (:meth:`LabelEmbeddings.check_teacher`).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.teachers.prompts import LABEL_SETS, PROMPT_RULES, TEMPLATES, load_label_set, zero_shot_weights

FORMAT = "clip-gs-label-embeddings"
"""The ``format`` metadata of a label-embedding file."""

FORMAT_VERSION = 1
"""The ``format_version`` this module writes and reads."""

SUFFIX = ".safetensors"
"""The suffix that marks a label source as a label-embedding file."""

TENSOR_NAME = "weights"
"""The one tensor of a label-embedding file."""

METADATA_KEYS = ("format", "format_version", "names", "teacher", "embed_dim", "templates", "prompt_rule", "label_set")
"""The metadata of a label-embedding file, exactly these keys."""

MAX_CLASSES = 100_000
"""Most classes a file may hold (Objaverse-LVIS has 1,156)."""

MAX_EMBED_DIM = 16_384
"""Largest embedding width a file may declare (CLIP teachers: 512 to 1,280)."""

MAX_HEADER_BYTES = 16 << 20
"""Largest safetensors header read (16 MiB: the names and templates of :data:`MAX_CLASSES` classes)."""

MAX_FILE_BYTES = 512 << 20
"""Largest label-embedding file read (512 MiB)."""

MAX_NAME_CHARS = 1_000
"""Longest class name or template accepted."""

UNIT_TOLERANCE = 1e-3
"""How far from 1 the length of a row may be (rows are written as float32 unit vectors)."""

PROGRESS_CLASSES = 64
"""Classes encoded per step of :func:`compute_label_embeddings` (its progress bar advances per step)."""


@dataclass(frozen=True, eq=False)
class LabelEmbeddings:
    """The text embeddings of a label set, by one teacher.

    Attributes:
        names: the C class names, in row order.
        weights: ``[C, E]`` float32, unit rows, on the CPU.
        teacher: identity of the teacher that encoded them (``str(TeacherIdentity)``).
        templates: the T prompt templates averaged per class.
        prompt_rule: how names filled them (``"clip-gs"`` or ``"verbatim"``).
        label_set: where the names came from (a set name, a file, ``"labels:a,b"``).
        path: the file they were read from (None: computed here).
    """

    names: tuple[str, ...]
    weights: Tensor
    teacher: str
    templates: tuple[str, ...]
    prompt_rule: str = "clip-gs"
    label_set: str = ""
    path: str | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def embed_dim(self) -> int:
        """E."""
        return int(self.weights.shape[1])

    @property
    def where(self) -> str:
        """How messages name these embeddings: the file, else ``label embeddings of <label_set>``."""
        if self.path:
            return f"label embeddings {self.path}"
        return f"label embeddings of {self.label_set or 'a label set'}"

    def select(self, names: Sequence[str]) -> LabelEmbeddings:
        """The rows of ``names`` (in that order), as new :class:`LabelEmbeddings` (``path`` kept).

        Raises:
            ConfigError: a name that is not in the set (the first few named), or a repeated name.
        """
        names = list(names)
        row = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in row]
        if missing:
            raise ConfigError(f"{self.where}: {len(missing)} class(es) not among its {len(self.names)}: "
                              f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")  # fmt: skip
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.where}: repeated class names in {names[:8]}")
        weights = self.weights[torch.tensor([row[n] for n in names], dtype=torch.long)]
        return LabelEmbeddings(tuple(names), weights, self.teacher, self.templates, self.prompt_rule, self.label_set,
                               self.path)  # fmt: skip

    def check_teacher(self, teacher: object, what: str) -> None:
        """Refuse to use these embeddings for another teacher's space.

        Args:
            teacher: the teacher they must come from: a :class:`~clip_gs.teachers.Teacher`, its
                :class:`~clip_gs.teachers.TeacherIdentity` or its ``str()``.
            what: what expects that teacher, for the message (e.g. ``"model runs/x/export"``).

        Raises:
            TeacherMismatchError: another teacher (the message names the file and both teachers).
            ConfigError: a teacher of the same identity but another embedding width.
        """
        from clip_gs.teachers.base import check_same_teacher

        check_same_teacher(self.teacher, teacher, what=f"{self.where} and {what}")
        width = getattr(getattr(teacher, "identity", teacher), "embed_dim", 0)
        if width and width != self.embed_dim:
            raise ConfigError(f"{self.where}: {self.embed_dim}-dimensional rows, teacher {self.teacher} embeds in "
                              f"{width}")  # fmt: skip

    def check_prompts(self, templates: Sequence[str], prompt_rule: str, what: str) -> None:
        """Refuse embeddings made with other prompt templates or another prompt rule than ``what`` names.

        Raises:
            ConfigError: other templates or rule (the message names the file, ``what`` and both).
        """
        if tuple(templates) != self.templates or prompt_rule != self.prompt_rule:
            raise ConfigError(
                f"{self.where} was made with {len(self.templates)} templates (first {self.templates[0]!r}, rule "
                f"{self.prompt_rule}), {what} names {len(templates)} templates (first "
                f"{(list(templates) or [''])[0]!r}, rule {prompt_rule}); make the file with that protocol's templates "
                "(clip-gs labels --templates ...)"
            )


def is_label_embeddings_file(source: object) -> bool:
    """Whether a label source names a label-embedding file (a path ending in :data:`SUFFIX`; a
    registered label-set name never does)."""
    if isinstance(source, str) and source in LABEL_SETS:
        return False
    return isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(SUFFIX)


def load_label_source(source: str | os.PathLike | Sequence[str] | LabelEmbeddings) -> list[str] | LabelEmbeddings:
    """Read a label source (module docstring): a label-embedding file gives :class:`LabelEmbeddings`
    (:func:`read_label_embeddings`), anything else its names (:func:`~clip_gs.teachers.load_label_set`).

    Raises:
        ConfigError: an unknown set name, a missing or invalid label list.
        DatasetError: an invalid label-embedding file.
    """
    if isinstance(source, LabelEmbeddings):
        return source
    if is_label_embeddings_file(source):
        return read_label_embeddings(source)
    return load_label_set(source)


def describe_label_source(source: object) -> str:
    """What the ``label_set`` metadata records of a label source: a set name or file as given,
    ``labels:a,b,...`` for names."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, LabelEmbeddings):
        return source.label_set
    names = list(source)
    text = ",".join(str(n) for n in names[:20])
    return f"labels:{text}" + (f",... ({len(names)})" if len(names) > 20 else "")


# ---------------------------------------------------------------------------- computing
def compute_label_embeddings(
    teacher,
    label_set: str | os.PathLike | Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    prompt_rule: str = "clip-gs",
    progress: bool | None = None,
) -> LabelEmbeddings:
    """Encode a label set with a teacher's text tower (:func:`~clip_gs.teachers.zero_shot_weights`).

    Args:
        teacher: a :class:`~clip_gs.teachers.Teacher`.
        label_set: a registered set name, a label-list file or names (not a label-embedding file).
        templates: prompt templates, one ``{}`` each.
        prompt_rule: ``"clip-gs"`` or ``"verbatim"`` (:data:`~clip_gs.teachers.prompts.PROMPT_RULES`).
        progress: a progress bar over classes (default: more than :data:`PROGRESS_CLASSES` classes).

    Returns:
        :class:`LabelEmbeddings` with ``weights [C, E]`` on the CPU and ``path`` None.

    Raises:
        ConfigError: an invalid label set, templates or rule; a label-embedding file as ``label_set``.
    """
    if is_label_embeddings_file(label_set):
        raise ConfigError(f"{label_set} is a label-embedding file already; compute from a label set or label list")
    names = load_label_set(label_set)
    templates = tuple(templates)
    problem = _prompts_problem(templates, prompt_rule)
    if problem:
        raise ConfigError(f"label embeddings of {describe_label_source(label_set)}: {problem}")
    if prompt_rule == "clip-gs":  # two names with one phrase would show only within a chunk: check the whole set
        from clip_gs.teachers.prompts import label_phrase

        phrases = [label_phrase(n) for n in names]
        if len(set(phrases)) != len(phrases):
            dupes = sorted({p for p in phrases if phrases.count(p) > 1})
            raise ConfigError(f"label set: class names {dupes} give the same prompt phrase")
    step = PROGRESS_CLASSES
    show = progress if progress is not None else len(names) > step
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc="encode labels", unit="class")
    parts = []
    try:
        for start in range(0, len(names), step):
            chunk = names[start : start + step]
            parts.append(zero_shot_weights(teacher, chunk, templates, prompt_rule).float().cpu())
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return LabelEmbeddings(tuple(names), torch.cat(parts), str(teacher.identity), templates, prompt_rule,
                           describe_label_source(label_set))  # fmt: skip


# ---------------------------------------------------------------------------- writing
def write_label_embeddings(
    path: str | os.PathLike,
    names: Sequence[str],
    weights: Tensor,
    teacher_identity: str,
    templates: Sequence[str] = TEMPLATES,
    prompt_rule: str = "clip-gs",
    label_set: str = "",
) -> Path:
    """Write a label-embedding file atomically (:func:`~clip_gs.storage.atomic_write`); returns its path.

    Args:
        path: the file; must end in :data:`SUFFIX`.
        names: the C class names, in row order.
        weights: ``[C, E]`` finite, unit rows (stored as float32).
        teacher_identity: ``str(teacher.identity)`` of the teacher that encoded them.
        templates, prompt_rule: how the names were prompted.
        label_set: where the names came from (for the record).

    Raises:
        ConfigError: anything the reader would refuse (the message names the file and the problem).
    """
    from safetensors.torch import save

    from clip_gs.storage import atomic_write

    path = Path(path)
    if not str(path).lower().endswith(SUFFIX):
        raise ConfigError(f"{path}: a label-embedding file must end in {SUFFIX}")
    if not isinstance(teacher_identity, str):
        raise ConfigError(f"{path}: the teacher identity must be text, got {type(teacher_identity).__name__}")
    names, templates = list(names), list(templates)
    if not all(isinstance(n, str) for n in names) or not all(isinstance(t, str) for t in templates):
        raise ConfigError(f"{path}: class names and templates must be texts")
    weights = torch.as_tensor(weights).detach().to("cpu", torch.float32).contiguous()
    meta = {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "names": json.dumps(names),
        "teacher": teacher_identity, "embed_dim": str(weights.shape[-1]) if weights.ndim == 2 else "",
        "templates": json.dumps(templates), "prompt_rule": prompt_rule, "label_set": str(label_set),
    }  # fmt: skip
    if weights.ndim != 2 or not (1 <= weights.shape[0] <= MAX_CLASSES and 1 <= weights.shape[1] <= MAX_EMBED_DIM):
        raise ConfigError(f"{path}: weights must be [C, E] within [1..{MAX_CLASSES}, 1..{MAX_EMBED_DIM}], got "
                          f"{list(weights.shape)}")  # fmt: skip
    problem = _problem(meta, (int(weights.shape[0]), int(weights.shape[1])))
    if problem is None:
        problem = _values_problem(weights)
    if problem:
        raise ConfigError(f"{path}: cannot write label embeddings: {problem}")
    atomic_write(path, save({TENSOR_NAME: weights}, metadata=meta))
    return path


# ---------------------------------------------------------------------------- reading
def read_label_embeddings(path: str | os.PathLike) -> LabelEmbeddings:
    """Read and validate a label-embedding file (hostile input: nothing is trusted).

    Checked, before anything is allocated: a regular file of at most :data:`MAX_FILE_BYTES`; a
    safetensors header of at most :data:`MAX_HEADER_BYTES`, JSON without repeated keys, holding
    exactly one float32 tensor ``weights`` of a 2-D shape within :data:`MAX_CLASSES` x
    :data:`MAX_EMBED_DIM` whose byte range is the rest of the file, and exactly the metadata of
    :data:`METADATA_KEYS` with their types (``names``: C distinct, non-empty texts; ``templates``:
    texts with one ``{}``; ``embed_dim``: E; a known ``prompt_rule``; ``format`` / ``format_version``
    this module's). Then the values: finite, rows of unit length within :data:`UNIT_TOLERANCE`.

    Raises:
        DatasetError: a missing, unreadable or invalid file (the message names it and the problem).
    """
    from clip_gs.gaussians.files import open_regular_file
    from clip_gs.strict_json import unique_keys

    path = Path(path)
    with open_regular_file(path, DatasetError) as handle:
        size = os.fstat(handle.fileno()).st_size

        def bad(problem: str) -> DatasetError:
            return DatasetError(f"{path}: not a valid label-embedding file: {problem}")

        if size > MAX_FILE_BYTES:
            raise bad(f"{size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit")
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise bad(f"{size} bytes, too short for a safetensors header")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > MAX_HEADER_BYTES or 8 + header_bytes > size:
            raise bad(f"declares a {header_bytes:,}-byte header in a {size:,}-byte file (limit {MAX_HEADER_BYTES:,})")
        try:
            header = json.loads(handle.read(header_bytes).decode("utf-8"), object_pairs_hook=unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise bad(f"its header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or set(header) != {"__metadata__", TENSOR_NAME}:
            keys = sorted(header)[:8] if isinstance(header, dict) else type(header).__name__
            raise bad(f"holds {keys}, not exactly the tensor {TENSOR_NAME!r} and metadata")
        shape, problem = _tensor_entry(header[TENSOR_NAME], size - 8 - header_bytes)
        if problem is None:
            meta = header["__metadata__"]
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                problem = "its metadata is not a map of texts"
            else:
                problem = _problem(meta, shape)
        if problem:
            raise bad(problem)
        data = handle.read(shape[0] * shape[1] * 4)
    if len(data) != shape[0] * shape[1] * 4:
        raise DatasetError(f"{path}: not a valid label-embedding file: truncated data")
    weights = torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(shape))
    problem = _values_problem(weights)
    if problem:
        raise DatasetError(f"{path}: not a valid label-embedding file: {problem}")
    return LabelEmbeddings(tuple(json.loads(meta["names"])), weights, meta["teacher"],
                           tuple(json.loads(meta["templates"])), meta["prompt_rule"], meta["label_set"],
                           str(path))  # fmt: skip


def _tensor_entry(entry: object, data_bytes: int) -> tuple[tuple[int, int], str | None]:
    """The ``(C, E)`` a header's tensor entry declares, and what is wrong with it (None: nothing)."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        return (0, 0), f"the tensor entry is not {{dtype, shape, data_offsets}}: {str(entry)[:80]}"
    shape, offsets = entry["shape"], entry["data_offsets"]
    if entry["dtype"] != "F32":
        return (0, 0), f"weights are {str(entry['dtype'])[:20]}, not float32 (F32)"
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(x) is int for x in shape)):
        return (0, 0), f"weights have shape {str(shape)[:80]}, not [C, E]"
    c, e = shape
    if not (1 <= c <= MAX_CLASSES and 1 <= e <= MAX_EMBED_DIM):
        return (0, 0), f"declares weights [{c}, {e}], outside [1..{MAX_CLASSES}, 1..{MAX_EMBED_DIM}]"
    if offsets != [0, c * e * 4] or data_bytes != c * e * 4:
        return (0, 0), (f"weights [{c}, {e}] need {c * e * 4:,} bytes at offsets [0, {c * e * 4}], the file declares "
                        f"{str(offsets)[:60]} and holds {data_bytes:,}")  # fmt: skip
    return (c, e), None


def _json_texts(text: str, what: str) -> tuple[list[str] | None, str | None]:
    from clip_gs.strict_json import unique_keys

    try:
        values = json.loads(text, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as exc:
        return None, f"{what} is not JSON ({exc})"
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return None, f"{what} is not a JSON list of texts"
    return values, None


def _problem(meta: dict, shape: tuple[int, int]) -> str | None:
    """What is wrong with a file's metadata for weights of ``shape`` (None: nothing)."""
    if set(meta) != set(METADATA_KEYS):
        return f"its metadata keys are {sorted(meta)[:12]}, not {sorted(METADATA_KEYS)}"
    if meta["format"] != FORMAT:
        return f"format {meta['format'][:40]!r}, not {FORMAT!r}"
    if meta["format_version"] != str(FORMAT_VERSION):
        return f"format version {meta['format_version'][:20]!r}; this version of clip-gs reads {FORMAT_VERSION}"
    c, e = shape
    if meta["embed_dim"] != str(e):
        return f"embed_dim {meta['embed_dim'][:20]!r} is not the weights' width {e}"
    names, problem = _json_texts(meta["names"], "names")
    if problem:
        return problem
    if len(names) != c:
        return f"{len(names)} names for {c} rows"
    if not all(n and n == n.strip() and len(n) <= MAX_NAME_CHARS for n in names):
        return f"names must be non-empty, stripped texts of at most {MAX_NAME_CHARS} characters"
    if len(set(names)) != len(names):
        return f"duplicate names {sorted({n for n in names if names.count(n) > 1})[:5]}"
    if not meta["teacher"] or len(meta["teacher"]) > MAX_NAME_CHARS:
        return "no teacher identity"
    templates, problem = _json_texts(meta["templates"], "templates")
    return problem or _prompts_problem(templates, meta["prompt_rule"])


def _prompts_problem(templates: Sequence[str], prompt_rule: str) -> str | None:
    if not templates or not all("{}" in t and len(t) <= MAX_NAME_CHARS for t in templates):
        return f"templates must be a non-empty list of texts of at most {MAX_NAME_CHARS} characters with a '{{}}' each"
    if prompt_rule not in PROMPT_RULES:
        return f"prompt rule {str(prompt_rule)[:20]!r}, not one of {PROMPT_RULES}"
    return None


def _values_problem(weights: Tensor) -> str | None:
    if not bool(torch.isfinite(weights).all()):
        return "weights are not all finite"
    if float((weights.norm(dim=1) - 1).abs().max()) > UNIT_TOLERANCE:
        return f"rows are not unit vectors (within {UNIT_TOLERANCE})"
    return None


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_CLASSES",
    "MAX_EMBED_DIM",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BYTES",
    "SUFFIX",
    "LabelEmbeddings",
    "compute_label_embeddings",
    "describe_label_source",
    "is_label_embeddings_file",
    "load_label_source",
    "read_label_embeddings",
    "write_label_embeddings",
]
