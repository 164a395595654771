"""`CLIPGS`: the user-facing model (an ``nn.Module`` with Hugging Face Hub save / load)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from clip_gs.errors import CheckpointError, ConfigError, FileNotOnHubError
from clip_gs.hub.card import LIBRARY_NAME, LICENSE, TAGS
from clip_gs.hub.downloads import hub_download, model_location
from clip_gs.hub.folder import CONFIG_NAME, TEACHER_NAME, WEIGHTS_NAME, write_teacher_json
from clip_gs.model.config import CLIPGSConfig, get_model_config
from clip_gs.model.encoder import GaussianEncoder
from clip_gs.model.folder import card_teacher_spec, read_model_config, read_teacher_record
from clip_gs.model.fused import Encoded, FusedEncoder
from clip_gs.model.inputs import GaussianInput, Loader
from clip_gs.state_dicts import check_state_shapes, check_weight_dtypes, load_state_dict_strict

LOAD_TIME_OVERRIDES = ("num_gaussians", "num_groups", "group_size", "fps_start", "drop_path_rate", "patch_dropout")
"""``CLIPGSConfig`` fields ``from_pretrained`` accepts as keyword overrides: they change no
parameter shape, so the saved weights still load (tokenizer sampling and grouping, training-only
regularisation). Changing one changes the embeddings; the model's ``config`` records the new
value, and ``save_pretrained`` writes it."""


class CLIPGS(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    tags=list(TAGS),
    license=LICENSE,
):
    """CLIP-GS: 3DGS objects -> unit vectors in the embedding space of a frozen CLIP.

    Make one with :func:`~clip_gs.model.create_model` (a registered configuration, a named pretrained
    model, a model folder, a Hub repo id or a Uni3D checkpoint); :meth:`from_pretrained` is the Hub
    mixin's loader of a folder or repo written by ``save_pretrained`` (``config.json`` +
    ``model.safetensors``) that ``create_model`` uses.
    ``save_pretrained`` and :meth:`push_to_hub` write the clip-gs model card
    (:mod:`clip_gs.hub.card`), not the mixin's generic one.

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
        self.precision = "auto"  # what encode runs in by default (create_model's precision=)
        self.encoder = GaussianEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> CLIPGS:
        """Load a model saved with ``save_pretrained``: a local folder or a Hub repo id.

        Keyword arguments: those of ``huggingface_hub``'s ``from_pretrained`` (``revision``,
        ``cache_dir``, ``local_files_only``, ``token``, ``force_download``), ``map_location``
        (the device the model is put on, default ``"cpu"``), and the configuration fields in
        :data:`LOAD_TIME_OVERRIDES` (e.g. ``num_gaussians=2048``).

        Nothing is built until the folder checks out: ``config.json`` is read by
        :func:`~clip_gs.model.folder.read_model_config` (every field, typed, within
        :data:`~clip_gs.model.config.SIZE_CAPS`), then the header of ``model.safetensors`` (names,
        shapes and dtypes, no data) must match that architecture exactly (:func:`check_weights_file`);
        the loaded values must be finite (:func:`~clip_gs.state_dicts.check_finite`).

        Raises:
            ConfigError: any other keyword (a typo, or a field that changes the architecture), a name the
                Hub rejects as a repo id, an invalid ``config.json`` or override (names the file and field).
            CheckpointError: a file or a missing folder (:func:`~clip_gs.hub.downloads.model_location`),
                missing ``config.json``, corrupt or mismatched weights, weights of a non-float dtype or
                holding NaN / infinite values (names the file and the tensor).
            WeightsUnavailableError: a Hub repo that cannot be reached (offline, no cache).
        """
        hub_options = {"revision", "cache_dir", "local_files_only", "token", "force_download", "map_location"}
        unknown = sorted(set(kwargs) - hub_options - set(LOAD_TIME_OVERRIDES))
        if unknown:
            fields = {f for f in CLIPGSConfig.__dataclass_fields__}
            architecture = [k for k in unknown if k in fields]
            detail = (
                f"{architecture} change the architecture and cannot be overridden at load time; "
                if architecture
                else ""
            )
            raise ConfigError(
                f"from_pretrained({str(pretrained_model_name_or_path)!r}): unexpected keyword(s) {unknown}; {detail}"
                f"accepted: {sorted(hub_options)} and the config overrides {list(LOAD_TIME_OVERRIDES)}"
            )
        overrides = {k: kwargs.pop(k) for k in LOAD_TIME_OVERRIDES if k in kwargs}
        options = {"revision": None, "cache_dir": None, "force_download": False, "local_files_only": False,
                   "token": None} | kwargs  # fmt: skip
        return cls._from_pretrained(model_id=model_location(pretrained_model_name_or_path), config_overrides=overrides,
                                    **options)  # fmt: skip

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
        map_location: str | torch.device = "cpu",
        config_overrides: Mapping | None = None,
    ) -> CLIPGS:
        """The loading behind :meth:`from_pretrained` (the ``PyTorchModelHubMixin`` hook), on a checked folder
        or Hub repo id; see :meth:`from_pretrained`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        local = Path(model_id)
        if local.is_dir():
            config_path, weights = local / CONFIG_NAME, local / WEIGHTS_NAME
            if not config_path.is_file():
                raise CheckpointError(f"no {CONFIG_NAME} found in {config_path}; cannot tell the architecture")
            if not weights.is_file():
                raise CheckpointError(f"{local}: no {WEIGHTS_NAME} next to {CONFIG_NAME}")
        else:
            hub = {"revision": revision, "cache_dir": cache_dir, "force_download": force_download,
                   "local_files_only": local_files_only, "token": token}  # fmt: skip
            try:
                config_path = hub_download(model_id, CONFIG_NAME, **hub)
            except FileNotOnHubError as exc:
                raise FileNotOnHubError(f"{exc}; cannot tell the architecture") from exc
            weights = hub_download(model_id, WEIGHTS_NAME, **hub)
        config = read_model_config(config_path)
        if config_overrides:
            try:
                config = config.replace(**config_overrides)
            except ConfigError as exc:
                raise ConfigError(f"from_pretrained({model_id!r}) overrides {dict(config_overrides)}: {exc}") from exc
        check_weights_file(config, weights)
        model = cls(config=config)
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file: {exc}") from exc
        except MemoryError as exc:
            size = Path(weights).stat().st_size
            raise CheckpointError(f"{weights}: not enough memory to load its {size:,} bytes of weights") from exc
        load_state_dict_strict(model, state, str(weights))
        return model.to(map_location).eval()

    # ------------------------------------------------------------------ Hub
    def generate_model_card(self, *args, repo_id: str | None = None, model_name: str | None = None, **kwargs):
        """The clip-gs card of this model's config (what ``save_pretrained`` writes as ``README.md``):
        :func:`clip_gs.hub.card.build_model_card` without training records or evaluation report (the
        training export and ``clip-gs push`` add them from the model folder)."""
        from clip_gs.hub.card import build_model_card

        if args or kwargs:
            raise ConfigError(
                f"CLIPGS model cards take repo_id and model_name only, got {list(kwargs) or list(args)}; the card is "
                "generated by clip_gs.hub.card"
            )
        return build_model_card(self.config.to_dict(), repo_id=repo_id, model_name=model_name)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        teacher: Mapping | None = None,
        datasets: Sequence[str] = (),
        commit_message: str | None = None,
        branch: str | None = None,
        create_pr: bool | None = None,
        config: Mapping | CLIPGSConfig | None = None,
        model_card_kwargs: Mapping | None = None,
    ) -> str:
        """Upload this model to the Hub repo ``repo_id`` (``ORG/NAME``) in one commit; returns the commit URL.

        Writes ``save_pretrained`` into a temporary folder (plus ``teacher.json`` from ``teacher``) and
        pushes it with :mod:`clip_gs.hub.push`: the same folder check (:func:`validate_folder`), generated card
        and single commit as ``clip-gs push``. The card has no evaluation (the model layer reads no evaluation
        report): to push a training export with its curves, metrics and ``clip-gs eval`` report, push the
        folder (``clip-gs push DIR``).

        Args:
            teacher: the teacher identity record (``{"teacher": identity string, "embed_dim": E}``).
            datasets: Hub dataset ids for the card's metadata.
            branch / create_pr: where the commit goes (default the main branch).
            config / model_card_kwargs: accepted for the mixin's ``save_pretrained(push_to_hub=True)``;
                ``config`` must be this model's config, ``model_card_kwargs`` empty (the card is generated).

        Raises:
            HubError: offline, no connection, a refused token (nothing was committed).
            ConfigError: a malformed ``repo_id``, another ``config``, ``model_card_kwargs``.
        """
        import tempfile

        from clip_gs.hub.card import folder_card
        from clip_gs.hub.push import check_repo_id, prepare_upload, push_upload

        check_repo_id(repo_id)
        if config is not None:
            given = config if isinstance(config, CLIPGSConfig) else CLIPGSConfig.from_dict(dict(config))
            if given != self.config:
                raise ConfigError("push_to_hub(config=...) differs from the model's config; the model's is pushed")
        if model_card_kwargs:
            raise ConfigError(
                f"push_to_hub: model_card_kwargs {sorted(model_card_kwargs)} are not used: the clip-gs card is "
                "generated from the model (clip_gs.hub.card)"
            )
        with tempfile.TemporaryDirectory(prefix="clip-gs-push-") as tmp:
            folder = Path(tmp) / repo_id.split("/")[-1]
            self.save_pretrained(folder)
            if teacher is not None:
                write_teacher_json(folder, teacher)
            validate_folder(folder)
            spec = card_teacher_spec(read_teacher_record(folder).teacher)
            card = folder_card(folder, repo_id=repo_id, teacher_spec=spec, datasets=datasets)
            result = push_upload(
                prepare_upload(folder, repo_id, card), private=private, token=token, commit_message=commit_message,
                revision=branch, create_pr=bool(create_pr),
            )  # fmt: skip
        return result.commit_url

    # ------------------------------------------------------------------ running
    def forward(self, features: Tensor) -> Tensor:
        """The module path: ``features: [B, N, 19]`` (:func:`~clip_gs.model.features.preprocess_cloud`)
        -> ``[B, embed_dim]`` unit vectors, with autograd, in the current mode, under whatever
        precision the caller sets (Lightning's ``precision=``, ``torch.autocast``). This is what
        training and validation run; :meth:`fused` is the fast inference form."""
        return self.encoder(features)

    def fused(self, precision: str = "auto") -> FusedEncoder:
        """The explicit fused inference form of the encoder (:class:`~clip_gs.model.fused.FusedEncoder`):
        a snapshot of the current weights with eval-mode semantics, whatever this module's mode.
        Keep it to embed many batches; rebuild it after the weights change.

        Args:
            precision: ``"auto"`` (default: bfloat16 where the device multiplies it natively,
                float32 elsewhere), ``"bf16"`` or ``"fp32"``. See :mod:`clip_gs.model.precision`.

        Raises:
            ConfigError: an unknown ``precision``.
        """
        return self.encoder.fuse(precision)

    def encode_iter(
        self,
        inputs: GaussianInput | Iterable[GaussianInput],
        batch_size: int = 8,
        seed: int = 0,
        on_error: str = "raise",
        progress: bool | None = None,
        precision: str | None = None,
        num_workers: int | None = None,
        loader: Loader | None = None,
    ) -> Iterator[Encoded]:
        """Stream embeddings of files, folders and clouds through ``self.fused(precision)``:
        one :class:`~clip_gs.model.fused.Encoded` (index, id, embedding or error) per object, in
        input order. See :meth:`FusedEncoder.encode_iter` for the arguments; with
        ``on_error="skip"`` bad files are yielded with their reason and the stream goes on."""
        return self.fused(precision or self.precision).encode_iter(
            inputs, batch_size, seed, on_error, progress, num_workers, loader
        )

    def encode(
        self,
        inputs: GaussianInput | Iterable[GaussianInput],
        batch_size: int = 8,
        seed: int = 0,
        progress: bool | None = None,
        precision: str | None = None,
        num_workers: int | None = None,
        loader: Loader | None = None,
    ) -> Tensor:
        """Embed 3DGS objects: L2-normalised float32 vectors in the CLIP space.

        Runs the fused inference form (``self.fused(precision)``, built for this call; keep one
        from :meth:`fused` to embed many times). The module's parameters and mode are untouched.

        Args:
            inputs: a GaussianCloud (unbatched or batched), a file path (any supported 3DGS
                format), a folder (its 3DGS files, recursively, sorted), or a list of them.
            batch_size: objects per forward pass.
            seed: seed of the resampling to ``config.num_gaussians`` (the same for every object).
            progress: show a progress bar (default: when there is more than one batch).
            precision: ``"auto"``, ``"bf16"`` or ``"fp32"``; None (default): the model's ``precision``
                attribute (``create_model(precision=...)``, ``"auto"`` unless set). Float32 equals the
                module path in eval mode up to float rounding; results are deterministic for a
                given batch composition, thread count and machine, but not bitwise across them
                (matrix-product blocking changes with shapes and threads: differences of about
                1e-7).
            num_workers: loader processes; None: :func:`~clip_gs.model.inputs.default_num_workers`
                (0 on a 2-core CPU running 2 torch threads). The embeddings do not depend on it.
            loader: how files are read (None: 3DGS files and meshes, brought to ``config.up_axis``;
                see :meth:`FusedEncoder.encode_iter`).

        Returns:
            ``[embed_dim]`` for a single object (a cloud or a file path), else ``[B, embed_dim]``.

        Raises:
            GaussianFormatError (or another :class:`~clip_gs.errors.ClipGSError`): a file that
                cannot be loaded; the message names the file.
            ConfigError: an unknown ``precision``, no inputs.
        """
        return self.fused(precision or self.precision).encode(inputs, batch_size, seed, progress, num_workers, loader)


def check_weights_file(config: CLIPGSConfig, weights: str | os.PathLike, hint: str = "") -> None:
    """Check the header of a ``model.safetensors`` against ``config`` without reading its tensors.

    The architecture is built on the meta device (no memory), and the header's tensor names and shapes
    must be exactly its parameters' (:func:`~clip_gs.state_dicts.check_state_shapes`) and its dtypes
    floating-point where the parameters are (:func:`~clip_gs.state_dicts.check_weight_dtypes`). A
    safetensors file holds the bytes its header declares, so weights that pass need no more memory than
    the file's size.

    Raises:
        CheckpointError: an unreadable header, other names, shapes or dtypes (names the file and the
            tensors, and ``hint``).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            header = {key: f.get_slice(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
            shapes = {key: tuple(piece.get_shape()) for key, piece in header.items()}
            dtypes = {key: piece.get_dtype() for key, piece in header.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt or unreadable safetensors header: {exc}") from exc
    with torch.device("meta"):
        own = CLIPGS(config).state_dict()
    check_state_shapes({k: v.shape for k, v in own.items()}, shapes, str(weights), CLIPGS.__name__, hint=hint)
    check_weight_dtypes({k: v.dtype for k, v in own.items()}, dtypes, str(weights))


def validate_folder(folder: str | os.PathLike) -> CLIPGSConfig:
    """Check that ``folder`` holds a loadable model; returns its :class:`~clip_gs.model.config.CLIPGSConfig`.

    Reads ``config.json`` and the header of ``model.safetensors`` (tensor names and shapes, not the
    data) and compares them with the architecture of the config, built on the meta device
    (:func:`check_weights_file`); a ``teacher.json`` must be a valid record of the same embedding size.

    Raises:
        CheckpointError: not a folder, no ``model.safetensors``, an unreadable safetensors header,
            weights that do not match the config, a ``teacher.json`` of another embedding size.
        ConfigError: ``config.json`` missing or invalid; an invalid ``teacher.json``
            (:func:`~clip_gs.model.folder.read_teacher_record`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; push takes a folder written by clip-gs fit or save_pretrained")
    config = read_model_config(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_NAME} (the weights) next to {CONFIG_NAME}")
    check_weights_file(config, weights, hint=f"it was not written for this {CONFIG_NAME}")
    dim = read_teacher_record(folder).embed_dim
    if dim is not None and dim != config.embed_dim:
        raise CheckpointError(
            f"{folder / TEACHER_NAME}: the teacher embeds in {dim} dimensions but {folder / CONFIG_NAME} has "
            f"embed_dim {config.embed_dim}"
        )
    return config
