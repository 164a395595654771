"""Zero-shot classification of 3DGS files and meshes with a trained CLIP-GS model.

Each object is embedded by the model; each class name, as a noun phrase
(:func:`~clip_gs.teachers.prompts.label_phrase`), is filled into the prompt templates and
embedded by the model's teacher (:func:`~clip_gs.teachers.prompts.zero_shot_weights`), or the
class embeddings come from a label-embedding file made by that teacher
(:mod:`clip_gs.teachers.label_embeddings`), with no text tower loaded. The
scores of an object are the **softmax over the classes of the logit-scaled cosine
similarities** (``exp(logit_scale)`` of the model, the temperature it was trained with, clamped as
in training), so they sum to 1 over the label set and read as the model's probability of each
class; the raw cosine similarity is reported beside them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import ConfigError
from clip_gs.gaussians.assets import MESH_GAUSSIANS, asset_loader
from clip_gs.model.loaded import LoadedModel, load_model
from clip_gs.teachers.label_embeddings import LabelEmbeddings

logger = logging.getLogger("clip_gs")


@dataclass(frozen=True)
class LabelScore:
    """One class of a result: its name, softmax ``score`` and raw ``cosine`` similarity."""

    label: str
    score: float
    cosine: float


@dataclass(frozen=True)
class Classification:
    """The top-k classes of one file (best first), or the ``error`` that stopped it
    (``"ErrorType: message"``)."""

    path: str
    labels: tuple[LabelScore, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        """JSON-ready form (what ``clip-gs classify --json`` prints per file)."""
        return {"file": self.path, "error": self.error,
                "labels": [{"label": s.label, "score": s.score, "cosine": s.cosine} for s in self.labels]}  # fmt: skip


def expand_files(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given; a folder becomes its 3DGS files and meshes (recursively, sorted)."""
    from clip_gs.gaussians.assets import find_asset_files

    files: list[str] = []
    for entry in inputs:
        if Path(entry).is_dir():
            files.extend(str(p) for p in find_asset_files(entry))
        else:
            files.append(str(entry))
    return files


def class_weights(
    usage: LoadedModel, labels: str | Path | Sequence[str] | LabelEmbeddings, progress: bool | None = False
) -> tuple[list[str], Tensor]:
    """``(names, weights [C, E])``: the label set and its zero-shot classifier by the model's teacher.

    Args:
        usage: the loaded model.
        labels: a label source (:func:`~clip_gs.teachers.label_embeddings.load_label_source`):
            names, a registered label-set name, a label-list file, or a label-embedding file (or
            :class:`~clip_gs.teachers.label_embeddings.LabelEmbeddings`), whose rows are used as they
            are, with no text tower loaded, after checking that the model's teacher made them.
            Otherwise the names are encoded by the model's teacher with
            :data:`~clip_gs.teachers.TEMPLATES` (:func:`~clip_gs.teachers.label_embeddings.compute_label_embeddings`).
        progress: a progress bar while encoding (None: for long label sets).

    Raises:
        ConfigError: an invalid label set; label embeddings of another width than the model's.
        DatasetError: an invalid label-embedding file.
        TeacherMismatchError: label embeddings made by another teacher than the model's (names both).
        WeightsUnavailableError: the teacher is not available offline.
    """
    table = model_label_embeddings(usage, labels, progress)
    names, weights = list(table.names), table.weights.float().cpu()
    same = indistinguishable_classes(names, weights)
    if same:
        logger.warning(
            "teacher %s gives %d classes the same text embedding (words it does not know?), so their scores are equal: "
            "%s",
            table.teacher,
            sum(len(g) for g in same),
            "; ".join(", ".join(g[:4]) + (", ..." if len(g) > 4 else "") for g in same[:3]),
        )
    return names, weights


def model_label_embeddings(
    usage: LoadedModel, labels: str | Path | Sequence[str] | LabelEmbeddings, progress: bool | None = False
) -> LabelEmbeddings:
    """The :class:`~clip_gs.teachers.label_embeddings.LabelEmbeddings` of a label source for a model
    (see :func:`class_weights`): a label-embedding file checked against the model's teacher and width,
    else the label set encoded by the model's teacher.

    Raises:
        as :func:`class_weights`.
    """
    from clip_gs.teachers.label_embeddings import compute_label_embeddings, load_label_source

    source = load_label_source(labels)
    if not isinstance(source, LabelEmbeddings):
        return compute_label_embeddings(usage.teacher(), source, progress=progress)
    expected = usage.teacher_identity
    if not expected:
        raise ConfigError(f"model {usage.source} records no teacher, so {source.where} cannot be checked against it; "
                          "pass --teacher SPEC (the teacher it was trained with)")  # fmt: skip
    source.check_teacher(expected, f"model {usage.source}")
    if source.embed_dim != usage.embed_dim:
        raise ConfigError(f"{source.where}: {source.embed_dim}-dimensional rows, model {usage.source} embeds in "
                          f"{usage.embed_dim}")  # fmt: skip
    return source


def indistinguishable_classes(names: Sequence[str], weights: Tensor, threshold: float = 0.9999) -> list[list[str]]:
    """Groups (of 2 or more) of classes whose classifier rows ``weights [C, E]`` coincide (cosine
    above ``threshold``): a teacher that does not know the words embeds them alike."""
    similar = (weights @ weights.T) > threshold  # [C, C]
    groups, seen = [], set()
    for c in range(len(names)):
        if c in seen:
            continue
        members = [int(j) for j in similar[c].nonzero().flatten().tolist()]
        seen.update(members)
        if len(members) > 1:
            groups.append([names[j] for j in members])
    return groups


def top_labels(
    embeddings: Tensor, weights: Tensor, names: Sequence[str], logit_scale: Tensor, k: int
) -> list[tuple[LabelScore, ...]]:
    """Top-``k`` classes per object: ``embeddings [B, E]`` and ``weights [C, E]`` (unit rows) ->
    B tuples of :class:`LabelScore`, best first (softmax of ``scale * cosine`` over the C classes)."""
    from clip_gs.model.loss import logit_scale_value

    cosine = embeddings.float() @ weights.float().T  # [B, C]
    probs = (logit_scale_value(logit_scale.detach().cpu()) * cosine).softmax(dim=-1)
    top = probs.topk(min(k, len(names)), dim=-1)
    return [
        tuple(
            LabelScore(names[c], float(p), float(cosine[b, c]))
            for p, c in zip(top.values[b].tolist(), top.indices[b].tolist())
        )
        for b in range(len(embeddings))
    ]


def classify_files(
    files: Sequence[str | os.PathLike],
    model: LoadedModel | str | os.PathLike,
    labels: str | Path | Sequence[str] | LabelEmbeddings,
    k: int = 5,
    mesh_gaussians: int = MESH_GAUSSIANS,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | None = None,
    num_workers: int | None = None,
    up: str = "auto",
) -> list[Classification]:
    """Zero-shot top-``k`` classes of each file (3DGS of any supported format, or a mesh).

    Args:
        files: file paths (a folder stands for its 3DGS files and meshes, recursively).
        model: a :class:`LoadedModel` or a model folder / Hub repo id (:func:`load_model`).
        labels: class names, a registered label-set name (``"modelnet40"``, ``"objaverse-lvis"``,
            ``"synthetic"``), a label-list file (:func:`~clip_gs.teachers.load_label_set`), or a
            label-embedding file (``.safetensors``, ``clip-gs labels``) or its
            :class:`~clip_gs.teachers.label_embeddings.LabelEmbeddings`: then no text tower is loaded
            (:func:`class_weights`).
        k: classes reported per file (at most the label set's size).
        mesh_gaussians: surface samples of a mesh (:data:`~clip_gs.gaussians.assets.MESH_GAUSSIANS`).
        seed: seed of the mesh sampling and of the model's resampling.
        up: the up axis of files that declare none, or ``"auto"``
            (:func:`~clip_gs.gaussians.assets.load_asset`; files are brought to the model's frame).
        batch_size / progress / num_workers: as :meth:`~clip_gs.CLIPGS.encode_iter`.

    Returns:
        One :class:`Classification` per file, in input order; a file that cannot be loaded has
        its ``error`` set and the others still run.

    Raises:
        ConfigError: no files, ``k < 1``, a bad label set.
        DatasetError: an invalid label-embedding file.
        WeightsUnavailableError / TeacherMismatchError: the model's teacher cannot be loaded; label
            embeddings of another teacher.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    usage = model if isinstance(model, LoadedModel) else load_model(model)
    paths = expand_files(files)
    if not paths:
        raise ConfigError("classify got no files (an empty list, or folders without 3DGS files or meshes)")
    names, weights = class_weights(usage, labels)
    loader = asset_loader(up=up, frame=usage.model.config.up_axis, mesh_gaussians=mesh_gaussians, seed=seed)
    results: list[Classification | None] = [None] * len(paths)
    good: list[tuple[int, Tensor]] = []
    stream = usage.model.encode_iter(paths, batch_size=batch_size, seed=seed, on_error="skip", progress=progress,
                                     num_workers=num_workers, loader=loader)  # fmt: skip
    for item in stream:
        if item.ok:
            good.append((item.index, item.embedding))
        else:
            results[item.index] = Classification(paths[item.index], error=item.error)
    if good:
        embeddings = torch.stack([e for _, e in good])
        for (index, _), scores in zip(good, top_labels(embeddings, weights, names, usage.model.logit_scale, k)):
            results[index] = Classification(paths[index], scores)
    return [r for r in results if r is not None]


def format_classification(result: Classification) -> str:
    """The text ``clip-gs classify`` prints for one file: the path, then ``score  label  (cosine c)``
    lines, best first (a failed file is printed to stderr instead, by the command)."""
    width = max((len(s.label) for s in result.labels), default=0)
    lines = [result.path]
    lines += [f"  {s.score:.4f}  {s.label:<{width}}  (cosine {s.cosine:+.3f})" for s in result.labels]
    return "\n".join(lines)


__all__ = [
    "Classification",
    "LabelScore",
    "class_weights",
    "classify_files",
    "expand_files",
    "format_classification",
    "indistinguishable_classes",
    "model_label_embeddings",
    "top_labels",
]
