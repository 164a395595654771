"""Run the evaluation protocols for a model on a source of objects, and write the report.

A source (:mod:`clip_gs.evaluation.sources`) is one split of a dataset written by ``clip-gs prepare``
(:class:`~clip_gs.evaluation.sources.PreparedSplit`) or of a public benchmark read in its download
layout (:class:`~clip_gs.evaluation.sources.BenchmarkSplit`). :func:`embed` embeds its 3DGS objects
through the model's fused inference path (``model.fused().encode``), in chunks, keeping the stored
teacher embeddings of each object's first caption and of its views. :func:`evaluate` runs zero-shot,
few-shot and retrieval on them and builds the JSON report (:func:`~clip_gs.evaluation.report.build_report`,
its shape in :mod:`clip_gs.evaluation.report`). :func:`write_outputs` writes ``report.json``, ``confusion.png`` and ``retrieval.png``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError, EpisodesFileError
from clip_gs.evaluation.episodes import load_draws, write_episodes
from clip_gs.evaluation.fewshot import DEFAULT_L2, STANDARD_RUNS, FewShotResult, run_few_shot
from clip_gs.evaluation.metrics import (
    DEFAULT_IMAGE_GALLERY,
    DEFAULT_IMAGE_QUERIES,
    RECALL_K,
    ZEROSHOT_K,
    ZeroShotResult,
    retrieval,
    retrieval_definitions,
    zero_shot,
)
from clip_gs.evaluation.protocols import ZeroShotProtocol, match_labels
from clip_gs.evaluation.ranking import positive_ranks
from clip_gs.evaluation.report import build_report
from clip_gs.evaluation.sources import TASKS
from clip_gs.hub.folder import EVAL_REPORT

REPORT_NAME = PurePosixPath(EVAL_REPORT).name
"""The report's file name in the output folder (``eval/report.json`` of a model folder: the card reads it there)."""
CONFUSION_NAME = "confusion.png"
RETRIEVAL_NAME = "retrieval.png"

ENCODE_CHUNK = 256
"""Objects read from the source and embedded per step of :func:`embed` (bounds memory)."""

VIEW_DTYPE = torch.float16
"""How :func:`embed` holds the view embeddings ``[N, V, E]``: half the memory of float32 (at
Objaverse-LVIS scale, 46K x 36 x 1024, 3.4 GB instead of 6.8 GB), a relative error of at most
2^-11 per component of a unit vector; the rankings normalise them per tile in float32."""


# ---------------------------------------------------------------------------- embeddings of a source
@dataclass
class SplitEmbeddings:
    """One source, embedded.

    Attributes:
        source: where the objects came from (:mod:`clip_gs.evaluation.sources`).
        ids, labels, captions: N object ids, class labels (None when unlabelled) and first captions (None).
        shape: ``[N, E]`` the model's 3D embeddings (unit norm).
        text: ``[N, E]`` teacher embedding of each object's first caption (zeros without one).
        text_mask: ``[N]`` bool, has a caption.
        images: ``[N, V, E]`` teacher embeddings of the rendered views (zero padding; V = 0 without views), float16.
        image_mask: ``[N, V]`` bool, a real view.
        ups: N world up axes of the objects' stored cameras, for thumbnails.
    """

    source: object
    ids: list[str]
    labels: list[str | None]
    captions: list[str | None]
    shape: Tensor
    text: Tensor
    text_mask: Tensor
    images: Tensor
    image_mask: Tensor
    ups: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def embed(model, source, batch_size: int = 8, seed: int = 0, precision: str = "auto",
          progress: bool | None = None) -> SplitEmbeddings:  # fmt: skip
    """Embed every object of ``source`` with ``model`` (its fused inference path).

    The 3DGS are resampled with ``seed`` (``model.encode(..., seed=seed)``, the input validation
    builds with the data module's seed); the captions' and views' teacher embeddings are the
    stored ones (the views held as :data:`VIEW_DTYPE`). Objects are read and embedded
    :data:`ENCODE_CHUNK` at a time, the next chunk read by a background thread while this one
    encodes (for a source whose ``prefetch`` allows it); memory is the result (``N x (2E x 4 + V x E x 2)``
    bytes) plus two chunks of objects.

    Args:
        model: a :class:`~clip_gs.model.CLIPGS`.
        source: a :class:`~clip_gs.evaluation.sources.PreparedSplit` or :class:`~clip_gs.evaluation.sources.BenchmarkSplit`.
        batch_size: objects per forward pass.
        seed: resampling seed.
        precision: ``"auto"``, ``"bf16"`` or ``"fp32"`` (``CLIPGS.fused``).
        progress: progress bar over objects (default: more than one chunk).

    Raises:
        DatasetError: stored embeddings of another width than the model's.
        CorruptSampleError: a damaged record (names the chunk and index).
    """
    e = model.config.embed_dim
    if source.embed_dim is not None and source.embed_dim != e:
        raise DatasetError(f"{source.where}: teacher {source.dataset_teacher()!r} embeds in {source.embed_dim} "
                           f"dimensions, the model in {e}")  # fmt: skip
    fused = model.fused(precision)
    n = len(source)
    ids, labels, captions, ups = [], [], [], []
    shapes = torch.empty(n, e)
    texts = torch.zeros(n, e)
    images = torch.zeros(n, 0, e, dtype=VIEW_DTYPE)  # widened to the most views seen (zero padding)
    image_mask = torch.zeros(n, 0, dtype=torch.bool)
    bar = None
    if progress if progress is not None else n > ENCODE_CHUNK:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"embed {source.title}", unit="obj")
    start = 0
    try:
        chunks = source.chunks(ENCODE_CHUNK)
        for objects in prefetched(chunks) if source.prefetch else chunks:
            stop = start + len(objects)
            shapes[start:stop] = fused.encode([o.cloud for o in objects], batch_size=batch_size, seed=seed,
                                              progress=False).reshape(len(objects), -1)  # fmt: skip
            for i, o in enumerate(objects, start):
                ids.append(o.id)
                labels.append(o.label)
                captions.append(o.caption)
                ups.append(o.up)
                if o.text_embedding is not None:
                    texts[i] = o.text_embedding
                if o.image_embeddings is None:
                    continue
                v = o.image_embeddings.shape[0]
                if v > images.shape[1]:
                    images = torch.cat([images, images.new_zeros(n, v - images.shape[1], e)], dim=1)
                    image_mask = torch.cat([image_mask, image_mask.new_zeros(n, v - image_mask.shape[1])], dim=1)
                images[i, :v] = o.image_embeddings.to(VIEW_DTYPE)
                image_mask[i, :v] = True
            if bar is not None:
                bar.update(len(objects))
            start = stop
    finally:
        if bar is not None:
            bar.close()
    text_mask = torch.tensor([c is not None for c in captions], dtype=torch.bool)
    return SplitEmbeddings(source, ids, labels, captions, shapes, texts, text_mask, images, image_mask, ups)


def prefetched(chunks: Iterator[list]) -> Iterator[list]:
    """The items of ``chunks``, the next one read by a background thread while the caller works on this one."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = reader.submit(next, chunks, None)
            yield chunk


# ---------------------------------------------------------------------------- protocols
@dataclass
class Evaluation:
    """What :func:`evaluate` computed (the report plus what the pictures need).

    Attributes:
        report: the JSON report (:func:`~clip_gs.evaluation.report.build_report`).
        embeddings: the embedded source.
        zeroshot: the zero-shot result (None when not run).
        fewshot: the few-shot results.
        failures: ``{task: "ErrorType: message"}`` of protocols that could not run on this source.
    """

    report: dict
    embeddings: SplitEmbeddings
    zeroshot: ZeroShotResult | None = None
    fewshot: list[FewShotResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def evaluate(
    model,
    source,
    tasks: Sequence[str] | None = None,
    label_set: str | os.PathLike | Sequence[str] | None = None,
    teacher=None,
    protocols: Sequence[tuple[int, int]] | None = None,
    episodes: int = 100,
    queries_per_class: int | None = None,
    l2: float = DEFAULT_L2,
    seed: int = 0,
    batch_size: int = 8,
    precision: str = "auto",
    model_name: str = "",
    model_teacher_identity: str | None = None,
    progress: bool | None = None,
    zeroshot_protocol: ZeroShotProtocol | None = None,
    fewshot_protocol: str = "standard",
    support_split: str = "train",
    runs: int = STANDARD_RUNS,
    episodes_file: str | os.PathLike | None = None,
    image_queries: str = DEFAULT_IMAGE_QUERIES,
    image_gallery: str = DEFAULT_IMAGE_GALLERY,
) -> Evaluation:
    """Run the protocols for ``model`` on a source of objects.

    Zero-shot and few-shot use the labelled objects; retrieval uses every object (text directions:
    those with a caption). A protocol that cannot run on this source (e.g. too few objects per class
    for a few-shot setting, no support split) is recorded in ``failures`` (and in the report's
    ``"failures"``) and the others go on.

    Args:
        model: a :class:`~clip_gs.model.CLIPGS`.
        source: a :class:`~clip_gs.evaluation.sources.PreparedSplit` or :class:`~clip_gs.evaluation.sources.BenchmarkSplit`.
        tasks: a subset of the source's tasks (None: all of them; :data:`~clip_gs.evaluation.sources.TASKS`).
        label_set, teacher, zeroshot_protocol: zero-shot classes and prompts (the source's ``zero_shot_classes``:
            for a prepared split :func:`~clip_gs.evaluation.sources.zero_shot_classes`; for a benchmark the
            protocol's classes, ``teacher`` a loaded :class:`~clip_gs.teachers.Teacher`).
        fewshot_protocol: ``"standard"`` (support from the source's ``support_split``, ``runs`` seeded runs) or
            ``"episodes"`` (:func:`~clip_gs.evaluation.fewshot.run_few_shot`).
        protocols: few-shot ``(ways, shots)`` settings (None: 10-way 10-shot standard, 5-way 5-shot episodes;
            with an existing ``episodes_file``, the file's).
        episodes, queries_per_class, l2: few-shot settings (queries None: 20 standard, 15 episodes).
        episodes_file: the few-shot draws' file (:mod:`~clip_gs.evaluation.episodes`): read and scored
            when it exists (so two models see the same objects), else written with this run's draws.
        image_queries, image_gallery: the image retrieval definitions (:func:`~clip_gs.evaluation.metrics.retrieval`;
            recorded in the report beside each recall).
        seed: seed of the 3DGS resampling, of the few-shot draws and of the one-view image draw.
        batch_size, precision, progress: embedding (:func:`embed`).
        model_name: what the report calls the model (its folder or repo id).
        model_teacher_identity: the model's teacher (``teacher.json``); checked against the dataset's.

    Raises:
        ConfigError: unknown tasks or tasks the source does not support, an episodes file of another
            protocol or other settings, no teacher for a benchmark's zero-shot.
        TeacherMismatchError: a model trained against another teacher.
        DatasetError: an unreadable dataset (see :func:`embed`).
        EpisodesFileError: a malformed episodes file, or one naming objects that are not in the source.
    """
    from clip_gs.teachers import check_same_teacher

    tasks = source.tasks if tasks is None else tuple(tasks)
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ConfigError(f"unknown evaluation tasks {unknown or list(tasks)}; choose from {list(TASKS)}")
    source.check_tasks(tasks)
    if model_teacher_identity is not None and source.dataset_teacher() is not None:
        check_same_teacher(model_teacher_identity, source.dataset_teacher(),
                           what=f"model {model_name or ''} and dataset {source.where}")  # fmt: skip
    data = embed(model, source, batch_size, seed, precision, progress)
    result = Evaluation(report={}, embeddings=data)
    labelled = [i for i, label in enumerate(data.labels) if label is not None]
    label_names = [data.labels[i] for i in labelled]
    where = f"{source.where} ({source.title})"
    tasks_out: dict = {}

    def attempt(task: str, run) -> None:
        try:
            run()
        except EpisodesFileError:
            raise  # the user's file does not fit this source: an error, not a protocol the source cannot run
        except DatasetError as exc:  # this source cannot support the protocol: report it, go on
            result.failures[task] = f"{type(exc).__name__}: {exc}"

    def run_zeroshot() -> None:
        if not labelled:
            raise DatasetError(f"{where}: no labelled objects for zero-shot classification")
        classes = source.zero_shot_classes(label_names, label_set, teacher, zeroshot_protocol, model_teacher_identity)
        as_class = match_labels(label_names, classes.names, where) if classes.match else {}
        zs = zero_shot(data.shape[labelled], [as_class.get(n, n) for n in label_names], classes.names, classes.weights,
                       ZEROSHOT_K)  # fmt: skip
        result.zeroshot = zs
        tasks_out["zeroshot"] = {
            **{f"top{k}": zs.topk[k] for k in ZEROSHOT_K}, "per_class": zs.per_class, "label_set": classes.where,
            "num_classes": len(classes.names), "num_samples": zs.num_samples, "protocol": classes.protocol,
        }  # fmt: skip

    def run_fewshot() -> None:
        draws = load_draws(episodes_file, fewshot_protocol, protocols) if episodes_file is not None else None
        support = None
        if fewshot_protocol == "standard":
            support = embed(model, source.support(support_split), batch_size, seed, precision, progress)
        support_idx = [i for i, label in enumerate(support.labels) if label is not None] if support else []
        run = run_few_shot(
            fewshot_protocol, protocols, data.shape[labelled], label_names,
            support.shape[support_idx] if support else None, [support.labels[i] for i in support_idx] if support else None,
            runs, episodes, queries_per_class, seed, l2, query_ids=[data.ids[i] for i in labelled],
            support_ids=[support.ids[i] for i in support_idx] if support else None, draws=draws,
            support_split=support_split, where=str(episodes_file),
        )  # fmt: skip
        result.fewshot.extend(run.results)
        result.failures.update(run.failures)
        if episodes_file is not None and draws is None and run.results:
            write_episodes(episodes_file, run.draws)
        if run.results:
            tasks_out["fewshot"] = {name: entry | ({"support_split": support_split} if support else {})
                                    for name, entry in run.report(episodes_file, draws is not None).items()}  # fmt: skip

    def run_retrieval() -> None:
        recalls = retrieval(data.shape, data.text, data.images, data.text_mask, data.image_mask, RECALL_K,
                            image_queries=image_queries, image_gallery=image_gallery, view_seed=seed)  # fmt: skip
        definitions = retrieval_definitions(image_queries, image_gallery, seed)
        tasks_out["retrieval"] = {d: r | {"definition": definitions[d]} for d, r in recalls.items()}

    for task, run in (("zeroshot", run_zeroshot), ("fewshot", run_fewshot), ("retrieval", run_retrieval)):
        if task in tasks:
            attempt(task, run)
    report_teacher = source.report_teacher(teacher, model_teacher_identity)
    result.report = build_report(model_name, source.where, source.split, report_teacher, len(data), tasks_out,
                                 result.failures) | source.report_fields  # fmt: skip
    return result


# ---------------------------------------------------------------------------- outputs
def retrieval_rows(evaluation: Evaluation, queries: int = 4, k: int = 5, seed: int = 0, size: int = 128):
    """The rows of the retrieval picture: ``queries`` captioned objects (a seeded choice, objects with
    distinct captions first), each caption's top-``k`` objects by cosine (text -> 3D), rendered
    ``size`` pixels wide (:func:`~clip_gs.render.render_view`).

    Returns:
        list of :class:`~clip_gs.evaluation.plots.RetrievalRow`.
    """
    from clip_gs.evaluation.plots import RetrievalRow, RetrievedItem
    from clip_gs.render import contact_sheet, render_view

    if queries < 1 or k < 1 or size < 16:
        raise ConfigError(f"the retrieval grid needs queries >= 1, k >= 1 and size >= 16, got {queries}, {k}, {size}")
    data = evaluation.embeddings
    captioned = data.text_mask.nonzero().squeeze(1)
    if not len(captioned):
        raise DatasetError(f"{data.source.where} ({data.source.title}): no captioned objects to query")
    order = torch.randperm(len(captioned), generator=torch.Generator().manual_seed(seed)).tolist()
    distinct, seen = [], set()  # prefer different captions; repeat captions only when there are too few
    for i in order:
        if data.captions[int(captioned[i])] not in seen:
            seen.add(data.captions[int(captioned[i])])
            distinct.append(int(captioned[i]))
    rest = [int(captioned[i]) for i in order if int(captioned[i]) not in distinct]
    chosen = sorted((distinct + rest)[:queries])
    sims = torch.nn.functional.normalize(data.text[chosen], dim=-1) @ torch.nn.functional.normalize(data.shape, dim=-1).T
    rows, cache = [], {}
    for row, q in enumerate(chosen):
        top = sims[row].topk(min(k, len(data))).indices.tolist()
        rank = int(positive_ranks(sims[row : row + 1], (torch.arange(len(data)) == q)[None])[0])
        items = []
        for j in top:
            if j not in cache:
                cache[j] = contact_sheet(render_view(data.source.cloud(j), size, data.ups[j])[None], padding=0)
            name = data.labels[j] or data.ids[j]
            items.append(RetrievedItem(cache[j], f"{name}  {float(sims[row, j]):.3f}", j == q))
        note = f"correct: {data.labels[q] or data.ids[q]}, rank {rank + 1}"
        rows.append(RetrievalRow(data.captions[q] or "", items, note))
    return rows


def write_confusion(result: ZeroShotResult, out: str | os.PathLike, title: str) -> Path:
    """Draw the zero-shot confusion picture of ``result`` into ``out`` (:data:`CONFUSION_NAME`): the
    matrix up to :data:`~clip_gs.evaluation.plots.CONFUSION_MATRIX_MAX` classes, the summary
    (most-confused pairs, per-class accuracy histogram) above; returns its path."""
    from clip_gs.evaluation.plots import CONFUSION_MATRIX_MAX, draw_confusion, draw_confusion_summary

    path = Path(out) / CONFUSION_NAME
    draw = draw_confusion if len(result.class_names) <= CONFUSION_MATRIX_MAX else draw_confusion_summary
    draw(result.confusion, result.class_names, title).save(path)
    return path


def write_outputs(evaluation: Evaluation, out: str | os.PathLike, grid_queries: int = 4, grid_k: int = 5,
                  grid_size: int = 128, seed: int = 0) -> dict[str, Path]:  # fmt: skip
    """Write ``report.json`` and, when their task ran, ``confusion.png`` and ``retrieval.png`` into ``out``.

    The retrieval picture has ``grid_queries`` rows of ``grid_k`` thumbnails, ``grid_size`` pixels
    wide (:func:`retrieval_rows`, queries chosen with ``seed``).

    Returns:
        ``{"report" | "confusion" | "retrieval": path}`` of what was written.
    """
    from clip_gs.evaluation.plots import draw_retrieval_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    if evaluation.zeroshot is not None:
        zs = evaluation.zeroshot
        title = f"zero-shot confusion, {evaluation.embeddings.source.title}: top-1 {zs.topk[1]:.3f} ({zs.num_samples} objects)"
        written["confusion"] = write_confusion(zs, out, title)
    if "retrieval" in evaluation.report.get("tasks", {}):
        rows = retrieval_rows(evaluation, grid_queries, grid_k, seed, grid_size)
        written["retrieval"] = out / RETRIEVAL_NAME
        draw_retrieval_grid(rows, title="text -> 3D retrieval (green: the caption's own object)").save(written["retrieval"])
    written["report"] = out / REPORT_NAME
    written["report"].write_text(json.dumps(evaluation.report, indent=2) + "\n")
    return written


__all__ = [
    "CONFUSION_NAME",
    "ENCODE_CHUNK",
    "REPORT_NAME",
    "RETRIEVAL_NAME",
    "VIEW_DTYPE",
    "Evaluation",
    "SplitEmbeddings",
    "embed",
    "evaluate",
    "retrieval_rows",
    "write_confusion",
    "write_outputs",
]
