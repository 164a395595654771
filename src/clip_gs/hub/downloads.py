"""Fetching files from the Hugging Face Hub with the package's errors (no silent fallbacks), and offline mode.

Offline mode is huggingface_hub's own (:func:`is_offline`): ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) set before ``huggingface_hub`` is imported; then, as with a loader's
``local_files_only=True``, files come from the local Hugging Face cache only (``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``), and a repo that is not there raises
:class:`~clip_gs.errors.WeightsUnavailableError` with :func:`offline_advice`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clip_gs.errors import CheckpointError, ConfigError, FileNotOnHubError, WeightsUnavailableError

HUB_PREFIX = "hf://"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""What a Hub repo id looks like (``name`` or ``owner/name``); anything else is a local path."""


def is_offline() -> bool:
    """Whether Hub requests are off: huggingface_hub's offline mode (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``, read when ``huggingface_hub`` is imported). Every clip-gs loader asks this
    function; a single call that must not download takes ``local_files_only=True`` instead."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def model_location(reference: str | os.PathLike) -> str:
    """A model reference as ``from_pretrained`` takes it: an existing folder (``~`` expanded), or a Hub
    repo id when it is neither a folder nor a file and has a repo id's form.

    Raises:
        CheckpointError: ``reference`` is a file, or a path that does not exist and cannot be a
            Hub repo id (``./run/export``, ``/abs/path``, ``a/b/c``).
    """
    name = str(reference)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise CheckpointError(f"{name}: is a file; give the model folder written by save_pretrained / clip-gs fit")
    if not _REPO_ID.match(name):
        raise CheckpointError(f"{name}: no such model folder (and not a Hub repo id such as 'owner/name')")
    return name


def parse_hub_reference(reference: str) -> tuple[str, str]:
    """Split ``"hf://owner/repo/path/in/repo"`` into ``("owner/repo", "path/in/repo")``."""
    parts = reference.removeprefix(HUB_PREFIX).split("/", 2)
    if not reference.startswith(HUB_PREFIX) or len(parts) != 3 or not all(parts):
        raise ConfigError(f"not a Hub file reference {reference!r}; expected 'hf://owner/repo/path/to/file'")
    return f"{parts[0]}/{parts[1]}", parts[2]


def offline_advice(repo_id: str, cache_dir: str | os.PathLike | None = None) -> str:
    """What to do when ``repo_id`` is neither reachable nor in the cache (part of error messages):
    names the cache folder searched and whether offline mode is on."""
    from huggingface_hub import constants

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    mode = "HF_HUB_OFFLINE is set" if is_offline() else "the Hub could not be reached"
    return (
        f"{mode} and {repo_id!r} is not in the Hugging Face cache {cache}. On a connected machine run "
        f"`hf download {repo_id}` (with the same HF_HUB_CACHE / HF_HOME) and copy the cache folder here, "
        "or pass the path of a local folder written by save_pretrained / clip-gs fit"
    )


def hub_download(repo_id: str, filename: str, **kwargs) -> Path:
    """``hf_hub_download`` (its keyword arguments: ``revision``, ``cache_dir``, ``local_files_only``, ...) that
    raises :class:`WeightsUnavailableError` with a helpful message (offline, not cached, gated repo) instead of
    a network traceback, and :class:`FileNotOnHubError` for a file the repo does not have."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, **kwargs))
    except LocalEntryNotFoundError as exc:
        raise WeightsUnavailableError(
            f"cannot fetch {filename!r} of the Hub repo {repo_id!r}: {offline_advice(repo_id, kwargs.get('cache_dir'))}"
        ) from exc
    except EntryNotFoundError as exc:
        raise FileNotOnHubError(f"{repo_id} has no file {filename!r} on the Hub") from exc
    except HFValidationError as exc:
        raise ConfigError(f"{repo_id!r} is neither an existing folder nor a valid Hub repo id: {exc}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsUnavailableError(f"cannot fetch {filename!r} from the Hub repo {repo_id!r}: {exc}") from exc


__all__ = ["HUB_PREFIX", "hub_download", "is_offline", "model_location", "offline_advice", "parse_hub_reference"]
