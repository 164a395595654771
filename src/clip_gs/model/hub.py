"""Fetching files from the Hugging Face Hub with the package's errors (no silent fallbacks)."""

from __future__ import annotations

from pathlib import Path

from clip_gs.errors import ConfigError, WeightsUnavailableError

HUB_PREFIX = "hf://"


def parse_hub_reference(reference: str) -> tuple[str, str]:
    """Split ``"hf://owner/repo/path/in/repo"`` into ``("owner/repo", "path/in/repo")``."""
    parts = reference.removeprefix(HUB_PREFIX).split("/", 2)
    if not reference.startswith(HUB_PREFIX) or len(parts) != 3 or not all(parts):
        raise ConfigError(f"not a Hub file reference {reference!r}; expected 'hf://owner/repo/path/to/file'")
    return f"{parts[0]}/{parts[1]}", parts[2]


def hub_download(repo_id: str, filename: str, **kwargs) -> Path:
    """``hf_hub_download`` that raises :class:`WeightsUnavailableError` with a helpful message
    (offline, missing file, gated repo) instead of a network traceback."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, **kwargs))
    except EntryNotFoundError as exc:
        raise WeightsUnavailableError(f"{repo_id} has no file {filename!r} on the Hub") from exc
    except LocalEntryNotFoundError as exc:
        raise WeightsUnavailableError(
            f"cannot fetch {filename!r} from the Hub repo {repo_id!r}: no network connection and no cached copy. "
            "Download it on a connected machine (huggingface-cli download ...) or pass a local path."
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise WeightsUnavailableError(f"cannot fetch {filename!r} from the Hub repo {repo_id!r}: {exc}") from exc
