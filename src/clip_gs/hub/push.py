"""Pushing a model folder to the Hugging Face Hub as one commit: :func:`prepare_upload`, then :func:`push_upload`.

What is uploaded (from a folder written by the training export or ``save_pretrained``, checked by the caller:
``clip-gs push`` and ``CLIPGS.push_to_hub`` check the weights against ``config.json`` and the teacher record
with :func:`clip_gs.model.clipgs.validate_folder` first)::

    config.json          the architecture
    model.safetensors    the weights
    teacher.json         when present
    README.md            the generated card (clip_gs.hub.card.folder_card), never the folder's README.md
    curves.png           when present
    metrics.json         when present (the export's record)
    eval/report.json     the evaluation report the card is made from, when there is one
    eval/*.png           the figures next to that report (or in the folder's eval/), when present

The commit's operations are built before any network call. The files go
up in a single ``HfApi.create_commit``: a failure (offline, no connection, refused token) raises
:class:`~clip_gs.errors.HubError` and leaves no partial upload (at most the repository itself,
created empty by ``create_repo``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clip_gs.errors import CheckpointError, ConfigError, HubError
from clip_gs.hub.downloads import is_offline
from clip_gs.hub.folder import (
    CARD_NAME,
    CONFIG_NAME,
    CURVES_NAME,
    EVAL_DIR,
    EVAL_REPORT,
    METRICS_NAME,
    TEACHER_NAME,
    WEIGHTS_NAME,
    eval_images,
    read_config_json,
)

if TYPE_CHECKING:
    from huggingface_hub import ModelCard


@dataclass(frozen=True)
class UploadFile:
    """One file of the commit: its path in the repo and its content (bytes, or a checked local file)."""

    path_in_repo: str
    content: bytes | Path

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.stat().st_size

    def read(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.read_bytes()


@dataclass(frozen=True)
class Upload:
    """A checked model folder and the files of its commit (:func:`prepare_upload`)."""

    folder: Path
    repo_id: str
    name: str
    """The model's configuration name (``config.json``'s ``name``)."""
    files: tuple[UploadFile, ...]

    @property
    def names(self) -> list[str]:
        return [f.path_in_repo for f in self.files]

    def card(self) -> str:
        """The README.md that goes up (the generated card)."""
        return next(f.read() for f in self.files if f.path_in_repo == CARD_NAME).decode("utf-8")

    def summary(self) -> str:
        return ", ".join(f"{f.path_in_repo} ({_size(f.size)})" for f in self.files)


@dataclass(frozen=True)
class PushResult:
    """What :func:`push_upload` committed."""

    repo_id: str
    repo_url: str
    commit_url: str
    files: tuple[str, ...]


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` as the Hub spells repo ids; :class:`ConfigError` otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ConfigError(f"repo id {repo_id!r}: expected ORG/NAME (your user or organisation, then the model name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"repo id {repo_id!r} is not a valid Hub repo id: {exc}") from exc
    return repo_id


def prepare_upload(
    folder: str | os.PathLike, repo_id: str, card: str | ModelCard, report_file: str | os.PathLike | None = None
) -> Upload:
    """The commit's files of a model folder (module docstring); no network.

    Args:
        folder: a model folder its caller has checked (:func:`clip_gs.model.clipgs.validate_folder`).
        repo_id: ``ORG/NAME``.
        card: the model card that goes up as ``README.md`` (:func:`clip_gs.hub.card.folder_card`).
        report_file: the evaluation report the card was made from, uploaded as ``eval/report.json`` with the
            figures beside it; None: none (the figures in ``folder/eval``, if any, still go up).

    Raises:
        ConfigError: a malformed ``repo_id``; ``config.json`` not a JSON object.
        CheckpointError: not a folder, or no ``config.json`` / ``model.safetensors`` in it.
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; push takes a folder written by clip-gs fit or save_pretrained")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: no {name} in the model folder")
    config = read_config_json(folder / CONFIG_NAME)
    files = [UploadFile(CONFIG_NAME, folder / CONFIG_NAME), UploadFile(WEIGHTS_NAME, folder / WEIGHTS_NAME)]
    if (folder / TEACHER_NAME).is_file():
        files.append(UploadFile(TEACHER_NAME, folder / TEACHER_NAME))
    files.append(UploadFile(CARD_NAME, str(card).encode("utf-8")))
    for name in (CURVES_NAME, METRICS_NAME):  # the training record: curves, validation / test metrics, labels
        if (folder / name).is_file():
            files.append(UploadFile(name, folder / name))
    if report_file is not None:
        files.append(UploadFile(EVAL_REPORT, Path(report_file)))
    files += [UploadFile(f"{EVAL_DIR}/{image.name}", image) for image in eval_images(folder, report_file)]
    return Upload(folder=folder, repo_id=repo_id, name=str(config.get("name", folder.name)), files=tuple(files))


def push_upload(
    upload: Upload,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> PushResult:
    """Upload the files of ``upload`` (:func:`prepare_upload`) to its Hub repo (created if needed) in one commit.

    Args:
        private: make a new repository private (None: the account's default). An existing repo keeps its visibility.
        token: a Hub token with write access (default: ``HF_TOKEN`` or the ``hf auth login`` token).
        commit_message: default ``"Upload CLIP-GS model <config name>"``.
        revision: the branch to commit to (default ``main``). create_pr: open a pull request instead.

    Raises:
        HubError: offline mode (:func:`~clip_gs.hub.downloads.is_offline`), no connection, a refused token,
            another HTTP error: nothing was committed.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    repo_id = upload.repo_id
    operations = [CommitOperationAdd(path_in_repo=f.path_in_repo, path_or_fileobj=f.content) for f in upload.files]
    if is_offline():
        raise HubError(
            f"cannot push {upload.folder} to {repo_id}: HF_HUB_OFFLINE is set, so no request is made; nothing was "
            "committed. Unset HF_HUB_OFFLINE on a machine with a connection and push again"
        )
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.create_commit(
            repo_id=repo_id, repo_type="model", operations=operations, revision=revision, create_pr=create_pr,
            commit_message=commit_message or f"Upload CLIP-GS model {upload.name}",
        )  # fmt: skip
    except _network_errors() as exc:
        raise HubError(f"cannot push {upload.folder} to {repo_id}: {_explain(exc)}; nothing was committed") from exc
    return PushResult(
        repo_id=repo_id, repo_url=str(repo_url), commit_url=str(info.commit_url), files=tuple(upload.names)
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    # HfHubHTTPError derives from the HTTP client's base error (requests' in older huggingface_hub, httpx's in
    # newer), which also covers refused connections and timeouts; OSError covers OfflineModeIsEnabled,
    # socket errors and requests' exceptions.
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, *(base for base in HfHubHTTPError.__bases__ if issubclass(base, Exception)))


def _explain(exc: BaseException) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(exc, "response", None), "status_code", None) if isinstance(exc, HfHubHTTPError) else None
    if status in (401, 403):
        return (f"the Hub refused the token (HTTP {status}): log in with `hf auth login`, set HF_TOKEN or pass "
                f"--token with a token that has write access to the namespace ({exc})")  # fmt: skip
    if status is not None:
        return f"the Hub answered HTTP {status}: {exc}"
    return f"the Hub could not be reached ({type(exc).__name__}: {exc}); check the connection"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KB" if n < 1024**2 else f"{n / 1024**2:.1f} MB"


def describe(result: PushResult) -> str:
    """One line for the command line: where the files went."""
    return f"pushed {len(result.files)} files to {result.repo_url} ({', '.join(result.files)}): {result.commit_url}"


__all__ = ["PushResult", "Upload", "UploadFile", "check_repo_id", "describe", "prepare_upload", "push_upload"]
