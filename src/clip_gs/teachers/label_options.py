"""The label options every ``clip-gs`` command that takes labels shares (``classify``, ``eval``,
``demo``, ``labels``): one scheme.

- ``--labels a,b,c``: comma-separated class names;
- ``--label-set NAME_OR_FILE``: a registered label set (``modelnet40``, ``objaverse-lvis``,
  ``synthetic``), a label-list file (one name per line, or a JSON list) or a label-embedding file
  (``.safetensors``, :mod:`clip_gs.teachers.label_embeddings`: no text tower is loaded).

Argparse only at import; :func:`parse_labels` loads the label-set checks when called.
"""

from __future__ import annotations

import argparse

LABEL_SET_HELP = ("a label set: a shipped one (modelnet40, objaverse-lvis, synthetic), a label-list file (one name "
                  "per line, # comments, or a JSON list) or a label-embedding file (.safetensors, written by clip-gs "
                  "labels: no text tower is loaded)")  # fmt: skip
"""Help of ``--label-set``."""


def parse_labels(text: str) -> list[str]:
    """Class names from text: separated by commas or new lines, each stripped, blanks skipped
    (``"a, b ,c"`` -> ``["a", "b", "c"]``).

    Raises:
        ConfigError: no names, duplicates (see :func:`~clip_gs.teachers.load_label_set`).
    """
    from clip_gs.errors import ConfigError
    from clip_gs.teachers.prompts import load_label_set

    names = [n.strip() for line in str(text or "").splitlines() for n in line.split(",")]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("the label set is empty: give class names separated by commas or new lines")
    return load_label_set(names)


def label_list(text: str) -> list[str]:
    """The ``--labels`` argument type: :func:`parse_labels`, its errors as argparse's.

    Raises:
        argparse.ArgumentTypeError: no names, duplicates.
    """
    from clip_gs.errors import ConfigError

    try:
        return parse_labels(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"--labels takes comma-separated class names: {exc}") from exc


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


__all__ = ["LABEL_SET_HELP", "add_label_options", "label_list", "label_source", "parse_labels"]
