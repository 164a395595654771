"""``clip-gs eval --benchmark NAME --root DIR``: the protocols on a public benchmark read in its download layout.

The objects come from :mod:`clip_gs.evaluation.benchmarks` (meshes converted to Gaussians and
cached, 3DGS files read as they are), are embedded by the model's fused inference path, and are
scored with the same functions as a prepared split: zero-shot (:func:`~clip_gs.evaluation.metrics.zero_shot`
under a :mod:`zero-shot protocol <clip_gs.evaluation.protocols>`, the classes encoded by the
model's teacher) and few-shot (:func:`~clip_gs.evaluation.fewshot.run_few_shot`, support from the
benchmark's train split). A benchmark layout has no captions and no rendered views, so retrieval
needs a prepared split (``--data``). :func:`format_paper_rows` prints the result as rows of the
paper's tables.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import ConfigError, DatasetError
from clip_gs.evaluation.episodes import load_draws, write_episodes
from clip_gs.evaluation.fewshot import DEFAULT_L2, STANDARD_RUNS, FewShotResult, run_few_shot
from clip_gs.evaluation.metrics import ZEROSHOT_K, ZeroShotResult, zero_shot
from clip_gs.evaluation.protocols import ZeroShotProtocol, match_labels, protocol_weights, zero_shot_protocol
from clip_gs.gaussians.assets import MESH_GAUSSIANS

BENCHMARK_TASKS = ("zeroshot", "fewshot")
"""What a benchmark layout supports (no captions, no views: no retrieval)."""

ENCODE_CHUNK = 256
"""Objects loaded and embedded per step (bounds memory)."""


@dataclass
class BenchmarkEvaluation:
    """What :func:`evaluate_benchmark` computed: the report (the shape of :func:`~clip_gs.evaluation.run.build_report`
    plus ``"benchmark"``), the zero-shot and few-shot results, and the protocols that could not run."""

    report: dict
    zeroshot: ZeroShotResult | None = None
    fewshot: list[FewShotResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def embed_items(model, items, mesh_gaussians: int, seed: int, cache_dir, batch_size: int, precision: str,
                progress: bool | None, up: str = "auto", conversion=None, benchmark: str | None = None) -> Tensor:  # fmt: skip
    """``[len(items), E]`` unit embeddings of benchmark items (loaded, converted and cached by
    :func:`~clip_gs.evaluation.benchmarks.load_item`), :data:`ENCODE_CHUNK` at a time."""
    import warnings

    from clip_gs.evaluation.benchmarks import MeshConversion, load_item
    from clip_gs.gaussians.mesh import NeutralGreyWarning

    fused = model.fused(precision)
    parts, grey = [], []
    bar = None
    if progress if progress is not None else len(items) > ENCODE_CHUNK:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="embed benchmark", unit="obj")
    try:
        for start in range(0, len(items), ENCODE_CHUNK):
            chunk = items[start : start + ENCODE_CHUNK]
            clouds = []
            for item in chunk:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", NeutralGreyWarning)
                    cloud = load_item(item, mesh_gaussians, seed, cache_dir, up, conversion or MeshConversion(), benchmark)
                    clouds.append(cloud.replace(source=item.id))
                for w in caught:  # ModelNet's meshes have no colour by nature: one summary, not a warning per file
                    if issubclass(w.category, NeutralGreyWarning):
                        grey.append(item.path.name)
                    else:
                        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            parts.append(fused.encode(clouds, batch_size=batch_size, seed=seed, progress=False).reshape(len(chunk), -1))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if grey:
        warnings.warn(f"{len(set(grey))} of {len(items)} meshes have no colour (no texture, vertex colours or material) "
                      f"and were given neutral grey, e.g. {grey[0]}", NeutralGreyWarning, stacklevel=2)  # fmt: skip
    return torch.cat(parts).float() if parts else torch.zeros(0, model.config.embed_dim)


def evaluate_benchmark(
    model,
    name: str,
    root: str | os.PathLike,
    tasks: Sequence[str] = BENCHMARK_TASKS,
    zeroshot_protocol: ZeroShotProtocol | None = None,
    teacher=None,
    query_split: str = "test",
    support_split: str = "train",
    mesh_gaussians: int = MESH_GAUSSIANS,
    up: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    conversion=None,
    fewshot_protocol: str = "standard",
    protocols: Sequence[tuple[int, int]] | None = None,
    runs: int = STANDARD_RUNS,
    episodes: int = 100,
    queries_per_class: int | None = None,
    l2: float = DEFAULT_L2,
    seed: int = 0,
    batch_size: int = 8,
    precision: str = "auto",
    model_name: str = "",
    model_teacher_identity: str | None = None,
    progress: bool | None = None,
    episodes_file: str | os.PathLike | None = None,
    items: Sequence | None = None,
) -> BenchmarkEvaluation:
    """Zero-shot and few-shot for ``model`` on the benchmark ``name`` read from ``root``.

    Args:
        model: a :class:`~clip_gs.model.CLIPGS`.
        name, root: the benchmark (:data:`~clip_gs.evaluation.benchmarks.BENCHMARKS`) and its folder.
        tasks: a subset of :data:`BENCHMARK_TASKS`.
        zeroshot_protocol: classes and prompts (default: ``clip-gs`` with the benchmark's list); one
            carrying a label-embedding file (:func:`~clip_gs.evaluation.protocols.with_label_embeddings`)
            needs no teacher, its file is checked against ``teacher`` or ``model_teacher_identity``.
        teacher: the :class:`~clip_gs.teachers.Teacher` that encodes the classes: the model's, as
            :meth:`~clip_gs.model.LoadedModel.teacher` loads and checks it (needed for zero-shot
            without a label-embedding file).
        model_teacher_identity: the model's teacher identity, for the report (default: ``teacher``'s).
        query_split: the split scored (a test-only set's objects have no split and are all scored).
        support_split: the standard few-shot protocol's support.
        mesh_gaussians, up, cache_dir: reading the files (surface samples per mesh, seeded with ``seed``; the
            up axis of files that declare none) and the cache of converted meshes
            (:func:`~clip_gs.evaluation.benchmarks.load_item`).
        conversion: how meshes become Gaussians (:class:`~clip_gs.evaluation.benchmarks.MeshConversion`:
            surface samples by default, or fitted 3DGS made as ``prepare --gaussians fitted`` makes them).
        fewshot_protocol, protocols, runs, episodes, queries_per_class, l2: few-shot
            (:func:`~clip_gs.evaluation.fewshot.run_few_shot`). A set without a train split (Objaverse)
            runs the ``episodes`` protocol; ``standard`` there is recorded as a failure that says so.
        items: the benchmark's objects as :func:`~clip_gs.evaluation.benchmarks.discover` found them in
            ``root`` (a caller that listed them already); None lists them here.
        episodes_file: the few-shot draws' file (:mod:`~clip_gs.evaluation.episodes`, object ids are
            :attr:`~clip_gs.evaluation.benchmarks.BenchmarkItem.id`): read and scored when it exists,
            else written with this run's draws.
        seed, batch_size, precision, progress: conversion and embedding.

    Raises:
        ConfigError: unknown tasks or benchmark, no teacher for zero-shot.
        TeacherMismatchError: a label-embedding file made by another teacher than the model's.
        DatasetError: a folder not in the benchmark's layout (named by the reader), labels that
            match none of the protocol's classes.
        EpisodesFileError: a malformed episodes file, or one naming objects that are not in the benchmark.
    """
    from clip_gs.evaluation.benchmarks import discover
    from clip_gs.evaluation.run import build_report

    unknown = sorted(set(tasks) - set(BENCHMARK_TASKS))
    if unknown or not tasks:
        raise ConfigError(f"a benchmark supports the tasks {list(BENCHMARK_TASKS)} (retrieval needs captions and views: "
                          f"prepare the objects with clip-gs prepare and use --data), got {list(tasks)}")  # fmt: skip
    items = discover(name, root) if items is None else list(items)
    queries = [it for it in items if it.split in (query_split, None)]
    if not queries:
        raise DatasetError(f"{root}: benchmark {name!r} has no {query_split!r} objects")
    result = BenchmarkEvaluation(report={})
    tasks_out: dict = {}
    query_x = embed_items(model, queries, mesh_gaussians, seed, cache_dir, batch_size, precision, progress, up,
                          conversion, name)  # fmt: skip
    query_labels = [it.label for it in queries]
    teacher_identity = None
    if "zeroshot" in tasks:
        protocol = zeroshot_protocol or zero_shot_protocol("clip-gs", benchmark=name)
        # a label-embedding file needs no teacher loaded, only the model's teacher identity to check it against
        expected = teacher if teacher is not None or protocol.label_embeddings is None else model_teacher_identity
        if expected is None:
            raise ConfigError("zero-shot on a benchmark needs the model's teacher (its teacher.json) or --teacher")
        teacher_identity = str(teacher.identity) if teacher is not None else str(model_teacher_identity)
        names = list(protocol.class_names) if protocol.class_names is not None else sorted(set(query_labels))
        weights = protocol_weights(protocol, expected, names)
        as_class = match_labels(query_labels, names, f"{root} ({name})")
        zs = zero_shot(query_x, [as_class[label] for label in query_labels], names, weights, ZEROSHOT_K)
        result.zeroshot = zs
        tasks_out["zeroshot"] = {
            **{f"top{k}": zs.topk[k] for k in ZEROSHOT_K}, "per_class": zs.per_class, "label_set": protocol.source,
            "num_classes": len(names), "num_samples": zs.num_samples, "protocol": protocol.name,
        }  # fmt: skip
    if "fewshot" in tasks:
        draws = load_draws(episodes_file, fewshot_protocol, protocols) if episodes_file is not None else None
        support = [it for it in items if it.split == support_split] if fewshot_protocol == "standard" else []
        if fewshot_protocol == "standard" and not support:
            result.failures["fewshot"] = (f"DatasetError: {root}: the standard few-shot protocol cannot run on benchmark "
                                          f"{name!r}: it has no {support_split!r} split for the support; run "
                                          "--fewshot-protocol episodes, which draws support and queries, disjoint, from "
                                          "the evaluated set (the paper's Objaverse-GS protocol)")  # fmt: skip
        else:
            support_x = None if not support else embed_items(model, support, mesh_gaussians, seed, cache_dir,
                                                              batch_size, precision, progress, up, conversion,
                                                              name)  # fmt: skip
            run = run_few_shot(fewshot_protocol, protocols, query_x, query_labels, support_x,
                               [it.label for it in support] if support else None, runs, episodes, queries_per_class,
                               seed, l2, query_ids=[it.id for it in queries],
                               support_ids=[it.id for it in support] if support else None, draws=draws,
                               support_split=support_split, where=str(episodes_file))  # fmt: skip
            result.fewshot, result.failures = run.results, result.failures | run.failures
            if episodes_file is not None and draws is None and run.results:
                write_episodes(episodes_file, run.draws)
            if run.results:
                tasks_out["fewshot"] = {k: v | ({"support_split": support_split} if support else {})
                                        for k, v in run.report(episodes_file, draws is not None).items()}  # fmt: skip
    result.report = build_report(model_name, str(root), query_split, teacher_identity or str(model_teacher_identity), len(queries),
                                 tasks_out, result.failures) | {"benchmark": name}  # fmt: skip
    return result


def format_paper_rows(report: dict) -> str:
    """The result as rows of the paper's tables (Markdown): zero-shot top-1/3/5 (Table 1's form) and
    few-shot mean +- std per setting (Table 2's), percentages with one decimal."""
    model, bench = report["model"] or "model", report.get("benchmark", report["data"])
    lines = []
    tasks = report["tasks"]
    if "zeroshot" in tasks:
        z = tasks["zeroshot"]
        lines += ["| Method | Benchmark | Protocol | Top-1 | Top-3 | Top-5 |", "|---|---|---|---|---|---|",
                  f"| {model} | {bench} ({z['num_samples']} objects, {z['num_classes']} classes) | {z.get('protocol', 'clip-gs')} "
                  f"| {100 * z['top1']:.1f} | {100 * z['top3']:.1f} | {100 * z['top5']:.1f} |"]  # fmt: skip
    if "fewshot" in tasks:
        lines += ["", "| Method | Benchmark | Setting | Accuracy |", "|---|---|---|---|"]
        for setting, r in tasks["fewshot"].items():
            ways, shots = setting.split("-way-")[0], setting.split("-way-")[1].split("-")[0]
            how = f"{r.get('protocol', 'episodes')}, {r['episodes']} {'runs' if r.get('protocol') == 'standard' else 'episodes'}"
            lines.append(f"| {model} | {bench} | {ways}-way {shots}-shot ({how}) | {100 * r['mean']:.1f} ± {100 * r['std']:.1f} |")
    return "\n".join(lines)


def write_benchmark_report(evaluation: BenchmarkEvaluation, out: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json`` (and ``confusion.png`` when zero-shot ran) into ``out``; returns what was written."""
    import json

    from clip_gs.evaluation.run import REPORT_NAME, write_confusion

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    if evaluation.zeroshot is not None:
        zs = evaluation.zeroshot
        title = f"zero-shot, {evaluation.report.get('benchmark')}: top-1 {zs.topk[1]:.3f} ({zs.num_samples} objects)"
        written["confusion"] = write_confusion(zs, out, title)
    written["report"] = out / REPORT_NAME
    written["report"].write_text(json.dumps(evaluation.report, indent=2) + "\n")
    return written


__all__ = ["BENCHMARK_TASKS", "BenchmarkEvaluation", "embed_items", "evaluate_benchmark", "format_paper_rows",
           "write_benchmark_report"]  # fmt: skip
