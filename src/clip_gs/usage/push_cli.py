"""``clip-gs push`` (registered by :func:`add_hub_parser` from ``clip_gs.cli``), and :func:`folder_upload`, the
checked commit of a model folder it sends.

    clip-gs push DIR --repo-id ORG/NAME [--private] [--eval-report PATH] [--token TOKEN] [--dry-run]

A push needs the layers below it together: the model checks the folder's weights against its
``config.json`` and its teacher record (:func:`~clip_gs.model.clipgs.validate_folder`), the evaluation checks
the report (:func:`~clip_gs.evaluation.report.read_eval_report`), the hub makes the card and the commit
(:mod:`clip_gs.hub.card`, :mod:`clip_gs.hub.push`). Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clip_gs.hub.push import Upload


def folder_upload(
    folder: str | os.PathLike,
    repo_id: str,
    eval_report: str | os.PathLike | None = None,
    datasets: Sequence[str] = (),
) -> Upload:
    """Check a model folder and make its commit (card included); no network. Push it with
    :func:`~clip_gs.hub.push.push_upload`.

    Args:
        folder: written by the training export or ``CLIPGS.save_pretrained``.
        repo_id: ``ORG/NAME`` (named in the card's usage snippet).
        eval_report: the evaluation report for the card (default ``folder/eval/report.json`` when present).
        datasets: Hub dataset ids for the card's metadata.

    Raises:
        ConfigError / CheckpointError: a malformed ``repo_id``; see :func:`~clip_gs.model.clipgs.validate_folder`.
        ModelCardError: an unreadable or malformed report, a missing ``eval_report``.
    """
    from clip_gs.evaluation.report import read_eval_report
    from clip_gs.hub.card import folder_card
    from clip_gs.hub.folder import report_location
    from clip_gs.hub.push import check_repo_id, prepare_upload
    from clip_gs.model.clipgs import validate_folder
    from clip_gs.model.folder import card_teacher_spec, read_teacher_record

    check_repo_id(repo_id)
    validate_folder(folder)
    report_file = report_location(folder, eval_report)
    report = read_eval_report(report_file) if report_file is not None else None
    spec = card_teacher_spec(read_teacher_record(folder).teacher)
    card = folder_card(
        folder, repo_id=repo_id, report=report, report_file=report_file, teacher_spec=spec, datasets=datasets
    )
    return prepare_upload(folder, repo_id, card, report_file)


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
    from clip_gs.hub.push import describe, push_upload

    upload = folder_upload(args.folder, args.repo_id, eval_report=args.eval_report, datasets=args.dataset)
    if args.dry_run:
        print(upload.card())
        print(f"dry run: would push {len(upload.files)} files to {args.repo_id}: {upload.summary()}")
        return 0
    result = push_upload(
        upload, private=True if args.private else None, token=args.token, commit_message=args.commit_message,
        revision=args.revision, create_pr=args.create_pr,
    )  # fmt: skip
    print(describe(result))
    return 0


__all__ = ["add_hub_parser", "folder_upload", "run_push"]
