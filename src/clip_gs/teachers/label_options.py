"""The label options every ``clip-gs`` command that takes labels shares (``classify``, ``eval``,
``demo``, ``labels``): one scheme.

- ``--labels a,b,c``: comma-separated class names;
- ``--label-set NAME_OR_FILE``: a registered label set (``modelnet40``, ``objaverse-lvis``,
  ``synthetic``), a label-list file (one name per line, or a JSON list) or a label-embedding file
  (``.safetensors``, :mod:`clip_gs.teachers.label_embeddings`: no text tower is loaded).

Argparse only; importing this module loads nothing else.
"""

from __future__ import annotations

import argparse

LABEL_SET_HELP = ("a label set: a shipped one (modelnet40, objaverse-lvis, synthetic), a label-list file (one name "
                  "per line, # comments, or a JSON list) or a label-embedding file (.safetensors, written by clip-gs "
                  "labels: no text tower is loaded)")  # fmt: skip
"""Help of ``--label-set``."""


def label_list(text: str) -> list[str]:
    """``"a, b ,c"`` -> ``["a", "b", "c"]`` (the ``--labels`` argument type).

    Raises:
        argparse.ArgumentTypeError: an empty name.
    """
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"--labels takes comma-separated class names, got {text!r}")
    return names


def add_label_options(group, labels_help: str = 'comma-separated class names, e.g. "chair,table,lamp"',
                      label_set_help: str = LABEL_SET_HELP) -> None:  # fmt: skip
    """Add ``--labels`` (parsed by :func:`label_list`) and ``--label-set`` to a parser or to a
    mutually exclusive group of one."""
    group.add_argument("--labels", type=label_list, help=labels_help)
    group.add_argument("--label-set", help=label_set_help)


def label_source(args: argparse.Namespace):
    """The label source the parsed options give: the ``--labels`` names, else the ``--label-set``
    text, else None."""
    return args.labels if args.labels is not None else args.label_set


__all__ = ["LABEL_SET_HELP", "add_label_options", "label_list", "label_source"]
