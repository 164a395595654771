"""``clip-gs push`` (registered by :func:`add_hub_parser` from ``clip_gs.cli``).

    clip-gs push DIR --repo-id ORG/NAME [--private] [--eval-report PATH] [--token TOKEN] [--dry-run]

Importing this module is cheap (argparse only); the work happens in :mod:`clip_gs.model.push`.
"""

from __future__ import annotations

import argparse


def add_hub_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``push`` to the ``clip-gs`` subparsers (sets ``func``)."""
    push = subparsers.add_parser(
        "push", help="upload a model folder (clip-gs fit's export) to the Hugging Face Hub in one commit",
        description="Check a model folder (config.json, model.safetensors matching it), generate its model card "
        "(README.md, with the evaluation report's metrics) and upload config.json, model.safetensors, teacher.json, "
        "README.md, curves.png and eval/ (report and figures) in a single commit. Nothing is sent when a check fails; "
        "nothing is committed when the upload fails.",
    )  # fmt: skip
    push.add_argument("folder", help="model folder written by clip-gs fit (export) or CLIPGS.save_pretrained")
    push.add_argument("--repo-id", required=True, help="Hub repository ORG/NAME (created when missing)")
    push.add_argument(
        "--private", action="store_true", help="create the repository private (an existing one keeps its visibility)"
    )
    push.add_argument(
        "--eval-report", help="evaluation report for the card (default FOLDER/eval/report.json when present)"
    )
    push.add_argument("--dataset", action="append", default=[], metavar="ORG/NAME",
                      help="Hub dataset id for the card's metadata (repeatable)")  # fmt: skip
    push.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or the `hf auth login` token)")
    push.add_argument("--revision", help="branch to commit to (default main)")
    push.add_argument(
        "--create-pr", action="store_true", help="open a pull request instead of committing to the branch"
    )
    push.add_argument("--commit-message", help="commit message (default 'Upload CLIP-GS model <config name>')")
    push.add_argument("--dry-run", action="store_true", help="check and print the files and the card; send nothing")
    push.set_defaults(func=run_push)
    return push


def run_push(args: argparse.Namespace) -> int:
    """Handler of ``clip-gs push``."""
    from clip_gs.model.push import describe, prepare_upload, push_folder

    if args.dry_run:
        upload = prepare_upload(args.folder, args.repo_id, eval_report=args.eval_report, datasets=args.dataset)
        print(upload.card())
        print(f"dry run: would push {len(upload.files)} files to {args.repo_id}: {upload.summary()}")
        return 0
    result = push_folder(
        args.folder, args.repo_id, private=True if args.private else None, token=args.token,
        eval_report=args.eval_report, datasets=args.dataset, commit_message=args.commit_message,
        revision=args.revision, create_pr=args.create_pr,
    )  # fmt: skip
    print(describe(result))
    return 0


__all__ = ["add_hub_parser", "run_push"]
