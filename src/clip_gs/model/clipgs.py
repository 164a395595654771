"""`CLIPGS`: the user-facing model (an ``nn.Module`` with Hugging Face Hub save / load)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from clip_gs.errors import CheckpointError, ConfigError, GaussianFormatError, WeightsUnavailableError
from clip_gs.gaussians import GaussianCloud, load_gaussians
from clip_gs.model.config import UNI3D_SIZES, CLIPGSConfig, get_model_config
from clip_gs.model.encoder import GaussianEncoder
from clip_gs.model.hub import HUB_PREFIX, hub_download, parse_hub_reference
from clip_gs.model.precision import resolve_precision
from clip_gs.model.uni3d import (
    GAUSSIAN_BRANCH_PREFIX,
    UNI3D_CHECKPOINTS,
    convert_uni3d_state_dict,
    infer_uni3d_size,
    load_checkpoint_file,
)

GaussianInput = GaussianCloud | str | os.PathLike
WEIGHTS_NAME = "model.safetensors"


def preprocess_cloud(cloud: GaussianCloud, config: CLIPGSConfig, seed: int = 0) -> Tensor:
    """One object -> the encoder input ``[num_gaussians, 19]``.

    Resample to ``config.num_gaussians`` (seeded, input order kept, unchanged when the count
    already matches), normalise to the unit sphere (Uni3D's ``pc_norm``), and take
    :meth:`GaussianCloud.features`.
    """
    if cloud.batch_shape:
        raise GaussianFormatError("preprocess_cloud takes one object; unbind() a batched cloud first")
    sampled = cloud.resample(config.num_gaussians, seed=seed).to(dtype=torch.float32)
    return sampled.normalized().features(config.scale_activation)


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, Tensor], source: str, allowed_missing: str = ""
) -> None:
    """Load ``state`` into ``model``; any unexpected key, any missing key (other than those
    starting with ``allowed_missing``) or any shape mismatch raises :class:`CheckpointError`."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (allowed_missing and k.startswith(allowed_missing))]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {missing[:8]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:8]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) {shapes[:4]}")
        raise CheckpointError(f"{source}: weights do not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)


class CLIPGS(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="clip-gs",
    tags=["3d-gaussian-splatting", "clip", "zero-shot-classification", "feature-extraction"],
    license="apache-2.0",
):
    """CLIP-GS: 3DGS objects -> unit vectors in the embedding space of a frozen CLIP.

    Build one with :meth:`from_config_name` (random weights), :meth:`from_uni3d` (the paper's
    initialisation from a Uni3D point-cloud checkpoint) or :meth:`from_pretrained` (a Hub repo id
    or a local folder written by ``save_pretrained``: ``config.json`` + ``model.safetensors``).

    Args:
        config: a :class:`CLIPGSConfig` or its dict form (``config.json``).
    """

    def __init__(self, config: dict | CLIPGSConfig | None = None):
        super().__init__()
        if config is None:
            config = get_model_config("clip-gs-base")
        elif isinstance(config, Mapping):
            config = CLIPGSConfig.from_dict(dict(config))
        self.config = config
        self.encoder = GaussianEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config_name(cls, name: str, **overrides) -> CLIPGS:
        """A randomly initialised model of a registered configuration (see ``list_models()``)."""
        return cls(get_model_config(name, **overrides))

    @classmethod
    def from_uni3d(
        cls,
        checkpoint: str | os.PathLike | Mapping | None = None,
        size: str | None = None,
        **config_overrides,
    ) -> CLIPGS:
        """Initialise from a Uni3D checkpoint, as the paper does.

        Args:
            checkpoint: a file path, a state dict (or the raw checkpoint dict), or a Hub file
                reference ``"hf://BAAI/Uni3D/modelzoo/uni3d-b/model.pt"``. None takes the
                published checkpoint of ``size`` (:data:`UNI3D_CHECKPOINTS`).
            size: ``tiny``, ``small``, ``base``, ``large`` or ``giant``; inferred from the
                weights when omitted (``checkpoint`` must then be given).
            config_overrides: CLIPGSConfig fields, e.g. ``gaussian_branch=False`` for the
                P&C baseline, ``num_gaussians``, ``num_groups``, ``group_size``, ``embed_dim``.

        Raises:
            CheckpointError: unreadable file, unknown keys, shape mismatch.
            WeightsUnavailableError: a Hub reference that cannot be fetched (e.g. offline).
        """
        if checkpoint is None:
            if size is None:
                raise CheckpointError("from_uni3d needs a checkpoint or a size")
            checkpoint = UNI3D_CHECKPOINTS[_check_size(size)]
        source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "Uni3D state dict"
        if isinstance(checkpoint, str) and checkpoint.startswith(HUB_PREFIX):
            repo_id, filename = parse_hub_reference(checkpoint)
            checkpoint = hub_download(repo_id, filename)
        raw = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint_file(checkpoint)
        state = convert_uni3d_state_dict(raw)
        size = _check_size(size) if size is not None else infer_uni3d_size(state)
        model = cls(get_model_config(UNI3D_SIZES[size], **config_overrides))
        load_state_dict_strict(model, state, source, allowed_missing=GAUSSIAN_BRANCH_PREFIX)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> CLIPGS:
        """Load a model saved with ``save_pretrained``: a local folder or a Hub repo id.

        Keyword arguments are those of ``huggingface_hub``'s ``from_pretrained`` (``revision``,
        ``cache_dir``, ``local_files_only``, ``token``, ``map_location`` ...). Weights must match
        the architecture in ``config.json`` exactly.

        Raises:
            CheckpointError: missing ``config.json``, corrupt or mismatched weights.
            WeightsUnavailableError: a Hub repo that cannot be reached (offline, no cache).
        """
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (LocalEntryNotFoundError, HfHubHTTPError) as exc:
            raise WeightsUnavailableError(
                f"cannot fetch {pretrained_model_name_or_path!r} from the Hub (offline and not cached?): {exc}"
            ) from exc

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        config: dict | CLIPGSConfig | None = None,
        **model_kwargs,
    ) -> CLIPGS:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        local = Path(model_id)
        if config is None:
            where = f"{local / 'config.json'}" if local.is_dir() else f"Hub repo {model_id!r}"
            error = CheckpointError if local.is_dir() else WeightsUnavailableError
            raise error(f"no config.json found in {where}; cannot tell the architecture")
        if local.is_dir():
            weights = local / WEIGHTS_NAME
            if not weights.is_file():
                raise CheckpointError(f"{local}: no {WEIGHTS_NAME} next to config.json")
        else:
            weights = hub_download(
                model_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir,
                force_download=force_download, local_files_only=local_files_only, token=token,
            )  # fmt: skip
        model = cls(config=config)
        try:
            state = load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file: {exc}") from exc
        load_state_dict_strict(model, state, str(weights))
        return model.eval()

    # ------------------------------------------------------------------ inference
    def forward(self, features: Tensor, precision: str = "fp32") -> Tensor:
        """``features: [B, N, 19]`` (see :func:`preprocess_cloud`) -> ``[B, embed_dim]`` unit vectors.

        ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"auto"``; see
        :meth:`GaussianEncoder.forward`.
        """
        return self.encoder(features, precision=precision)

    @torch.inference_mode()
    def encode(
        self,
        inputs: GaussianInput | Sequence[GaussianInput],
        batch_size: int = 8,
        seed: int = 0,
        progress: bool | None = None,
        precision: str = "auto",
        num_workers: int | None = None,
    ) -> Tensor:
        """Embed 3DGS objects: L2-normalised vectors in the CLIP space.

        Files are read and preprocessed (:func:`preprocess_cloud`) by a ``DataLoader`` whose
        worker processes run ahead of the encoder, so loading overlaps with the forward passes.
        The forward passes take the encoder's inference path (see
        :meth:`GaussianEncoder.forward`); ``self.encoder.set_compile()`` opts into
        ``torch.compile`` for its blocks.

        Args:
            inputs: a GaussianCloud (unbatched or batched), a file path (any supported 3DGS
                format), or a list of them.
            batch_size: objects per forward pass.
            seed: seed of the resampling to ``config.num_gaussians`` (the same for every object).
            progress: show a progress bar (default: when there is more than one batch).
            precision: ``"auto"`` (default: bfloat16 where the device multiplies it natively,
                float32 elsewhere), ``"bf16"`` or ``"fp32"`` (exactly ``self(features)`` in eval
                mode under ``torch.no_grad()``). See :mod:`clip_gs.model.precision`.
            num_workers: loader processes (run at the lowest scheduling priority, so they use
                the cycles the encoder leaves). None: :func:`default_num_workers` (0 when
                there is no spare core, as on a 2-core CPU running 2 torch threads; 0 means
                loading in this process). The embeddings do not depend on it.

        Returns:
            ``[embed_dim]`` float32 for a single object (a cloud or a path), else ``[B, embed_dim]``.

        Raises:
            GaussianFormatError (or another :class:`~clip_gs.errors.ClipGSError`): a file that
                cannot be loaded; the message names the file.
            ConfigError: an unknown ``precision``.
        """
        single = isinstance(inputs, (GaussianCloud, str, os.PathLike)) and not (
            isinstance(inputs, GaussianCloud) and inputs.batch_shape
        )
        items = list(_expand_inputs([inputs] if single else inputs))
        if not items:
            raise ConfigError("encode() got no inputs")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        device = next(self.parameters()).device
        resolve_precision(precision, device)  # fail before any loading
        num_batches = -(-len(items) // batch_size)
        if num_workers is None:
            num_workers = default_num_workers(device, num_batches)
        if num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
        loader = DataLoader(
            _PreprocessedObjects(items, self.config, seed),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=torch.stack,
            pin_memory=device.type == "cuda",
            prefetch_factor=2 if num_workers > 0 else None,
            worker_init_fn=_loader_worker_init,
        )
        modes = {module: module.training for module in self.modules()}  # restored one by one
        self.eval()
        loader_iter = iter(loader)
        try:
            batches = loader_iter
            show = progress if progress is not None else num_batches > 1
            if show:
                from tqdm.auto import tqdm

                batches = tqdm(batches, total=num_batches, desc="encode", unit="batch")
            outputs = [self(features.to(device, non_blocking=True), precision=precision) for features in batches]
        finally:
            for module, training in modes.items():
                module.training = training
            # Stop the loader processes now, also when a file failed to load: left to garbage
            # collection, their low-priority shutdown would wait on whatever runs next.
            shutdown = getattr(loader_iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        embeddings = torch.cat(outputs).float().cpu()
        return embeddings[0] if single else embeddings


def _loader_worker_init(worker_id: int) -> None:
    """Loader processes yield the CPU to the encoder's threads (lowest scheduling priority)."""
    if hasattr(os, "nice"):
        os.nice(19)


def default_num_workers(device: torch.device, num_batches: int) -> int:
    """Loader processes ``encode`` uses when ``num_workers=None``.

    0 for a single batch (nothing to overlap). On CUDA the CPU is free while the GPU computes:
    up to 4 workers. On CPU the encoder's threads already use ``torch.get_num_threads()`` cores;
    workers on those same cores stall the encoder's synchronised threads more than loading in
    process costs (measured on 2 cores: 0.85x vs 0.92x of the encoder-only throughput), so only
    spare cores get workers, at most 2.
    """
    if num_batches <= 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return min(4, cores)
    return max(0, min(2, cores - torch.get_num_threads()))


class _PreprocessedObjects(Dataset):
    """Items (clouds or paths) -> encoder inputs ``[num_gaussians, 19]`` (:func:`preprocess_cloud`)."""

    def __init__(self, items: Sequence[GaussianInput], config: CLIPGSConfig, seed: int):
        self.items, self.config, self.seed = items, config, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Tensor:
        item = self.items[index]
        cloud = item if isinstance(item, GaussianCloud) else load_gaussians(item)
        return preprocess_cloud(cloud, self.config, self.seed)


def _expand_inputs(inputs: Iterable[GaussianInput]) -> Iterable[GaussianInput]:
    """Unbind batched clouds, and move clouds to the CPU: preprocessing runs there (possibly in
    forked loader processes, which cannot touch CUDA), and batches move to the model's device."""
    for item in inputs:
        if isinstance(item, GaussianCloud):
            clouds = item.unbind() if item.batch_shape else [item]
            yield from (c.to("cpu") for c in clouds)
        else:
            yield item


def _check_size(size: str) -> str:
    if size not in UNI3D_SIZES:
        raise CheckpointError(f"unknown Uni3D size {size!r}; sizes are {list(UNI3D_SIZES)}")
    return size
