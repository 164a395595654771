"""The ``clip-gs classify``, ``clip-gs embed`` and ``clip-gs search`` commands (registered by
:func:`add_usage_parsers` from ``clip_gs.cli``).

    clip-gs classify FILE... --model M (--labels a,b,c | --label-set NAME_OR_FILE) [--k 5] [--json]
    clip-gs embed FOLDER --out INDEX --model M [--up AXIS]
    clip-gs search INDEX (--text T | --image PNG | --like FILE [--up AXIS]) [--k 5] [--json] [--sheet hits.png]
                   [--model M]

``classify`` and ``embed`` report each bad file on stderr (``failed: FILE: reason``), go on with
the others and exit with status 3 when any failed (``EXIT_SOME_FAILED``, as ``clip-gs prepare``).
Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse
import json
import sys

K_HELP = "how many best results to show: labels per file (classify), hits (search)"

SEARCH_UP_HELP = ("world up axis of a --like file that declares none: auto, +y, -y, +z, -z (default: the index's "
                  "setting, as its files were embedded)")  # fmt: skip


def _add_model_options(p: argparse.ArgumentParser, required: bool) -> None:
    from clip_gs import cli_flags

    cli_flags.add_model_argument(p, required=required)
    cli_flags.add_teacher_argument(p)
    cli_flags.add_device_argument(p)


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    from clip_gs import cli_flags

    cli_flags.add_up_argument(p)
    cli_flags.add_mesh_gaussians_argument(p)  # sampled before the model resamples the cloud
    cli_flags.add_seed_argument(p)
    cli_flags.add_batch_size_argument(p)
    cli_flags.add_quiet_argument(p)


def add_usage_parsers(subparsers) -> None:
    """Add ``classify``, ``embed`` and ``search`` to the ``clip-gs`` subparsers; each sets ``func``."""
    from clip_gs import cli_flags

    classify = subparsers.add_parser("classify", help="zero-shot top-k labels of 3DGS files and meshes")
    classify.add_argument(
        "files", nargs="+", help="3DGS files (.ply, .splat, .spz, compressed .ply), meshes, or folders"
    )
    _add_model_options(classify, required=True)
    labels = classify.add_mutually_exclusive_group(required=True)
    from clip_gs.teachers.label_options import add_label_options

    add_label_options(labels)
    classify.add_argument("--k", type=cli_flags.positive_int, default=5, help=K_HELP)
    cli_flags.add_json_argument(classify)  # a list, one object per file
    _add_sampling_options(classify)
    classify.set_defaults(func=run_classify)

    embed = subparsers.add_parser(
        "embed", help="embed a folder of 3DGS files and meshes into a search index (resumable)"
    )
    embed.add_argument("folder", help="folder searched recursively for 3DGS files and meshes")
    embed.add_argument("--out", required=True, help="index file (.safetensors); an existing one is brought up to date")
    _add_model_options(embed, required=True)
    _add_sampling_options(embed)
    cli_flags.add_overwrite_argument(embed)  # the index: everything is embedded again
    embed.set_defaults(func=run_embed)

    search = subparsers.add_parser("search", help="search an index by text, image or example file")
    search.add_argument("index", help="index file written by clip-gs embed")
    query = search.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", help='a description, e.g. "a red sports car" (embedded by the index\'s teacher)')
    query.add_argument("--image", help="an image file (embedded by the index's teacher)")
    query.add_argument("--like", help="a 3DGS file or mesh (embedded by the index's model: needs --model)")
    search.add_argument("--k", type=cli_flags.positive_int, default=5, help=K_HELP)
    cli_flags.add_json_argument(search)  # one object instead of 'score path' lines
    search.add_argument("--sheet", help="also write a contact sheet of the hits (rendered, with scores) to this image")
    search.add_argument("--sheet-size", type=cli_flags.positive_int, default=192, help="pixels per contact-sheet tile")
    cli_flags.add_up_argument(search, default=None, help=SEARCH_UP_HELP)
    _add_model_options(search, required=False)
    search.set_defaults(func=run_search)


def _report_failures(failures) -> None:
    for path, reason in failures:
        print(f"failed: {path}: {reason}", file=sys.stderr)


def run_classify(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs classify``."""
    from clip_gs.errors import EXIT_SOME_FAILED
    from clip_gs.model.loaded import load_model
    from clip_gs.teachers.label_options import label_source
    from clip_gs.usage.classify import classify_files, format_classification

    labels = label_source(args)
    usage = load_model(args.model, teacher=args.teacher, device=args.device)
    results = classify_files(
        args.files, usage, labels, k=args.k, mesh_gaussians=args.mesh_gaussians, seed=args.seed,
        batch_size=args.batch_size, progress=False if args.quiet else None, up=args.up,
    )  # fmt: skip
    failed = [(r.path, r.error) for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for result in results:
            if result.ok:
                print(format_classification(result))
    _report_failures(failed)
    print(f"classified {len(results) - len(failed)} of {len(results)} files, {len(failed)} failed", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else 0


def run_embed(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs embed``."""
    from clip_gs.errors import EXIT_SOME_FAILED
    from clip_gs.model.loaded import load_model
    from clip_gs.usage.embed import embed_folder

    usage = load_model(args.model, teacher=args.teacher, device=args.device)
    summary = embed_folder(
        args.folder, args.out, usage, mesh_gaussians=args.mesh_gaussians, seed=args.seed,
        batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet, up=args.up,
    )  # fmt: skip
    _report_failures(summary.failures)
    print(summary.line())
    return EXIT_SOME_FAILED if summary.failed else 0


def run_search(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs search``."""
    from clip_gs.gaussians.assets import MESH_GAUSSIANS
    from clip_gs.index import EmbeddingIndex
    from clip_gs.model.loaded import load_model
    from clip_gs.usage.search import hits_sheet, search_index

    if args.up is not None and not args.like:
        from clip_gs.errors import ConfigError

        raise ConfigError("--up names the up axis of a --like file; a text or image query has none")
    index = EmbeddingIndex.load(args.index)
    model = load_model(args.model, teacher=args.teacher, device=args.device) if args.model else None
    hits = search_index(index, text=args.text, image=args.image, like=args.like, k=args.k, model=model,
                        teacher=args.teacher, up=args.up)  # fmt: skip
    if args.json:
        kind, value = next((k, v) for k, v in (("text", args.text), ("image", args.image), ("like", args.like)) if v)
        print(json.dumps({
            "index": str(args.index), "model": index.model, "teacher": index.teacher,
            "query": {"kind": kind, "value": value},
            "hits": [{"rank": r, "score": h.score, "id": h.id, "path": h.path} for r, h in enumerate(hits, 1)],
        }, indent=2))  # fmt: skip
    else:
        for hit in hits:
            print(f"{hit.score:.4f} {hit.path}")
    if args.sheet:
        from pathlib import Path

        mesh_gaussians = int(index.settings.get("mesh_gaussians", MESH_GAUSSIANS))
        seed, up = int(index.settings.get("seed", 0)), str(index.settings.get("up", "auto"))  # as the index embedded
        sheet, failures = hits_sheet(hits, size=args.sheet_size, mesh_gaussians=mesh_gaussians, seed=seed, up=up)
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet)
        _report_failures(failures)
        print(f"wrote {args.sheet} ({len(hits)} hits)", file=sys.stderr)
    return 0


__all__ = ["add_usage_parsers", "run_classify", "run_embed", "run_search"]
