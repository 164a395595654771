"""The ``clip-gs labels`` command: write a label-embedding file (registered by :func:`add_labels_parser`
from ``clip_gs.cli``).

    clip-gs labels (--teacher SPEC | --model M) (--label-set NAME_OR_FILE | --labels a,b,c | --uni3d-labels KEY)
                   [--templates clip-gs|uni3d [--uni3d-data DIR] [--uni3d-templates KEY]] --out FILE.safetensors

The class names are encoded once by the teacher's text tower (the teacher a spec names, or the one
a model records) with the chosen templates, averaged per class and written with the teacher's
identity (:mod:`clip_gs.teachers.label_embeddings`). ``classify --label-set FILE``, ``eval
--label-set FILE`` and the demo then classify with no text tower. ``--templates uni3d`` reads the
templates of Uni3D's ``templates.json`` (``--uni3d-data``: the ``data/`` folder of Uni3D's
repository) and fills names in verbatim, as the ``uni3d`` zero-shot protocol does; with
``--uni3d-labels KEY`` the class list is that of its ``labels.json`` (e.g.
``objaverse_lvis_openshape``), the file ``eval --zeroshot-protocol uni3d --label-set FILE`` takes.
Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse
import sys

TEMPLATE_CHOICES = ("clip-gs", "uni3d")
"""``--templates``: the package's :data:`~clip_gs.teachers.TEMPLATES` (``clip-gs`` prompt rule), or
Uni3D's templates (``verbatim`` rule), as the zero-shot protocols of the same names."""


def add_labels_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``labels`` to the ``clip-gs`` subparsers (sets ``func``)."""
    from clip_gs import cli_flags
    from clip_gs.evaluation import protocols
    from clip_gs.teachers.label_options import add_label_options

    p = subparsers.add_parser("labels", help="write a label-embedding file: a label set encoded once by a teacher")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--teacher", help="the teacher that encodes the labels, as a spec (e.g. "
                     "EVA02-E-14-plus/laion2b_s9b_b144k, synthetic-clip)")  # fmt: skip
    cli_flags.add_model_argument(who)  # its recorded teacher encodes them
    names = p.add_mutually_exclusive_group(required=True)
    add_label_options(names, label_set_help="the class names: a shipped label set (modelnet40, objaverse-lvis, "
                      "synthetic) or a label-list file (one name per line, # comments, or a JSON list)")  # fmt: skip
    names.add_argument("--uni3d-labels", help=protocols.UNI3D_LABELS_HELP)  # with --templates uni3d
    p.add_argument(
        "--templates",
        default="clip-gs",
        choices=TEMPLATE_CHOICES,
        help="prompt templates: clip-gs (the package's 12, default) or uni3d (Uni3D's templates.json)",
    )
    p.add_argument("--uni3d-data", help=protocols.UNI3D_DATA_HELP)  # with --templates uni3d
    p.add_argument("--uni3d-templates", default=protocols.UNI3D_TEMPLATES_KEY, help=protocols.UNI3D_TEMPLATES_HELP)
    p.add_argument("--out", required=True, help="the label-embedding file to write (.safetensors)")
    cli_flags.add_device_argument(p)  # the text tower's
    cli_flags.add_precision_argument(p)
    p.add_argument("--batch-size", type=cli_flags.positive_int, default=64,
                   help="prompts per forward pass of the text tower")  # fmt: skip
    cli_flags.add_quiet_argument(p)
    p.set_defaults(func=run_labels)
    return p


def _prompts(args: argparse.Namespace):
    """``(names source, templates, prompt rule)`` of the parsed options."""
    from clip_gs.errors import ConfigError
    from clip_gs.teachers import TEMPLATES
    from clip_gs.teachers.label_options import label_source

    source = label_source(args)
    if args.templates == "clip-gs":
        if args.uni3d_labels or args.uni3d_data:
            raise ConfigError("--uni3d-labels and --uni3d-data go with --templates uni3d")
        return source, TEMPLATES, "clip-gs"
    from clip_gs.evaluation.protocols import uni3d_class_names, uni3d_templates

    if args.uni3d_data is None:
        raise ConfigError("--templates uni3d needs --uni3d-data DIR: the data/ folder of github.com/baaivision/Uni3D "
                          "(templates.json, labels.json)")  # fmt: skip
    templates = uni3d_templates(args.uni3d_data, args.uni3d_templates)
    if args.uni3d_labels:
        source = list(uni3d_class_names(args.uni3d_data, args.uni3d_labels))
    return source, templates, "verbatim"


def run_labels(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs labels``."""
    from pathlib import Path

    from clip_gs.errors import ConfigError
    from clip_gs.model.precision import resolve_device, teacher_precision
    from clip_gs.teachers.label_embeddings import (
        SUFFIX,
        compute_label_embeddings,
        describe_label_source,
        write_label_embeddings,
    )

    if not str(args.out).lower().endswith(SUFFIX):
        raise ConfigError(f"--out {args.out}: a label-embedding file must end in {SUFFIX}")
    source, templates, rule = _prompts(args)
    device = resolve_device(args.device)
    options = {"device": device, "precision": teacher_precision(args.precision, device), "batch_size": args.batch_size}
    if args.model is not None:  # the teacher the model records, checked to be it
        from clip_gs.model.loaded import load_model, load_recorded_teacher

        usage = load_model(args.model, device="cpu")
        teacher = load_recorded_teacher(usage.teacher_record, None, f"model {args.model}", folder=usage.teacher_folder,
                                        **options)  # fmt: skip
        if teacher.embed_dim != usage.embed_dim:
            raise ConfigError(f"teacher {teacher.identity} embeds in {teacher.embed_dim} dimensions, model "
                              f"{args.model} in {usage.embed_dim}")  # fmt: skip
    else:
        from clip_gs.teachers import load_teacher

        teacher = load_teacher(args.teacher, **options)
    table = compute_label_embeddings(teacher, source, templates, rule, progress=False if args.quiet else None)
    label_set = f"uni3d labels.json [{args.uni3d_labels}]" if args.uni3d_labels else describe_label_source(source)
    out = write_label_embeddings(Path(args.out), table.names, table.weights, table.teacher, table.templates,
                                 table.prompt_rule, label_set)  # fmt: skip
    print(f"wrote {out}: {len(table)} classes x {len(templates)} templates ({rule} rule), embed_dim {table.embed_dim}, "
          f"teacher {table.teacher}", file=sys.stderr)  # fmt: skip
    print(out)
    return 0


__all__ = ["TEMPLATE_CHOICES", "add_labels_parser", "run_labels"]
