"""Fetching files from the Hugging Face Hub with the package's errors (no silent fallbacks).

Offline use: with ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) files come from the local
Hugging Face cache only (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``); a repo that is
not there raises :class:`~clip_gs.errors.WeightsUnavailableError` with :func:`offline_advice`.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_gs.errors import ConfigError, FileNotOnHubError, WeightsUnavailableError

HUB_PREFIX = "hf://"


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
    mode = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the Hub could not be reached"
    return (
        f"{mode} and {repo_id!r} is not in the Hugging Face cache {cache}. On a connected machine run "
        f"`hf download {repo_id}` (with the same HF_HUB_CACHE / HF_HOME) and copy the cache folder here, "
        "or pass the path of a local folder written by save_pretrained / clip-gs fit"
    )


def hub_download(repo_id: str, filename: str, **kwargs) -> Path:
    """``hf_hub_download`` that raises :class:`WeightsUnavailableError` with a helpful message
    (offline, missing file, gated repo) instead of a network traceback."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, **kwargs))
    except LocalEntryNotFoundError as exc:
        raise WeightsUnavailableError(
            f"cannot fetch {filename!r} of the Hub repo {repo_id!r}: {offline_advice(repo_id, kwargs.get('cache_dir'))}"
        ) from exc
    except EntryNotFoundError as exc:
        raise FileNotOnHubError(f"{repo_id} has no file {filename!r} on the Hub") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsUnavailableError(f"cannot fetch {filename!r} from the Hub repo {repo_id!r}: {exc}") from exc


__all__ = ["HUB_PREFIX", "hub_download", "offline_advice", "parse_hub_reference"]
