"""Frozen open_clip models as teachers: built-in name + pretrained tag, ``hf-hub:`` id, or a local file.

The paper's teacher is EVA-CLIP; the default here is open_clip's ``EVA02-E-14-plus`` with tag
``laion2b_s9b_b144k`` (1024-d, what Uni3D used). Weights are resolved *before* the architecture is
built, so an offline machine fails at once with :class:`~clip_gs.errors.WeightsUnavailableError`
(naming the model, the tag and how to pass a local file) instead of building a multi-billion
parameter random model; nothing is ever silently replaced.

Local checkpoints load safely: ``.safetensors`` through safetensors, anything else through
``torch.load(weights_only=True)``. Nothing is downloaded in huggingface_hub's offline mode
(:func:`~clip_gs.hub.downloads.is_offline`: ``HF_HUB_OFFLINE=1``) or for a teacher made with
``local_files_only=True``: the weights come from the local caches or the teacher is unavailable.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from clip_gs.errors import CheckpointError, ConfigError, MissingDependencyError, WeightsUnavailableError
from clip_gs.hub.downloads import is_offline
from clip_gs.state_dicts import load_state_dict_strict
from clip_gs.teachers.base import Teacher, TeacherIdentity

DEFAULT_MODEL = "EVA02-E-14-plus"
DEFAULT_PRETRAINED = "laion2b_s9b_b144k"

SPARSE_EMBEDDING_SUFFIX = "token_embedding.weight"
"""A checkpoint may store a matrix whose key ends with this sparsely (``<key>.rows``, ``<key>.ids``,
``<key>.shape``): the rows of token ids never seen in training are zero (the offline teacher's file
uses this to stay a few MB)."""


def import_open_clip():
    """The ``open_clip`` module, imported on first use.

    Raises:
        MissingDependencyError: open_clip_torch is not installed.
    """
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise MissingDependencyError("open_clip teachers need open_clip_torch: pip install open_clip_torch") from exc
    return open_clip


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (64 hex digits), read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksum(path: str | Path) -> str:
    """``"sha256:<first 16 hex digits>"`` of a file's bytes (:func:`file_sha256`)."""
    return f"sha256:{file_sha256(path)[:16]}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely into a flat float state dict.

    ``.safetensors`` via safetensors; other files via ``torch.load(weights_only=True)`` (a
    ``{"state_dict": ...}`` wrapper and a ``module.`` prefix are unwrapped). A sparsely stored
    token embedding (see :data:`SPARSE_EMBEDDING_SUFFIX`) is expanded; fp16 / bf16 tensors become float32.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"teacher checkpoint {path} cannot be read safely: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"teacher checkpoint {path} holds no state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    for rows_key in [k for k in state if k.endswith(f"{SPARSE_EMBEDDING_SUFFIX}.rows")]:
        key = rows_key[: -len(".rows")]
        try:
            rows, ids, shape = state.pop(rows_key), state.pop(f"{key}.ids").long(), state.pop(f"{key}.shape").tolist()
            full = torch.zeros(shape, dtype=rows.dtype)
            full[ids] = rows
        except (KeyError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"teacher checkpoint {path}: corrupt sparse embedding {key} ({exc})") from exc
        state[key] = full
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _model_config(open_clip, name: str) -> dict:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        close = [m for m in open_clip.list_models() if name.lower()[:5] in m.lower()][:12]
        raise ConfigError(
            f"unknown open_clip architecture {name!r}"
            + (f"; similar: {', '.join(close)}" if close else "")
            + " (open_clip.list_models() lists all; custom ones register with open_clip.add_model_config)"
        )
    return cfg


class OpenCLIPTeacher(Teacher):
    """A frozen open_clip CLIP.

    Args:
        model_name: an open_clip architecture (``"EVA02-E-14-plus"``, ``"ViT-B-32"``, a config registered
            with ``open_clip.add_model_config``) or ``"hf-hub:ORG/NAME"`` (config and weights from a Hub
            repo in open_clip's layout; ``pretrained`` must then be ``None``).
        pretrained: a pretrained tag of ``model_name`` (``open_clip.list_pretrained_tags_by_model``), a
            local checkpoint file, or ``None`` for random initialisation (tests only; never a default).
        batch_size, device, precision: see :class:`~clip_gs.teachers.base.Teacher`.
        cache_dir: Hub cache folder (default: huggingface_hub's).
        local_files_only: take the weights from the local caches only, never downloading them (as in
            huggingface_hub's offline mode); not cached: :class:`~clip_gs.errors.WeightsUnavailableError`.
        identity_name: the name recorded in :attr:`identity` for a local file (default ``model_name``).

    Raises:
        WeightsUnavailableError: the tag's weights are not cached and cannot be downloaded (offline).
        ConfigError: unknown architecture or tag.
        CheckpointError: a local file is unreadable or does not match the architecture.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        cache_dir: str | None = None,
        local_files_only: bool = False,
        identity_name: str | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, device=device, precision=precision)
        self.local_files_only = local_files_only
        open_clip = import_open_clip()
        self.model_name = model_name
        mean = std = None
        if model_name.startswith("hf-hub:"):
            if pretrained is not None:
                raise ConfigError(f"teacher {model_name}: an hf-hub: id names its own weights; pass pretrained=None")
            repo = model_name[len("hf-hub:") :]
            folder = self._hub_folder(repo, cache_dir)
            local = f"local-dir:{folder}"
            with open(Path(folder) / "open_clip_config.json", encoding="utf-8") as fh:
                cfg = json.load(fh)
            embed_dim = int(cfg["model_cfg"]["embed_dim"])
            model = self._create(open_clip, local, None)
            tokenizer = open_clip.get_tokenizer(local)
            identity = TeacherIdentity("hf-hub", repo, "", "", embed_dim)
        else:
            cfg = _model_config(open_clip, model_name)
            embed_dim = int(cfg["embed_dim"])
            if pretrained is None:
                model, identity = (
                    self._create(open_clip, model_name, None),
                    TeacherIdentity("random", model_name, "", "", embed_dim),
                )
            elif Path(pretrained).is_file():
                model = self._create(open_clip, model_name, None)
                self.load_weights(model, pretrained)
                identity = TeacherIdentity(
                    "file", identity_name or model_name, "", file_checksum(pretrained), embed_dim
                )
            else:
                tag = str(pretrained)
                tag_cfg = open_clip.get_pretrained_cfg(model_name, tag)
                if not tag_cfg:
                    tags = open_clip.list_pretrained_tags_by_model(model_name)
                    raise ConfigError(
                        f"teacher {model_name}: {tag!r} is neither a pretrained tag of this architecture "
                        f"(tags: {', '.join(tags) or 'none'}) nor an existing checkpoint file"
                    )
                path = self._resolve_tag(open_clip, model_name, tag, tag_cfg, cache_dir)
                model = self._create(open_clip, model_name, None)
                self.load_weights(model, path)
                mean, std = tag_cfg.get("mean"), tag_cfg.get("std")
                identity = TeacherIdentity("open_clip", model_name, tag, "", embed_dim)
            tokenizer = open_clip.get_tokenizer(model_name)
        pre = open_clip.get_model_preprocess_cfg(model)
        size = pre.get("size", model.visual.image_size)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.image_mean = tuple(float(v) for v in (mean or pre.get("mean", open_clip.OPENAI_DATASET_MEAN)))
        self.image_std = tuple(float(v) for v in (std or pre.get("std", open_clip.OPENAI_DATASET_STD)))
        self.model, self.tokenizer, self.identity = model, tokenizer, identity
        self._freeze()

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _create(open_clip, name: str, pretrained):
        import logging

        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # open_clip warns "initialized randomly" before we load weights
        try:
            return open_clip.create_model(name, pretrained=pretrained, load_weights=True, pretrained_text=False)
        finally:
            root.setLevel(level)

    @staticmethod
    def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
        """Load a checkpoint file into ``model`` strictly (see :func:`read_state_dict`).

        Raises:
            CheckpointError: unreadable file or missing / unexpected / mis-shaped keys (named).
        """
        state = read_state_dict(path)
        if (
            "logit_scale" in state
            and hasattr(model, "logit_scale")
            and state["logit_scale"].ndim != model.logit_scale.ndim
        ):
            state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
        load_state_dict_strict(
            model,
            state,
            f"teacher checkpoint {path}",
            hint="name the architecture the file was trained with: NAME@FILE",
        )

    @staticmethod
    def _advice(model_name: str, tag: str) -> str:
        return (
            "Nothing was substituted. Download the checkpoint on a machine with network access (open_clip "
            f"`create_model('{model_name}', pretrained='{tag}')` caches it) and pass the file: "
            f"OpenCLIPTeacher('{model_name}', pretrained='/path/to/open_clip_pytorch_model.bin'), "
            f"load_teacher('{model_name}@/path/to/file') or --teacher '{model_name}@/path/to/file'; "
            "or use the offline teacher 'synthetic-clip'."
        )

    def _resolve_tag(self, open_clip, model_name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
        offline = self.local_files_only or is_offline()
        hub = tag_cfg.get("hf_hub", "")
        tried = []
        if hub:
            if hub.endswith("/"):
                repo, filename = hub[:-1], "open_clip_pytorch_model.bin"
            else:
                repo, filename = os.path.split(hub)
            from huggingface_hub import hf_hub_download

            names = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
            for name in [*names, filename]:
                try:
                    return hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=offline)
                except Exception as exc:  # noqa: BLE001 - any Hub / network failure means "unavailable"
                    tried.append(f"hf://{repo}/{name} ({type(exc).__name__})")
        elif tag_cfg.get("url"):
            url = tag_cfg["url"]
            if not offline:
                try:
                    return open_clip.download_pretrained_from_url(url, cache_dir=cache_dir)
                except Exception as exc:  # noqa: BLE001 - any Hub / network failure means "unavailable"
                    tried.append(f"{url} ({type(exc).__name__}: {exc})")
            else:
                tried.append(f"{url} (offline)")
        mode = (
            "offline (HF_HUB_OFFLINE set, or local_files_only), not in the local cache"
            if offline
            else "download failed"
        )
        raise WeightsUnavailableError(
            f"open_clip teacher {model_name} / {tag}: weights unavailable, {mode}; tried {', '.join(tried) or 'nothing'}. "
            + self._advice(model_name, tag)
        )

    def _hub_folder(self, repo: str, cache_dir: str | None) -> str:
        from huggingface_hub import hf_hub_download

        offline = self.local_files_only or is_offline()
        try:
            config = hf_hub_download(repo, "open_clip_config.json", cache_dir=cache_dir, local_files_only=offline)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"open_clip teacher hf-hub:{repo}: open_clip_config.json unavailable "
                f"({'offline, not cached' if offline else type(exc).__name__}). Nothing was substituted. Download the "
                "repo where there is network and pass its weights as ARCH@/path/to/open_clip_pytorch_model.bin, "
                "or use the offline teacher 'synthetic-clip'."
            ) from exc
        errors = []
        for name in (
            "open_clip_model.safetensors",
            "open_clip_pytorch_model.safetensors",
            "open_clip_pytorch_model.bin",
        ):
            try:
                hf_hub_download(repo, name, cache_dir=cache_dir, local_files_only=offline)
                return str(Path(config).parent)
            except Exception as exc:  # noqa: BLE001 - any Hub / network failure means "unavailable"
                errors.append(f"{name} ({type(exc).__name__})")
        raise WeightsUnavailableError(
            f"open_clip teacher hf-hub:{repo}: no weights file available ({', '.join(errors)}"
            f"{'; offline' if offline else ''}). Nothing was substituted."
        )


__all__ = [
    "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "OpenCLIPTeacher", "file_checksum", "import_open_clip", "read_state_dict",
]  # fmt: skip
