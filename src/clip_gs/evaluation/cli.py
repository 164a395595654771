"""``clip-gs eval``: the paper's protocols for a model on a prepared split (registered by :func:`add_eval_parser`).

    clip-gs eval --model DIR_OR_REPO --data SHARDS_DIR [--split test] [--task zeroshot|fewshot|retrieval|all]
                 [--label-set FILE | --labels a,b,c] [--teacher SPEC] [--ways 5 [10 ...]] [--shots 5 [...]]
                 [--episodes 100] [--queries 15] [--seed 0] [--out DIR]

Prints a table, writes ``report.json``, ``confusion.png`` and ``retrieval.png`` into ``--out``
(default ``<model folder>/eval`` for a local folder, else ``./eval``) and prints the report's
path as the last line. Exit status 0 when every protocol ran, 3 when some could not run on the
split (listed in the table and in the report's ``"failures"``), 2 on an error.

Importing this module is cheap (argparse only); the work happens in :mod:`clip_gs.evaluation.run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TASK_CHOICES = ("zeroshot", "fewshot", "retrieval", "all")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``eval`` to the ``clip-gs`` subparsers (sets ``func``)."""
    p = subparsers.add_parser("eval", help="zero-shot, few-shot and retrieval of a model on a prepared split")
    p.add_argument("--model", required=True, help="model folder (save_pretrained / clip-gs fit export) or Hub repo id")
    p.add_argument("--data", required=True, help="dataset root written by clip-gs prepare")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--task", default="all", choices=TASK_CHOICES, help="protocol to run (default all)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--label-set", help="zero-shot classes from a file (.json list or one name per line)")
    labels.add_argument("--labels", help="zero-shot classes, comma-separated (default: the dataset's label embeddings)")
    p.add_argument("--teacher", help="teacher spec that encodes --label-set/--labels (default: the dataset's teacher)")
    p.add_argument("--ways", type=int, nargs="+", default=[5], help="few-shot ways, one or more (default 5)")
    p.add_argument("--shots", type=int, nargs="+", default=[5], help="few-shot shots, one or more (default 5)")
    p.add_argument("--episodes", type=int, default=100, help="few-shot episodes per protocol")
    p.add_argument("--queries", type=int, default=15, help="few-shot query samples per class and episode")
    p.add_argument("--seed", type=int, default=0, help="seed of the 3DGS resampling, episodes and grid queries")
    p.add_argument("--batch-size", type=int, default=8, help="objects per forward pass")
    p.add_argument("--device", help="where the model runs (default: cuda when available, else cpu)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="fused inference precision")
    p.add_argument("--grid-queries", type=int, default=4, help="text queries (rows) in retrieval.png")
    p.add_argument("--grid-k", type=int, default=5, help="retrieved objects per row in retrieval.png")
    p.add_argument("--grid-size", type=int, default=128, help="thumbnail size in pixels in retrieval.png")
    p.add_argument("--out", help="output folder (default <model folder>/eval, or ./eval for a Hub repo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_eval)
    return p


def default_out_dir(model: str) -> Path:
    """``<model>/eval`` for a local model folder, else ``./eval``."""
    from clip_gs.model.folder import EVAL_DIR

    path = Path(model).expanduser()
    return path / EVAL_DIR if path.is_dir() else Path(EVAL_DIR)


def format_table(report: dict) -> str:
    """The human-readable summary ``clip-gs eval`` prints."""
    lines = [f"model:    {report['model']}", f"data:     {report['data']} (split {report['split']}, "
             f"{report['num_objects']} objects)", f"teacher:  {report['teacher']}"]  # fmt: skip
    tasks = report["tasks"]
    if "zeroshot" in tasks:
        z = tasks["zeroshot"]
        lines += ["", f"zero-shot ({z['num_classes']} classes from {z['label_set']}, {z['num_samples']} labelled objects)",
                  f"  top-1 {z['top1']:.4f}   top-3 {z['top3']:.4f}   top-5 {z['top5']:.4f}"]  # fmt: skip
        width = max(len(n) for n in z["per_class"]) if z["per_class"] else 0
        lines += [f"  {name:<{width}}  {acc:.4f}" for name, acc in z["per_class"].items()]
    if "fewshot" in tasks:
        lines += ["", "few-shot (logistic-regression probe)"]
        lines += [f"  {name:<18} {r['mean']:.4f} +- {r['std']:.4f}  ({r['episodes']} episodes)"
                  for name, r in tasks["fewshot"].items()]  # fmt: skip
    if "retrieval" in tasks:
        ks = list(next(iter(tasks["retrieval"].values())))
        lines += ["", "retrieval      " + "".join(f"{k.upper():>8}" for k in ks)]
        lines += [f"  {d:<13}" + "".join(f"{r[k]:>8.4f}" for k in ks) for d, r in tasks["retrieval"].items()]
    for task, message in report.get("failures", {}).items():
        lines.append(f"not run: {task}: {message}")
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs eval``."""
    import sys

    from clip_gs.errors import EXIT_SOME_FAILED, WeightsUnavailableError
    from clip_gs.evaluation.run import TASKS, evaluate, model_teacher, write_outputs
    from clip_gs.model import CLIPGS
    from clip_gs.model.precision import resolve_device

    device = resolve_device(args.device)
    model = CLIPGS.from_pretrained(args.model, map_location=device)
    try:
        teacher_identity = model_teacher(args.model)
    except WeightsUnavailableError as exc:  # a cached Hub model without its teacher.json offline: say so, go on
        teacher_identity = None
        print(f"clip-gs eval: note: the model's teacher is unknown, not checked against the dataset's ({exc})",
              file=sys.stderr)  # fmt: skip
    label_set = args.label_set if args.label_set else ([n for n in args.labels.split(",")] if args.labels else None)
    tasks = TASKS if args.task == "all" else (args.task,)
    protocols = [(w, s) for w in args.ways for s in args.shots]
    evaluation = evaluate(
        model, args.data, args.split, tasks, label_set=label_set, teacher=args.teacher, protocols=protocols,
        episodes=args.episodes, queries_per_class=args.queries, seed=args.seed, batch_size=args.batch_size,
        precision=args.precision, model_name=str(args.model), model_teacher_identity=teacher_identity,
        progress=False if args.quiet else None,
    )  # fmt: skip
    out = Path(args.out) if args.out else default_out_dir(args.model)
    written = write_outputs(evaluation, out, args.grid_queries, args.grid_k, args.grid_size, args.seed)
    print(format_table(evaluation.report))
    for name in ("confusion", "retrieval"):
        if name in written:
            print(f"wrote {written[name]}")
    print(written["report"])
    return EXIT_SOME_FAILED if evaluation.failures else 0


__all__ = ["TASK_CHOICES", "add_eval_parser", "default_out_dir", "format_table", "run_eval"]
