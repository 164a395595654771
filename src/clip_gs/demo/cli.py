"""The ``clip-gs demo`` command (registered by :func:`add_demo_parser` from ``clip_gs.cli``).

    clip-gs demo [--model MODEL] [--labels a,b,c | --label-set NAME_OR_FILE] [--up AXIS] [--port P] [--host H]
                 [--max-file-mb MB] ...

Options left out come from ``CLIP_GS_DEMO_*`` variables, then the defaults of
:class:`~clip_gs.demo.settings.DemoSettings`. Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse


def add_demo_parser(subparsers) -> None:
    """Add ``demo`` to the ``clip-gs`` subparsers; it sets ``func``. Its options default to None:
    ``CLIP_GS_DEMO_*`` variables, then :class:`~clip_gs.demo.settings.DemoSettings`, supply the rest."""
    from clip_gs import cli_flags

    demo = subparsers.add_parser("demo", help="serve the web demo: upload, preview, classify, search (needs [demo])")
    cli_flags.add_model_argument(demo)
    cli_flags.add_teacher_argument(demo)
    cli_flags.add_device_argument(demo, default=None)
    cli_flags.add_up_argument(demo, default=None)  # of uploads
    demo.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)")
    demo.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    demo.add_argument("--max-file-mb", type=float, help="upload size limit in MB (default 100)")
    demo.add_argument("--preview-size", type=int, help="pixels of each preview view (default 160)")
    demo.add_argument(
        "--preview-gaussians",
        type=int,
        help="most Gaussians the CPU preview renders; larger uploads are thinned (default 20000)",
    )
    demo.add_argument("--cache-dir", help="where the gallery, its indexes, the examples and computed label embeddings "
                      "are kept (default: the demo/ folder of clip-gs's cache root, $CLIP_GS_CACHE or "
                      "~/.cache/clip-gs)")  # fmt: skip
    from clip_gs.teachers.label_options import LABEL_SET_HELP, add_label_options

    add_label_options(demo.add_mutually_exclusive_group(),
                      labels_help="the model's default labels, comma-separated (the page's label box)",
                      label_set_help=f"the model's default labels: {LABEL_SET_HELP}; a set or list is encoded once "
                                     "by the model's teacher and cached as a label-embedding file")  # fmt: skip
    demo.set_defaults(func=run_demo)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~clip_gs.demo.settings.DemoSettings` of parsed ``clip-gs demo`` arguments."""
    from dataclasses import replace

    from clip_gs.demo.settings import DemoSettings

    settings = DemoSettings.from_env(
        model=args.model, teacher=args.teacher, device=args.device, up=args.up, host=args.host, port=args.port,
        max_file_mb=args.max_file_mb, preview_size=args.preview_size, preview_gaussians=args.preview_gaussians,
        cache_dir=args.cache_dir,
    )  # fmt: skip
    if args.labels is not None:  # the command line's labels replace those of the environment
        settings = replace(settings, labels=", ".join(args.labels), label_set=None)
    elif args.label_set is not None:
        settings = replace(settings, label_set=args.label_set, labels=None)
    return settings


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs demo``: serves until interrupted."""
    from clip_gs.demo.app import launch_demo

    launch_demo(settings_from_args(args))
    return 0


__all__ = ["add_demo_parser", "run_demo", "settings_from_args"]
