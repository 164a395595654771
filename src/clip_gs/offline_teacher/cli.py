"""The ``clip-gs teacher`` subcommands (registered by :func:`add_teacher_parser` from ``clip_gs.cli``).

    clip-gs teacher build --seed S --out FILE [--steps N ...]   train the offline teacher from a seed
    clip-gs teacher eval [--teacher SPEC]                       print a teacher's quality numbers

Importing this module is cheap (argparse only); the work happens in :mod:`clip_gs.offline_teacher.build`
and :mod:`clip_gs.offline_teacher.evaluate`.
"""

from __future__ import annotations

import argparse


def add_teacher_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``teacher {build,eval}`` to the ``clip-gs`` subparsers; each sets ``func``."""
    from clip_gs.cli_flags import add_quiet_argument, add_seed_argument

    teacher = subparsers.add_parser("teacher", help="build or evaluate CLIP teachers (the offline synthetic-clip)")
    sub = teacher.add_subparsers(dest="teacher_command", required=True)

    build = sub.add_parser("build", help="train the offline teacher synthetic-clip from a seed (2 CPU cores: about an hour)",
                           description="Train the offline teacher synthetic-clip from --seed, a build seed in 0..99 "
                           "(the shipped file: 0).")  # fmt: skip
    add_seed_argument(build)
    build.add_argument("--out", required=True, help="output .safetensors (a .json build record goes next to it)")
    build.add_argument("--steps", type=int, default=1200, help="optimiser steps")
    build.add_argument("--batch-size", type=int, default=64, help="image-caption pairs per step (main batch)")
    build.add_argument("--group-size", type=int, default=16, help="main batch: groups of objects sharing a colour")
    build.add_argument("--class-groups", type=int, default=4, help="extra one-object-per-class groups per step")
    build.add_argument("--restart-steps", type=int, default=500, help="steps of the warm-restart phase after the first")
    build.add_argument("--restarts", type=int, default=3, help="number of warm-restart cycles")
    build.add_argument(
        "--restart-lr", type=float, default=None, help="peak learning rate of the restart (default 0.3 x --lr)"
    )
    build.add_argument("--gray-prob", type=float, default=0.2, help="probability of a greyscale, colour-free view")
    build.add_argument("--objects-per-class", type=int, default=200, help="training objects per class")
    build.add_argument("--views", type=int, default=4, help="rendered views per object")
    build.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate")
    build.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%% of --steps)")
    build.add_argument("--workers", type=int, default=2, help="rendering processes")
    build.add_argument("--threads", type=int, default=None, help="torch threads for training")
    build.add_argument("--no-cache", action="store_true", help="do not cache the rendered views (views/ under the cache root, $CLIP_GS_CACHE)")
    build.add_argument("--checkpoint-every", type=int, default=0, help="also save intermediate weights")
    add_quiet_argument(build)
    build.set_defaults(func=run_build)

    from clip_gs.offline_teacher.evaluate import add_eval_arguments

    ev = sub.add_parser("eval", help="print zero-shot, retrieval and colour numbers on fresh synthetic objects")
    add_eval_arguments(ev)
    ev.set_defaults(func=_run_eval)
    return teacher


def run_build(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs teacher build``."""
    from clip_gs.offline_teacher.build import build_offline_teacher

    result = build_offline_teacher(
        args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size, per_class=args.objects_per_class,
        views=args.views, lr=args.lr, warmup=args.warmup, workers=args.workers, threads=args.threads,
        cache=False if args.no_cache else None, progress=not args.quiet, checkpoint_every=args.checkpoint_every,
        group_size=args.group_size, class_groups=args.class_groups, gray_prob=args.gray_prob,
        restart_steps=args.restart_steps, restart_lr=args.restart_lr, restarts=args.restarts,
    )  # fmt: skip
    k = max(1, len(result.losses) // 10)
    first, last = sum(result.losses[:k]) / k, sum(result.losses[-k:]) / k
    print(f"wrote {result.path} ({result.record['checksum']}): {args.steps} steps in {result.seconds:.0f} s, "
          f"loss {first:.4f} -> {last:.4f} (means of the first / last {k} steps); record {result.path.with_suffix('.json')}")  # fmt: skip
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from clip_gs.offline_teacher.evaluate import run_eval

    return run_eval(args)


__all__ = ["add_teacher_parser", "run_build"]
