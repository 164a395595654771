"""Run the evaluation protocols for a model on a prepared dataset split, and write the report.

:func:`embed_split` reads a split written by ``clip-gs prepare`` (:class:`~clip_gs.data.shards.TripletShardDataset`)
and embeds its 3DGS objects through the model's fused inference path (``model.fused().encode``),
keeping the stored teacher embeddings of each object's first caption and of its views.
:func:`evaluate` runs zero-shot (against the dataset's stored label embeddings, or a label set
encoded by a teacher), few-shot and retrieval on them and builds the JSON report
(:func:`build_report`, the shape documented there). :func:`write_outputs` writes
``report.json``, ``confusion.png`` and ``retrieval.png``.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
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
    positive_ranks,
    retrieval,
    retrieval_definitions,
    zero_shot,
)
from clip_gs.evaluation.protocols import ZeroShotProtocol, match_labels
from clip_gs.model.folder import EVAL_REPORT

TASKS = ("zeroshot", "fewshot", "retrieval")
"""The protocols :func:`evaluate` runs (``"all"`` on the command line)."""

REPORT_NAME = PurePosixPath(EVAL_REPORT).name
"""The report's file name in the output folder (``eval/report.json`` of a model folder: the card reads it there)."""
CONFUSION_NAME = "confusion.png"
RETRIEVAL_NAME = "retrieval.png"

ENCODE_CHUNK = 256
"""Objects read from the shards and embedded per step of :func:`embed_split` (bounds memory)."""

VIEW_DTYPE = torch.float16
"""How :func:`embed_split` holds the view embeddings ``[N, V, E]``: half the memory of float32 (at
Objaverse-LVIS scale, 46K x 36 x 1024, 3.4 GB instead of 6.8 GB), a relative error of at most
2^-11 per component of a unit vector; the rankings normalise them per tile in float32."""


# ---------------------------------------------------------------------------- embeddings of a split
@dataclass
class SplitEmbeddings:
    """One prepared split, embedded.

    Attributes:
        root, split: where it came from.
        ids, labels, captions: N object ids, class labels (None when unlabelled) and first captions (None).
        shape: ``[N, E]`` the model's 3D embeddings (unit norm).
        text: ``[N, E]`` teacher embedding of each object's first caption (zeros without one).
        text_mask: ``[N]`` bool, has a caption.
        images: ``[N, V, E]`` teacher embeddings of the rendered views (zero padding), float16.
        image_mask: ``[N, V]`` bool, a real view.
        ups: N world up axes of the objects' stored cameras (:func:`camera_up_axis`), for thumbnails.
    """

    root: str
    split: str
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


def camera_up_axis(viewmat: Tensor) -> str:
    """The world axis (``+y``, ``-y``, ``+z``, ``-z``) closest to a camera's image-up direction.

    Args:
        viewmat: ``[4, 4]`` world-to-camera matrix (OpenCV: the camera's y axis points down).
    """
    up = -viewmat[1, :3].double()  # image up, in world coordinates
    candidates = {"+y": up[1], "-y": -up[1], "+z": up[2], "-z": -up[2]}
    return max(candidates, key=lambda k: float(candidates[k]))


def open_split(root: str | os.PathLike, split: str, storage_options: dict | None = None):
    """``(manifest, TripletShardDataset)`` of one split of a prepared dataset.

    Raises:
        DatasetError: no manifest, a split the manifest lists without samples, a missing split folder.
    """
    from clip_gs.data.shards import TripletShardDataset, join, read_manifest

    manifest = read_manifest(str(root), storage_options)
    if manifest.counts.get(split, 0) <= 0:
        raise DatasetError(f"{root}: split {split!r} has no samples (the manifest lists {manifest.counts})")
    return manifest, TripletShardDataset(join(str(root), split), storage_options=storage_options)


def embed_split(
    model,
    root: str | os.PathLike,
    split: str = "test",
    batch_size: int = 8,
    seed: int = 0,
    precision: str = "auto",
    progress: bool | None = None,
    storage_options: dict | None = None,
) -> SplitEmbeddings:
    """Embed every object of a prepared split with ``model`` (its fused inference path).

    The 3DGS are resampled with ``seed`` (``model.encode(..., seed=seed)``, the input validation
    builds with the data module's seed); the captions' and views' teacher embeddings are the
    stored ones (the views held as :data:`VIEW_DTYPE`). Objects are read and embedded
    :data:`ENCODE_CHUNK` at a time, the next chunk read by a background thread while this one
    encodes; memory is the result (``N x (2E x 4 + V x E x 2)`` bytes) plus two chunks of samples.

    Args:
        model: a :class:`~clip_gs.model.CLIPGS`.
        root: dataset root written by ``clip-gs prepare``.
        split: ``train``, ``val`` or ``test``.
        batch_size: objects per forward pass.
        seed: resampling seed.
        precision: ``"auto"``, ``"bf16"`` or ``"fp32"`` (``CLIPGS.fused``).
        progress: progress bar over objects (default: more than one chunk).

    Raises:
        DatasetError: see :func:`open_split`; stored embeddings of another width than the model's.
        CorruptSampleError: a damaged record (names the chunk and index).
    """
    manifest, dataset = open_split(root, split, storage_options)
    if manifest.embed_dim != model.config.embed_dim:
        raise DatasetError(
            f"{root}: teacher {manifest.teacher!r} embeds in {manifest.embed_dim} dimensions, the model in "
            f"{model.config.embed_dim}"
        )
    from concurrent.futures import ThreadPoolExecutor

    fused = model.fused(precision)
    n, e = len(dataset), manifest.embed_dim
    ids, labels, captions, ups = [], [], [], []
    shapes = torch.empty(n, e)
    texts = torch.zeros(n, e)
    images = torch.zeros(n, 0, e, dtype=VIEW_DTYPE)  # widened to the most views seen (zero padding)
    image_mask = torch.zeros(n, 0, dtype=torch.bool)
    bar = None
    if progress if progress is not None else n > ENCODE_CHUNK:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"embed {split}", unit="obj")

    def read(start: int) -> list:
        return [dataset[i] for i in range(start, min(n, start + ENCODE_CHUNK))]

    try:
        with ThreadPoolExecutor(max_workers=1) as reader:  # one reader thread: the next chunk is read while this one encodes
            pending = reader.submit(read, 0) if n else None
            for start in range(0, n, ENCODE_CHUNK):
                samples = pending.result()
                pending = reader.submit(read, start + ENCODE_CHUNK) if start + ENCODE_CHUNK < n else None
                clouds = [s.cloud.replace(source=s.id) for s in samples]
                stop = start + len(samples)
                shapes[start:stop] = fused.encode(clouds, batch_size=batch_size, seed=seed, progress=False).reshape(len(samples), -1)
                for i, s in enumerate(samples, start):
                    ids.append(s.id)
                    labels.append(s.label)
                    captions.append(s.captions[0] if s.captions else None)
                    if s.captions:
                        texts[i] = s.text_embeddings[0]
                    v = s.image_embeddings.shape[0]
                    if v > images.shape[1]:
                        images = torch.cat([images, images.new_zeros(n, v - images.shape[1], e)], dim=1)
                        image_mask = torch.cat([image_mask, image_mask.new_zeros(n, v - image_mask.shape[1])], dim=1)
                    images[i, :v] = s.image_embeddings.to(VIEW_DTYPE)
                    image_mask[i, :v] = True
                    ups.append(camera_up_axis(s.viewmats[0]) if len(s.viewmats) else "+y")
                if bar is not None:
                    bar.update(len(samples))
    finally:
        if bar is not None:
            bar.close()
    return SplitEmbeddings(
        str(root), split, ids, labels, captions, shapes, texts,
        torch.tensor([c is not None for c in captions], dtype=torch.bool), images, image_mask, ups,
    )  # fmt: skip


# ---------------------------------------------------------------------------- protocols
@dataclass
class Evaluation:
    """What :func:`evaluate` computed (the report plus what the pictures need).

    Attributes:
        report: the JSON report (:func:`build_report`).
        embeddings: the embedded split.
        zeroshot: the zero-shot result (None when not run).
        fewshot: the few-shot results.
        failures: ``{task: "ErrorType: message"}`` of protocols that could not run on this split.
    """

    report: dict
    embeddings: SplitEmbeddings
    zeroshot: ZeroShotResult | None = None
    fewshot: list[FewShotResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def zero_shot_classes(
    root: str | os.PathLike,
    label_set: str | os.PathLike | Sequence[str] | None = None,
    teacher=None,
    dataset_teacher: str | None = None,
    storage_options: dict | None = None,
    protocol: ZeroShotProtocol | None = None,
) -> tuple[list[str], Tensor, str]:
    """Class names, class embeddings ``[C, E]`` and a description of where they came from.

    ``protocol`` with its own classes (``uni3d``, or ``clip-gs`` with a benchmark's list): those,
    encoded with its templates and rule (:func:`~clip_gs.evaluation.protocols.protocol_weights`).
    Otherwise ``label_set`` None: the dataset's stored prompt-ensemble embeddings
    (``label_embeddings.bin``, described as ``"dataset"``); else a label-set name, file or list of
    names (:func:`~clip_gs.teachers.load_label_set`), encoded with :data:`~clip_gs.teachers.TEMPLATES`.
    Encoding is by ``teacher`` (a :class:`~clip_gs.teachers.Teacher` or spec; None rebuilds
    ``dataset_teacher`` with :func:`teacher_spec_for`), which must be the dataset's teacher.
    A label-embedding file (``label_set`` ending in ``.safetensors``, or a ``protocol`` carrying
    one) is used instead of encoding: no teacher is loaded, and the file's teacher must be the
    dataset's (or, without one, ``teacher``'s).

    Raises:
        DatasetError: unreadable label embeddings. TeacherMismatchError: another teacher.
        ConfigError: an invalid label set, a teacher that cannot be rebuilt, a label-embedding file
            made with other prompts than the protocol's.
    """
    from clip_gs.data.shards import read_label_embeddings
    from clip_gs.evaluation.protocols import protocol_weights, zero_shot_protocol

    if protocol is None or protocol.class_names is None:
        if label_set is None:
            names, weights, meta = read_label_embeddings(str(root), storage_options)
            if dataset_teacher is not None and meta.get("teacher") not in (None, dataset_teacher):
                raise DatasetError(f"{root}: label embeddings made by {meta.get('teacher')!r}, the shards by {dataset_teacher!r}")
            return names, weights.float(), "dataset"
        protocol = zero_shot_protocol("clip-gs", label_set=label_set)
        where = str(label_set) if isinstance(label_set, (str, os.PathLike)) else f"labels:{','.join(protocol.class_names)}"
    else:
        where = protocol.source
    from clip_gs.teachers import Teacher, check_same_teacher, load_teacher
    from clip_gs.teachers.factory import teacher_spec_for

    if protocol.label_embeddings is not None:  # a label-embedding file: checked, nothing encoded
        expected = dataset_teacher if dataset_teacher is not None else teacher if isinstance(teacher, Teacher) else None
        if expected is None:
            raise ConfigError(f"{protocol.label_embeddings.where}: no dataset or model teacher to check it against")
        what = f"the dataset {root}" if dataset_teacher is not None else "the given teacher"
        protocol.label_embeddings.check_teacher(expected, what)
        return list(protocol.class_names), protocol_weights(protocol, expected), where
    if teacher is None:
        if dataset_teacher is None:
            raise ConfigError("a label set needs a teacher: pass one (or a dataset whose manifest names its teacher)")
        teacher = teacher_spec_for(dataset_teacher)
    teacher = load_teacher(teacher)
    if dataset_teacher is not None:
        check_same_teacher(teacher, dataset_teacher, what=f"label-set teacher and the dataset {root}")
    return list(protocol.class_names), protocol_weights(protocol, teacher), where


def evaluate(
    model,
    root: str | os.PathLike,
    split: str = "test",
    tasks: Sequence[str] = TASKS,
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
    storage_options: dict | None = None,
    zeroshot_protocol: ZeroShotProtocol | None = None,
    fewshot_protocol: str = "standard",
    support_split: str = "train",
    runs: int = STANDARD_RUNS,
    episodes_file: str | os.PathLike | None = None,
    image_queries: str = DEFAULT_IMAGE_QUERIES,
    image_gallery: str = DEFAULT_IMAGE_GALLERY,
) -> Evaluation:
    """Run the protocols for ``model`` on one split of a prepared dataset.

    Zero-shot and few-shot use the labelled objects; retrieval uses every object (text directions:
    those with a caption). A protocol that cannot run on this split (e.g. too few objects per class
    for a few-shot setting) is recorded in ``failures`` (and in the report's ``"failures"``) and the
    others go on.

    Args:
        model: a :class:`~clip_gs.model.CLIPGS`.
        root, split: the prepared dataset and the split.
        tasks: a subset of :data:`TASKS`.
        label_set, teacher, zeroshot_protocol: zero-shot classes and prompts (:func:`zero_shot_classes`).
        fewshot_protocol: ``"standard"`` (support from ``support_split``, ``runs`` seeded runs) or
            ``"episodes"`` (:func:`~clip_gs.evaluation.fewshot.run_few_shot`).
        protocols: few-shot ``(ways, shots)`` settings (None: 10-way 10-shot standard, 5-way 5-shot episodes;
            with an existing ``episodes_file``, the file's).
        episodes, queries_per_class, l2: few-shot settings (queries None: 20 standard, 15 episodes).
        episodes_file: the few-shot draws' file (:mod:`~clip_gs.evaluation.episodes`): read and scored
            when it exists (so two models see the same objects), else written with this run's draws.
        image_queries, image_gallery: the image retrieval definitions (:func:`~clip_gs.evaluation.metrics.retrieval`;
            recorded in the report beside each recall).
        seed: seed of the 3DGS resampling, of the few-shot draws and of the one-view image draw.
        batch_size, precision: embedding (:func:`embed_split`).
        model_name: what the report calls the model (its folder or repo id).
        model_teacher_identity: the model's teacher (``teacher.json``); checked against the dataset's.

    Raises:
        ConfigError: unknown tasks, an episodes file of another protocol or other settings.
        TeacherMismatchError: a model trained against another teacher.
        DatasetError: an unreadable dataset (see :func:`embed_split`).
        EpisodesFileError: a malformed episodes file, or one naming objects that are not in the split.
    """
    from clip_gs.data.shards import read_manifest
    from clip_gs.teachers import check_same_teacher

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise ConfigError(f"unknown evaluation tasks {unknown or list(tasks)}; choose from {list(TASKS)}")
    manifest = read_manifest(str(root), storage_options)
    if model_teacher_identity is not None:
        check_same_teacher(model_teacher_identity, manifest.teacher, what=f"model {model_name or ''} and dataset {root}")
    data = embed_split(model, root, split, batch_size, seed, precision, progress, storage_options)
    result = Evaluation(report={}, embeddings=data)
    labelled = [i for i, label in enumerate(data.labels) if label is not None]
    label_names = [data.labels[i] for i in labelled]
    tasks_out: dict = {}

    def attempt(task: str, run) -> None:
        try:
            run()
        except EpisodesFileError:
            raise  # the user's file does not fit this split: an error, not a protocol the split cannot run
        except DatasetError as exc:  # this split cannot support the protocol: report it, go on
            result.failures[task] = f"{type(exc).__name__}: {exc}"

    if "zeroshot" in tasks:

        def run_zeroshot() -> None:
            if not labelled:
                raise DatasetError(f"{root}/{split}: no labelled objects for zero-shot classification")
            names, weights, where = zero_shot_classes(root, label_set, teacher, manifest.teacher, storage_options,
                                                      zeroshot_protocol)  # fmt: skip
            as_class = match_labels(label_names, names, f"{root}/{split}") if where != "dataset" else {}
            zs = zero_shot(data.shape[labelled], [as_class.get(n, n) for n in label_names], names, weights, ZEROSHOT_K)
            result.zeroshot = zs
            tasks_out["zeroshot"] = {
                **{f"top{k}": zs.topk[k] for k in ZEROSHOT_K}, "per_class": zs.per_class, "label_set": where,
                "num_classes": len(names), "num_samples": zs.num_samples,
                "protocol": zeroshot_protocol.name if zeroshot_protocol is not None else "clip-gs",
            }  # fmt: skip

        attempt("zeroshot", run_zeroshot)
    if "fewshot" in tasks:

        def run_fewshot() -> None:
            draws = load_draws(episodes_file, fewshot_protocol, protocols) if episodes_file is not None else None
            support = None
            if fewshot_protocol == "standard":
                if support_split == split or manifest.counts.get(support_split, 0) <= 0:
                    why = ("is the evaluated split: support and queries would overlap" if support_split == split else
                           f"has no objects (the manifest lists {manifest.counts})")  # fmt: skip
                    raise DatasetError(f"{root}: the standard few-shot protocol takes its support from the "
                                       f"{support_split!r} split, which {why}; a set without a train split (such as "
                                       f"Objaverse-LVIS) runs --fewshot-protocol episodes, which draws support and "
                                       f"queries, disjoint, from the evaluated split")  # fmt: skip
                support = embed_split(model, root, support_split, batch_size, seed, precision, progress, storage_options)
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

        attempt("fewshot", run_fewshot)
    if "retrieval" in tasks:

        def run_retrieval() -> None:
            recalls = retrieval(data.shape, data.text, data.images, data.text_mask, data.image_mask, RECALL_K,
                                image_queries=image_queries, image_gallery=image_gallery, view_seed=seed)  # fmt: skip
            definitions = retrieval_definitions(image_queries, image_gallery, seed)
            tasks_out["retrieval"] = {d: r | {"definition": definitions[d]} for d, r in recalls.items()}

        attempt("retrieval", run_retrieval)
    result.report = build_report(model_name, str(root), split, manifest.teacher, len(data), tasks_out, result.failures)
    return result


def build_report(
    model: str, data: str, split: str, teacher: str, num_objects: int, tasks: dict, failures: dict | None = None
) -> dict:
    """The evaluation report (JSON-ready)::

        {"model": str, "data": str, "split": str, "teacher": str, "num_objects": int,
         "tasks": {"zeroshot": {"top1", "top3", "top5", "per_class": {name: acc}, "label_set": str,
                                "num_classes": int, "num_samples": int},
                   "fewshot": {"<ways>-way-<shots>-shot": {"mean", "std", "episodes": int, "protocol", "queries_per_class",
                                                           "draws_sha256", ["episodes_file", "episodes_file_use"]}},
                   "retrieval": {"text_to_3d" | "3d_to_text" | "image_to_3d" | "3d_to_image":
                                 {"r1", "r5", "r10", "definition": {"queries", "gallery", "hit"}}}},
         "created": ISO 8601 UTC time, "clip_gs_version": str,
         "failures": {task: message}}   # only when a protocol could not run

    Accuracies and recalls are fractions in [0, 1]; a task that was not run (or failed) is absent.
    """
    import clip_gs

    report = {
        "model": model, "data": data, "split": split, "teacher": teacher, "num_objects": int(num_objects),
        "tasks": tasks, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "clip_gs_version": clip_gs.__version__,
    }  # fmt: skip
    if failures:
        report["failures"] = dict(failures)
    return report


# ---------------------------------------------------------------------------- outputs
def retrieval_rows(
    evaluation: Evaluation, queries: int = 4, k: int = 5, seed: int = 0, size: int = 128,
    storage_options: dict | None = None,
):  # fmt: skip
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
        raise DatasetError(f"{data.root}/{data.split}: no captioned objects to query")
    order = torch.randperm(len(captioned), generator=torch.Generator().manual_seed(seed)).tolist()
    distinct, seen = [], set()  # prefer different captions; repeat captions only when there are too few
    for i in order:
        if data.captions[int(captioned[i])] not in seen:
            seen.add(data.captions[int(captioned[i])])
            distinct.append(int(captioned[i]))
    rest = [int(captioned[i]) for i in order if int(captioned[i]) not in distinct]
    chosen = sorted((distinct + rest)[:queries])
    _, dataset = open_split(data.root, data.split, storage_options)
    sims = torch.nn.functional.normalize(data.text[chosen], dim=-1) @ torch.nn.functional.normalize(data.shape, dim=-1).T
    rows, cache = [], {}
    for row, q in enumerate(chosen):
        top = sims[row].topk(min(k, len(data))).indices.tolist()
        rank = int(positive_ranks(sims[row : row + 1], (torch.arange(len(data)) == q)[None])[0])
        items = []
        for j in top:
            if j not in cache:
                cache[j] = contact_sheet(render_view(dataset[j].cloud, size, data.ups[j])[None], padding=0)
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
                  grid_size: int = 128, seed: int = 0, storage_options: dict | None = None) -> dict[str, Path]:  # fmt: skip
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
        title = f"zero-shot confusion, {evaluation.embeddings.split} split: top-1 {zs.topk[1]:.3f} ({zs.num_samples} objects)"
        written["confusion"] = write_confusion(zs, out, title)
    if "retrieval" in evaluation.report.get("tasks", {}):
        rows = retrieval_rows(evaluation, grid_queries, grid_k, seed, grid_size, storage_options)
        written["retrieval"] = out / RETRIEVAL_NAME
        draw_retrieval_grid(rows, title="text -> 3D retrieval (green: the caption's own object)").save(written["retrieval"])
    written["report"] = out / REPORT_NAME
    written["report"].write_text(json.dumps(evaluation.report, indent=2) + "\n")
    return written


__all__ = [
    "CONFUSION_NAME",
    "REPORT_NAME",
    "RETRIEVAL_NAME",
    "TASKS",
    "Evaluation",
    "SplitEmbeddings",
    "build_report",
    "camera_up_axis",
    "embed_split",
    "evaluate",
    "open_split",
    "retrieval_rows",
    "write_confusion",
    "write_outputs",
    "zero_shot_classes",
]
