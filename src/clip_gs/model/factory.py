"""`create_model`: the one way to make a CLIP-GS model (open_clip's and timm's shape).

Nothing here imports Lightning; the training module makes its model with :func:`create_model` too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from clip_gs.errors import ConfigError
from clip_gs.model.clipgs import CLIPGS, LOAD_TIME_OVERRIDES
from clip_gs.model.config import MODEL_CONFIGS, UNI3D_SIZES, get_model_config
from clip_gs.model.precision import FUSED_PRECISIONS, resolve_device
from clip_gs.model.pretrained import PRETRAINED, checkpoint_file, resolve_model_reference


def list_models(pretrained: bool | None = None) -> list[str]:
    """Names :func:`create_model` takes: the registered configurations (``clip-gs-tiny`` ...
    ``clip-gs-giant``, random weights) and the named pretrained models (``uni3d-*``, Uni3D's published
    weights, :data:`~clip_gs.model.pretrained.PRETRAINED`).

    Args:
        pretrained: True: only names with published weights; False: only configurations; None: both.
    """
    configs = [] if pretrained is True else list(MODEL_CONFIGS)
    named = [] if pretrained is False else list(PRETRAINED)
    return configs + named


def create_model(
    name_or_path: str | os.PathLike,
    pretrained: bool | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    trusted_globals: Sequence[str] = (),
    **overrides,
) -> CLIPGS:
    """Make a :class:`~clip_gs.CLIPGS`.

    Args:
        name_or_path: one of
            - a registered configuration (``clip-gs-base``, see :func:`list_models`): random weights
              unless ``pretrained`` names weights to start from;
            - a named pretrained model (``uni3d-b-no-lvis``, ...): its weights, converted once and
              cached (:mod:`clip_gs.model.pretrained`); ``pretrained=False`` gives its architecture
              with random weights;
            - a model folder written by ``save_pretrained`` / ``clip-gs fit``, or a Hub repo id;
            - a Uni3D checkpoint: a local ``model.pt`` or ``hf://owner/repo/path/model.pt``.
        pretrained: for a configuration, the weights to initialise it from: a named pretrained model
            or a Uni3D checkpoint (the paper's initialisation: the transformer and point branch from
            Uni3D, the Gaussian branch new, its output zero so the model starts as Uni3D). True or
            None for anything that has weights; False for random weights.
        device: where the model goes: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when available); None leaves
            it where it was built (the CPU, or the ``torch.device`` context's device).
        precision: the precision :meth:`~clip_gs.CLIPGS.encode` runs in by default
            (:data:`~clip_gs.model.precision.FUSED_PRECISIONS`; ``"auto"``: bfloat16 where the device
            multiplies it natively). The weights stay float32.
        trusted_globals: for a Uni3D checkpoint holding other pickled objects, the explicit opt-in
            (see :func:`~clip_gs.model.uni3d.load_checkpoint_file`).
        overrides: ``CLIPGSConfig`` fields. Weights loaded from a folder take only
            :data:`~clip_gs.model.clipgs.LOAD_TIME_OVERRIDES`.

    Returns:
        The model in eval mode (call ``.train()`` to train it; Lightning does).

    Raises:
        ConfigError: an unknown name, ``pretrained`` that does not apply, an unknown precision or override.
        CheckpointError / WeightsUnavailableError: weights that cannot be read or fetched (the message
            names the file and how to get it).
    """
    from clip_gs.model.uni3d import load_uni3d

    if precision not in FUSED_PRECISIONS:
        raise ConfigError(f"precision must be one of {FUSED_PRECISIONS}, got {precision!r}")
    name = str(name_or_path)
    if name in MODEL_CONFIGS:
        if pretrained is None or pretrained is False:
            model = CLIPGS(get_model_config(name, **overrides))
        elif pretrained is True:
            raise ConfigError(
                f"{name} is a configuration without published weights; give pretrained=<a name in "
                f"list_models(pretrained=True) or a Uni3D checkpoint>, or pick one of {list(PRETRAINED)}"
            )
        else:
            size = {v: k for k, v in UNI3D_SIZES.items()}.get(name)
            model = load_uni3d(checkpoint_file(pretrained), size=size, trusted_globals=trusted_globals,
                               **{"name": name, "uni3d_model": str(pretrained), **overrides})  # fmt: skip
    elif name in PRETRAINED and pretrained is False:
        model = CLIPGS(get_model_config(UNI3D_SIZES[PRETRAINED[name].size], gaussian_branch=False,
                                        **{"name": name, **overrides}))  # fmt: skip
    else:
        if pretrained not in (None, True):
            raise ConfigError(
                f"pretrained={pretrained!r} applies to a configuration name; {name} brings its own weights"
            )
        bad = sorted(set(overrides) - set(LOAD_TIME_OVERRIDES))
        if bad:
            raise ConfigError(f"{name}: weights loaded from a model folder take only the overrides "
                              f"{list(LOAD_TIME_OVERRIDES)}, got {bad}")  # fmt: skip
        model = CLIPGS.from_pretrained(resolve_model_reference(name, trusted_globals), **overrides)
    model.precision = precision
    if device is not None:
        model = model.to(resolve_device(device))
    return model.eval()


__all__ = ["create_model", "list_models"]
