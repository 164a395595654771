"""The ``clip-gs demo`` command (registered by :func:`add_demo_parser` from ``clip_gs.cli``).

    clip-gs demo [--model DIR_OR_REPO] [--port P] [--host H] [--max-file-mb MB] ...

Options left out come from ``CLIP_GS_DEMO_*`` variables, then the defaults of
:class:`~clip_gs.demo.settings.DemoSettings`. Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse


def add_demo_parser(subparsers) -> None:
    """Add ``demo`` to the ``clip-gs`` subparsers; it sets ``func``."""
    demo = subparsers.add_parser("demo", help="serve the web demo: upload, preview, classify, search (needs [demo])")
    demo.add_argument("--model", help="exported model folder (clip-gs fit's export/) or Hub repo id")
    demo.add_argument("--teacher", help="teacher spec to use instead of the one the model records (the same teacher)")
    demo.add_argument("--device", help="auto (CUDA when available, default), cpu, cuda, ...")
    demo.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)")
    demo.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    demo.add_argument("--max-file-mb", type=float, help="upload size limit in MB (default 100)")
    demo.add_argument("--preview-size", type=int, help="pixels of each preview view (default 160)")
    demo.add_argument("--preview-gaussians", type=int,
                      help="most Gaussians the CPU preview renders; larger uploads are thinned (default 20000)")
    demo.add_argument("--cache-dir", help="where the gallery and its indexes are kept (default ~/.cache/clip-gs/demo)")
    demo.set_defaults(func=run_demo)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~clip_gs.demo.settings.DemoSettings` of parsed ``clip-gs demo`` arguments."""
    from clip_gs.demo.settings import DemoSettings

    return DemoSettings.from_env(
        model=args.model, teacher=args.teacher, device=args.device, host=args.host, port=args.port,
        max_file_mb=args.max_file_mb, preview_size=args.preview_size, preview_gaussians=args.preview_gaussians,
        cache_dir=args.cache_dir,
    )  # fmt: skip


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs demo``: serves until interrupted."""
    from clip_gs.demo.app import launch_demo

    launch_demo(settings_from_args(args))
    return 0


__all__ = ["add_demo_parser", "run_demo", "settings_from_args"]
