"""Convert Uni3D point-cloud checkpoints into CLIP-GS weights (timm ``checkpoint_filter_fn`` style).

Uni3D (Zhou et al., ICLR 2024; weights on the Hub in ``BAAI/Uni3D``, e.g.
``modelzoo/uni3d-b/model.pt``) stores its state dict under ``checkpoint["module"]`` with keys
``logit_scale`` and ``point_encoder.*``. The published files are DeepSpeed model-state pickles:
beside ``module`` they hold DeepSpeed's own entries (``ds_config``, ``ds_version``,
``param_shapes``, ``buffer_names``, ...) and the training script's client state.
:func:`load_checkpoint_file` reads them with ``torch.load(weights_only=True)``, allowing only the
harmless non-tensor types such entries need (:func:`harmless_globals`).
:func:`convert_uni3d_state_dict` is a pure function
from that state dict to a :class:`~clip_gs.CLIPGS` state dict; the Gaussian branch, which Uni3D
does not have, is absent from its output and keeps its own initialisation (its output projection
starts at zero, so a converted model starts as Uni3D). :func:`load_uni3d` builds the model;
users reach it through :func:`~clip_gs.model.create_model` (named models are in
:mod:`clip_gs.model.pretrained`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from clip_gs.errors import CheckpointError
from clip_gs.model.config import MODEL_CONFIGS, UNI3D_SIZES, CLIPGSConfig
from clip_gs.state_dicts import load_state_dict_strict

# Uni3D prefix -> CLIPGS prefix (longest prefixes first)
_RENAMES: tuple[tuple[str, str], ...] = (
    ("point_encoder.encoder.first_conv.", "encoder.tokenizer.point_encoder.first_conv."),
    ("point_encoder.encoder.second_conv.", "encoder.tokenizer.point_encoder.second_conv."),
    ("point_encoder.encoder2trans.", "encoder.tokenizer.point_proj."),
    ("point_encoder.trans2embed.", "encoder.head."),
    ("point_encoder.pos_embed.", "encoder.pos_embed."),
    ("point_encoder.visual.blocks.", "encoder.blocks."),
    ("point_encoder.cls_token", "encoder.cls_token"),
    ("point_encoder.cls_pos", "encoder.cls_pos"),
    ("logit_scale", "logit_scale"),
)

# parts of the timm image model inside Uni3D that a point encoder never uses
_DROPPED: tuple[str, ...] = (
    "point_encoder.visual.patch_embed.",
    "point_encoder.visual.pos_embed",
    "point_encoder.visual.cls_token",
    "point_encoder.visual.head.",
    "point_encoder.visual.rope.",
)

GAUSSIAN_BRANCH_PREFIX = "encoder.tokenizer.gaussian_encoder."
"""CLIPGS keys that Uni3D does not provide (documented as missing after conversion)."""


def unwrap_uni3d_checkpoint(checkpoint: Mapping) -> dict[str, Tensor]:
    """The state dict inside a Uni3D checkpoint: ``checkpoint["module"]`` (DeepSpeed),
    ``checkpoint["state_dict"]``, ``checkpoint["model"]`` or the mapping itself, with any ``module.`` prefix removed."""
    for key in ("module", "state_dict", "model"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    state = {}
    for key, value in checkpoint.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"Uni3D checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def convert_uni3d_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a Uni3D state dict (keys ``logit_scale`` and ``point_encoder.*``) onto CLIPGS keys.

    - ``point_encoder.encoder.*`` (mini-PointNet) -> ``encoder.tokenizer.point_encoder.*``
    - ``point_encoder.encoder2trans`` -> ``encoder.tokenizer.point_proj``
    - ``point_encoder.visual.blocks.*`` (timm EVA blocks) -> ``encoder.blocks.*``
    - ``point_encoder.visual.norm`` or ``.fc_norm`` (whichever the writing timm version made a
      LayerNorm) -> ``encoder.norm``
    - ``point_encoder.trans2embed`` -> ``encoder.head``; ``pos_embed``, ``cls_token``,
      ``cls_pos`` and ``logit_scale`` keep their names.
    - Dropped: the image model's ``patch_embed``, ``pos_embed``, ``cls_token``, ``head`` and
      RoPE buffers.

    Raises:
        CheckpointError: for keys that are neither mapped nor known to be unused, or for a
            checkpoint with two final norms.
    """
    state = unwrap_uni3d_checkpoint(state_dict)
    out: dict[str, Tensor] = {}
    unexpected = []
    norms = {
        name: {k: v for k, v in state.items() if k.startswith(f"point_encoder.visual.{name}.")}
        for name in ("norm", "fc_norm")
    }
    if norms["norm"] and norms["fc_norm"]:
        raise CheckpointError(
            "Uni3D checkpoint has both visual.norm and visual.fc_norm weights; expected exactly one final LayerNorm"
        )
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        for name in ("norm", "fc_norm"):
            prefix = f"point_encoder.visual.{name}."
            if key.startswith(prefix):
                out["encoder.norm." + key.removeprefix(prefix)] = value
                break
        else:
            for old, new in _RENAMES:
                if key.startswith(old):
                    out[new + key.removeprefix(old)] = value
                    break
            else:
                unexpected.append(key)
    if unexpected:
        raise CheckpointError(
            f"Uni3D checkpoint has {len(unexpected)} key(s) with no CLIP-GS counterpart: {sorted(unexpected)[:10]}"
        )
    return out


def harmless_globals() -> list:
    """Non-tensor types that DeepSpeed checkpoints and training scripts' client state hold, and
    that ``torch.load(weights_only=True)`` refuses by default, but whose unpickling runs no code
    of the file's choosing: ``argparse.Namespace`` (an attribute bag, e.g. saved ``args``), NumPy
    scalars and their dtypes (e.g. a best accuracy as ``numpy.float64``), under NumPy 2's names
    and under the ``numpy.core`` names that files pickled with NumPy 1.x carry. NumPy arrays are
    not included (object arrays can carry arbitrary pickles)."""
    import argparse

    allowed: list = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return allowed
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    allowed += [multiarray.scalar, np.dtype, (multiarray.scalar, "numpy.core.multiarray.scalar")]
    allowed += [type(np.dtype(name)) for name in ("bool", "int32", "int64", "float16", "float32", "float64")]
    return allowed


def _resolve_global(name: str | object) -> object:
    """``"package.module.Name"`` -> ``(the object, that name)`` (imports the module; only for names
    a user trusts). Registering the name too lets a file refer to the object under an alias
    (e.g. ``numpy.core`` names that now live in ``numpy._core``)."""
    if not isinstance(name, str):
        return name
    module, _, attr = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr), name
    except (ImportError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"trusted global {name!r} cannot be imported: {exc}") from exc


def load_checkpoint_file(path: str | os.PathLike[str], trusted_globals: Sequence[str | object] = ()) -> dict:
    """``torch.load`` a checkpoint safely (``weights_only=True``), mapping failures to
    :class:`CheckpointError` naming the file.

    Beside tensors and plain containers, the :func:`harmless_globals` are allowed (what
    DeepSpeed model-state files such as Uni3D's ``model.pt`` need).

    Args:
        trusted_globals: the explicit opt-in for a file you trust that holds other objects:
            their dotted names (``"mypackage.config.TrainArgs"``) or the objects themselves.
            Only these are allowed to be constructed while loading; the error for an unsafe
            file lists exactly the names it needs. Never pass names from a file you do not trust.

    Raises:
        CheckpointError: a missing, corrupt or non-mapping file, or one holding objects outside
            the allowed set (named in the message, with the opt-in to use).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    allowed = harmless_globals() + [_resolve_global(g) for g in trusted_globals]
    try:
        with torch.serialization.safe_globals(allowed):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / unsafe pickles
        unsafe = _unsafe_globals(path, allowed)
        if unsafe:
            raise CheckpointError(
                f"{path}: the checkpoint holds objects that are not safe to unpickle: {unsafe}. "
                "Nothing was loaded. If you trust this file, allow exactly these with "
                f"create_model(..., trusted_globals={unsafe!r}) (they are then constructed while loading, "
                "with the file's data)"
            ) from exc
        raise CheckpointError(f"{path}: cannot load checkpoint safely (weights_only=True): {exc}") from exc
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: checkpoint is a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def _unsafe_globals(path: Path, allowed: Sequence[object]) -> list[str]:
    """Globals of the pickle in ``path`` that are neither allowed by default nor in ``allowed``;
    empty when the file cannot be read as a torch checkpoint at all."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []
    allowed_names = {
        g[1] if isinstance(g, tuple) else f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', '')}"
        for g in allowed
    }
    return sorted(n for n in names if n not in allowed_names)


def infer_uni3d_size(state_dict: Mapping[str, Tensor]) -> str:
    """The Uni3D size (tiny ... giant) whose width and depth match a converted state dict."""
    if "encoder.cls_token" not in state_dict:
        raise CheckpointError("cannot infer the Uni3D size: no point_encoder.cls_token in the checkpoint")
    width = state_dict["encoder.cls_token"].shape[-1]
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.blocks.")})
    for size, name in UNI3D_SIZES.items():
        config: CLIPGSConfig = MODEL_CONFIGS[name]
        if config.width == width and config.depth == depth:
            return size
    raise CheckpointError(f"no Uni3D size has width {width} and depth {depth}")


def load_uni3d(
    checkpoint: str | os.PathLike | Mapping,
    size: str | None = None,
    trusted_globals: Sequence[str | object] = (),
    **config_overrides,
):
    """A :class:`~clip_gs.CLIPGS` initialised from a Uni3D checkpoint, as the paper does.

    Args:
        checkpoint: a local file, or a state dict (or the raw checkpoint dict).
        size: ``tiny``, ``small``, ``base``, ``large`` or ``giant``; inferred from the weights when None.
        trusted_globals: explicit opt-in for a trusted file holding objects beyond tensors, containers
            and :func:`harmless_globals` (see :func:`load_checkpoint_file`; the error names them).
        config_overrides: CLIPGSConfig fields, e.g. ``gaussian_branch=False`` for the P&C baseline
            (exactly Uni3D's point encoder), ``num_gaussians``, ``num_groups``, ``group_size``.

    Raises:
        CheckpointError: unreadable file, unknown keys, shape mismatch, unknown size.
    """
    from clip_gs.model.clipgs import CLIPGS
    from clip_gs.model.config import get_model_config

    source = "Uni3D state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)
    raw = checkpoint if isinstance(checkpoint, Mapping) else load_checkpoint_file(checkpoint, trusted_globals)
    state = convert_uni3d_state_dict(raw)
    if size is None:
        size = infer_uni3d_size(state)
    elif size not in UNI3D_SIZES:
        raise CheckpointError(f"unknown Uni3D size {size!r}; sizes are {list(UNI3D_SIZES)}")
    model = CLIPGS(get_model_config(UNI3D_SIZES[size], **{"uni3d_model": source, **config_overrides}))
    load_state_dict_strict(model, state, source, allowed_missing=GAUSSIAN_BRANCH_PREFIX)
    return model
