"""``clip-gs eval``: the paper's protocols for a model on a prepared split or a public benchmark (registered by :func:`add_eval_parser`).

    clip-gs eval --model MODEL --data SHARDS_DIR|s3://... [--endpoint-url URL] [--split test]
                 [--task zeroshot|fewshot|retrieval|all] [--image-queries one-view|every-view|mean-view]
                 [--image-gallery one-view|any-view|mean-view]
    clip-gs eval --model MODEL --benchmark modelnet40|modelnet-splats|objaverse-gs|objaverse-lvis --root DIR [--up AXIS]
                 [--zeroshot-protocol clip-gs|uni3d [--uni3d-data DIR]] [--label-set NAME_OR_FILE | --labels a,b,c]
                 [--fewshot-protocol standard|episodes] [--ways 10 [5 ...]] [--shots 10 [...]] [--runs 10]
                 [--episodes 100] [--queries N] [--episodes-file FILE] [--teacher SPEC] [--seed 0] [--out DIR]

Prints a table (for a benchmark, rows in the form of the paper's tables), writes ``report.json``
(and for a prepared split ``confusion.png`` and ``retrieval.png``) into ``--out`` (default
``<model folder>/eval`` for a local folder, else ``./eval``) and prints the report's path as the
last line. Exit status 0 when every protocol ran, 3 when some could not run (listed in the table
and in the report's ``"failures"``), 2 on an error.

Importing this module is cheap (argparse only); the work happens in :mod:`clip_gs.evaluation.run`
over a source of :mod:`clip_gs.evaluation.sources`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TASK_CHOICES = ("zeroshot", "fewshot", "retrieval", "all")

BENCHMARK_PAPER_SETS = {"modelnet40": "modelnet-gs", "modelnet-splats": "modelnet-gs", "objaverse-gs": "objaverse-gs",
                        "objaverse-lvis": "objaverse-gs"}  # fmt: skip
"""Benchmark -> its key in :data:`~clip_gs.evaluation.fewshot.PAPER_PROTOCOLS`: the few-shot settings
``--benchmark`` runs without ``--ways`` / ``--shots`` (ModelNet 10-way 10-shot; Objaverse 5-shot with 5-50 ways)."""


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``clip-gs`` subparsers (sets ``func``)."""
    from clip_gs import cli_flags
    from clip_gs.evaluation.fewshot import FEWSHOT_PROTOCOLS
    from clip_gs.evaluation.protocols import (
        UNI3D_DATA_HELP,
        UNI3D_LABELS_HELP,
        UNI3D_TEMPLATES_HELP,
        UNI3D_TEMPLATES_KEY,
        ZEROSHOT_PROTOCOLS,
    )

    p = subparsers.add_parser("eval", help="zero-shot, few-shot and retrieval of a model on a prepared split or a benchmark")
    cli_flags.add_model_argument(p, required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="dataset root written by clip-gs prepare (a folder or s3://...)")
    source.add_argument("--benchmark", help=("a public benchmark read in its download layout (with --root): "
                                             "modelnet40, modelnet-splats, objaverse-gs, objaverse-lvis"))
    p.add_argument("--root", help="the benchmark's folder, as downloaded (with --benchmark)")
    p.add_argument("--cache", help="where converted benchmark meshes are cached (default <shard cache>/benchmarks)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--task", default="all", choices=TASK_CHOICES, help="protocol to run (default all)")
    p.add_argument("--zeroshot-protocol", default="clip-gs", choices=ZEROSHOT_PROTOCOLS,
                   help="class names and prompts: clip-gs (ours) or uni3d (Uni3D's templates.json / labels.json)")
    p.add_argument("--uni3d-data", help=UNI3D_DATA_HELP)
    p.add_argument("--uni3d-templates", default=UNI3D_TEMPLATES_KEY, help=UNI3D_TEMPLATES_HELP)
    p.add_argument("--uni3d-labels", help=UNI3D_LABELS_HELP)
    from clip_gs.teachers.label_options import LABEL_SET_HELP, add_label_options

    add_label_options(p.add_mutually_exclusive_group(),
                      labels_help="zero-shot classes, comma-separated (default: the dataset's label embeddings)",
                      label_set_help=f"zero-shot classes: {LABEL_SET_HELP}; a label-embedding file must have been made "
                                     "with the protocol's templates (clip-gs labels --templates)")  # fmt: skip
    cli_flags.add_teacher_argument(p)
    p.add_argument("--fewshot-protocol", default="standard", choices=FEWSHOT_PROTOCOLS,
                   help="standard: support from --support-split, queries from the evaluated split, 10 runs "
                        "(Point-BERT / the paper); episodes: both from the evaluated split")  # fmt: skip
    p.add_argument("--support-split", default="train", help="standard few-shot: where the support comes from")
    p.add_argument("--ways", type=int, nargs="+",
                   help="few-shot ways (default: a benchmark's paper settings; else standard 10, episodes 5)")
    p.add_argument("--shots", type=int, nargs="+", help="few-shot shots (default: standard 10; episodes 5)")
    p.add_argument("--runs", type=int, default=10, help="standard few-shot runs (run r seeded with seed + r)")
    p.add_argument("--episodes", type=int, default=100, help="episodes per setting (--fewshot-protocol episodes)")
    p.add_argument("--queries", type=int, help="few-shot queries per class (default: standard 20, episodes 15)")
    p.add_argument("--episodes-file", metavar="FILE",
                   help="few-shot draws (classes, support and query ids per episode): written when FILE is absent, "
                        "read when present, so every model evaluated with it is scored on the same objects; with "
                        "FILE present and no --ways / --shots, its settings run")  # fmt: skip
    from clip_gs.evaluation.metrics import DEFAULT_IMAGE_GALLERY, DEFAULT_IMAGE_QUERIES, IMAGE_GALLERIES, IMAGE_QUERIES

    p.add_argument("--image-queries", default=DEFAULT_IMAGE_QUERIES, choices=IMAGE_QUERIES,
                   help="image->3D queries: one view per object drawn with --seed (default), every view, or each "
                        "object's mean view")  # fmt: skip
    p.add_argument("--image-gallery", default=DEFAULT_IMAGE_GALLERY, choices=IMAGE_GALLERIES,
                   help="3D->image gallery and hit: one drawn view per object (default), every view with any own view "
                        "a hit, or each object's mean view")  # fmt: skip
    cli_flags.add_seed_argument(p)
    cli_flags.add_batch_size_argument(p)
    cli_flags.add_mesh_gaussians_argument(p)  # benchmark meshes
    cli_flags.add_up_argument(p)  # benchmark files
    cli_flags.add_device_argument(p)
    cli_flags.add_precision_argument(p)  # the fused model's: fp16 is refused
    cli_flags.add_endpoint_url_argument(p)  # --data s3://...
    p.add_argument("--grid-queries", type=int, default=4, help="text queries (rows) in retrieval.png")
    p.add_argument("--grid-k", type=int, default=5, help="retrieved objects per row in retrieval.png")
    p.add_argument("--grid-size", type=int, default=128, help="thumbnail size in pixels in retrieval.png")
    p.add_argument("--out", help="output folder (default <model folder>/eval, or ./eval for a Hub repo)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="evaluate under the paper's protocols even when the model trained on some of the objects")
    cli_flags.add_gaussians_arguments(p)
    cli_flags.add_quiet_argument(p)
    p.set_defaults(func=run_eval)
    return p


def default_out_dir(model: str) -> Path:
    """``<model>/eval`` for a local model folder, else ``./eval``."""
    from clip_gs.hub.folder import EVAL_DIR

    path = Path(model).expanduser()
    return path / EVAL_DIR if path.is_dir() else Path(EVAL_DIR)


def format_table(report: dict) -> str:
    """The human-readable summary ``clip-gs eval`` prints."""
    lines = [f"model:    {report['model']}", f"data:     {report['data']} (split {report['split']}, "
             f"{report['num_objects']} objects)", f"teacher:  {report['teacher']}"]  # fmt: skip
    tasks = report["tasks"]
    if "zeroshot" in tasks:
        z = tasks["zeroshot"]
        lines += ["", (f"zero-shot, {z.get('protocol', 'clip-gs')} protocol ({z['num_classes']} classes from "
                       f"{z['label_set']}, {z['num_samples']} labelled objects)"),
                  f"  top-1 {z['top1']:.4f}   top-3 {z['top3']:.4f}   top-5 {z['top5']:.4f}"]  # fmt: skip
        per_class = z["per_class"]
        if len(per_class) <= PER_CLASS_LINES:
            width = max(len(n) for n in per_class) if per_class else 0
            lines += [f"  {name:<{width}}  {acc:.4f}" for name, acc in per_class.items()]
        else:
            lines.append(f"  ({len(per_class)} classes with objects: per-class accuracy in the report)")
    if "fewshot" in tasks:
        lines += ["", "few-shot (logistic-regression probe)"]
        for name, r in tasks["fewshot"].items():
            protocol = r.get("protocol", "episodes")
            how = (f"standard: {r['episodes']} runs, support from {r.get('support_split', 'train')}, "
                   f"{r.get('queries_per_class', '?')} queries per class" if protocol == "standard"
                   else f"episodes: {r['episodes']}")  # fmt: skip
            note = f"; {r['note']}" if r.get("note") else ""
            if r.get("episodes_file"):
                note += f"; draws {r.get('episodes_file_use', 'read')} {'from' if r.get('episodes_file_use') == 'read' else 'to'} {r['episodes_file']}"
            lines.append(f"  {name:<18} {100 * r['mean']:.2f} +- {100 * r['std']:.2f} %  ({how}{note})")
    if "retrieval" in tasks:
        ks = [k for k in next(iter(tasks["retrieval"].values())) if k != "definition"]
        lines += ["", "retrieval      " + "".join(f"{k.upper():>8}" for k in ks)]
        lines += [f"  {d:<13}" + "".join(f"{r[k]:>8.4f}" for k in ks) for d, r in tasks["retrieval"].items()]
        for d, r in tasks["retrieval"].items():  # a recall is never read without what it counts
            if "definition" in r:
                lines.append(f"  {d}: queries {r['definition']['queries']}; gallery {r['definition']['gallery']}; "
                             f"a hit when {r['definition']['hit']}")
    for task, message in report.get("failures", {}).items():
        lines.append(f"not run: {task}: {message}")
    return "\n".join(lines)


PER_CLASS_LINES = 50
"""Above this many classes the table gives no per-class lines (the report has them all)."""


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


def _zeroshot_protocol(args: argparse.Namespace):
    from clip_gs.evaluation.protocols import zero_shot_protocol
    from clip_gs.teachers.label_options import label_source

    label_set = label_source(args)
    if args.zeroshot_protocol == "clip-gs" and args.benchmark is None:
        return None, label_set  # the dataset's stored label embeddings, or the label set with our templates
    protocol = zero_shot_protocol(args.zeroshot_protocol, args.benchmark, args.uni3d_data, args.uni3d_templates,
                                  args.uni3d_labels, label_set)  # fmt: skip
    return protocol, label_set


def _training_overlap(args: argparse.Namespace, model_folder, storage, items) -> dict:
    """The report's ``training_overlap`` (:func:`~clip_gs.evaluation.overlap.training_overlap`) for the
    benchmark's ``items`` or the prepared split: strict under the paper's protocols (a public benchmark, or
    Uni3D's zero-shot protocol)."""
    import sys

    from clip_gs.evaluation.overlap import evaluated_keys, training_overlap

    ids = None if items is None else [item.id for item in items if item.split in (args.split, None)]
    what = f"benchmark {args.benchmark}" if args.benchmark else f"{args.data} ({args.split})"
    strict = args.benchmark is not None or args.zeroshot_protocol == "uni3d"
    overlap = training_overlap(model_folder, evaluated_keys(args.data, args.split, ids, storage), strict,
                               args.allow_overlap, what)  # fmt: skip
    if overlap["overlap"]:
        print(f"clip-gs eval: {overlap['overlap']} of {overlap['evaluated']} objects of {what} were in the model's "
              "training set (recorded in the report)", file=sys.stderr)  # fmt: skip
    return overlap


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs eval``."""
    from clip_gs.cli_flags import storage_options
    from clip_gs.errors import EXIT_SOME_FAILED, ConfigError
    from clip_gs.evaluation.run import evaluate, write_outputs
    from clip_gs.model.loaded import load_model

    if (args.benchmark is None) != (args.root is None):
        raise ConfigError("--benchmark and --root go together (a benchmark read from its download folder)")
    protocol, label_set = _zeroshot_protocol(args)
    loaded = load_model(args.model, teacher=args.teacher, device=args.device)
    model, teacher_identity = loaded.model, loaded.teacher_record or None
    tasks = None if args.task == "all" else (args.task,)  # None: every task the source supports
    settings = [(w, s) for w in args.ways for s in args.shots] if args.ways or args.shots else None
    if settings is not None and not (args.ways and args.shots):
        raise ConfigError("give both --ways and --shots (or neither, for the protocol's default setting)")
    from_file = args.episodes_file is not None and Path(args.episodes_file).exists()
    if settings is None and args.benchmark is not None and not from_file:  # an existing episodes file holds its settings
        from clip_gs.evaluation.fewshot import PAPER_PROTOCOLS

        settings = list(PAPER_PROTOCOLS[BENCHMARK_PAPER_SETS[args.benchmark]])  # the paper's settings for this set
    common = {"fewshot_protocol": args.fewshot_protocol, "protocols": settings, "runs": args.runs,
              "episodes": args.episodes, "queries_per_class": args.queries, "seed": args.seed,
              "batch_size": args.batch_size, "precision": args.precision, "model_name": str(args.model),
              "progress": False if args.quiet else None, "episodes_file": args.episodes_file}  # fmt: skip
    out = Path(args.out) if args.out else default_out_dir(args.model)
    storage = storage_options(args.endpoint_url)
    items = None
    if args.benchmark is not None:  # listed once: the overlap check and the evaluation read the same objects
        from clip_gs.evaluation.benchmarks import discover

        items = discover(args.benchmark, args.root)
    overlap = _training_overlap(args, loaded.teacher_folder, storage, items)  # before any embedding: refused early
    if args.benchmark is not None:
        from clip_gs.evaluation.benchmarks import MeshConversion
        from clip_gs.evaluation.sources import BenchmarkSplit

        source = BenchmarkSplit(args.benchmark, args.root, args.split, items, args.mesh_gaussians, args.seed, args.up,
                                args.cache, MeshConversion(args.gaussians, args.fit_iterations, args.fit_views,
                                                           args.fit_size))  # fmt: skip
        # a label-embedding file stands in for the text tower: the teacher is not loaded, only its identity checked
        files = protocol is not None and protocol.label_embeddings is not None
        if files and teacher_identity is None:
            teacher_identity = loaded.teacher_identity or None
        teacher = loaded.teacher() if "zeroshot" in (tasks or source.tasks) and not files else None
        label_set = None  # the protocol carries a benchmark's label set
    else:
        from clip_gs.evaluation.sources import PreparedSplit

        source = PreparedSplit(args.data, args.split, storage)
        teacher = args.teacher
        label_set = label_set if protocol is None else None
    evaluation = evaluate(
        model, source, tasks, label_set=label_set, teacher=teacher, zeroshot_protocol=protocol,
        support_split=args.support_split, model_teacher_identity=teacher_identity, image_queries=args.image_queries,
        image_gallery=args.image_gallery, **common,
    )  # fmt: skip
    evaluation.report["training_overlap"] = overlap
    written = write_outputs(evaluation, out, args.grid_queries, args.grid_k, args.grid_size, args.seed)
    print(format_table(evaluation.report))
    if args.benchmark is not None:
        print()
        print(format_paper_rows(evaluation.report))
    for name in ("confusion", "retrieval"):
        if name in written:
            print(f"wrote {written[name]}")
    print(written["report"])
    return EXIT_SOME_FAILED if evaluation.failures else 0


__all__ = ["BENCHMARK_PAPER_SETS", "PER_CLASS_LINES", "TASK_CHOICES", "add_eval_parser", "default_out_dir", "format_paper_rows",
           "format_table", "run_eval"]  # fmt: skip
