"""The package's one strict weight loader (models and teachers) and its checks.

A weights file is data: its tensor names, shapes and dtypes must be exactly the architecture's and
its values usable. :func:`check_state_shapes` compares names and shapes (given as shapes, so a
safetensors header can be checked against a model built on the meta device before anything is
allocated); :func:`check_weight_dtypes` requires a floating-point dtype of :data:`WEIGHT_DTYPES` where
the architecture holds floating-point values (an integer tensor would be cast into wrong weights; the
architecture's integer buffers, e.g. BatchNorm's ``num_batches_tracked``, take what torch casts);
:func:`check_finite`
refuses NaN and infinite values (they would embed everything as NaN). :func:`load_state_dict_strict`
runs all three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from clip_gs.errors import CheckpointError

WEIGHT_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}
"""Accepted dtypes of floating-point weights (torch dtype -> safetensors name); others (integer,
bool, float8) are refused where the architecture holds floating-point values."""

_SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, **{name: dtype for dtype, name in WEIGHT_DTYPES.items()},
}  # fmt: skip


def _mismatch(source: str, model: str, parts: Sequence[str], hint: str = "") -> CheckpointError:
    detail = "; ".join(parts) + (f" ({hint})" if hint else "")
    return CheckpointError(f"{source} does not match the architecture {model}: {detail}")


def check_state_shapes(
    own: Mapping[str, Sequence[int]],
    given: Mapping[str, Sequence[int]],
    source: str,
    model: str,
    allowed_missing: str = "",
    hint: str = "",
) -> None:
    """Compare tensor names and shapes (``name -> shape``) of a file with the architecture's.

    Raises:
        CheckpointError: an unexpected key, a missing key (other than those starting with
            ``allowed_missing``) or a shape mismatch; names ``source``, the keys and ``hint``.
    """
    missing = [k for k in own if k not in given and not (allowed_missing and k.startswith(allowed_missing))]
    unexpected = [k for k in given if k not in own]
    shapes = [
        f"{k}: {tuple(given[k])} vs {tuple(own[k])}" for k in given if k in own and tuple(given[k]) != tuple(own[k])
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) {missing[:8]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {unexpected[:8]}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) {shapes[:4]}")
    if parts:
        raise _mismatch(source, model, parts, hint)


def check_weight_dtypes(own: Mapping[str, torch.dtype], given: Mapping[str, torch.dtype | str], source: str) -> None:
    """Refuse tensors of an unusable dtype (see the module docstring); ``given`` holds torch dtypes or
    safetensors dtype names (``"F32"``, ``"I8"``, ...) of the keys ``own`` also has.

    Raises:
        CheckpointError: names ``source``, the tensor and its dtype.
    """
    for key, dtype in given.items():
        if key not in own:
            continue
        name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        dtype = _SAFETENSORS_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
        if own[key].is_floating_point and dtype not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"{source}: tensor {key!r} is {name}, not a floating-point dtype "
                f"({', '.join(WEIGHT_DTYPES.values())}); its values would be cast into wrong weights"
            )


def check_finite(state: Mapping[str, Tensor], source: str) -> None:
    """Refuse floating-point tensors holding NaN or infinite values.

    Raises:
        CheckpointError: names ``source``, the first such tensor and how many values are not finite.
    """
    for key, tensor in state.items():
        # a NaN or an infinity makes the float64 sum NaN or infinite: the fast test; counted only then
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise CheckpointError(
                f"{source}: tensor {key!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; corrupt weights"
            )


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, Tensor], source: str, allowed_missing: str = "", hint: str = ""
) -> None:
    """Load ``state`` into ``model`` after :func:`check_state_shapes`, :func:`check_weight_dtypes` and
    :func:`check_finite`; any failure raises :class:`CheckpointError` naming ``source``, the offending
    keys and, when given, ``hint`` (what to do about it)."""
    own = model.state_dict()
    check_state_shapes({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state.items()}, source,
                       type(model).__name__, allowed_missing, hint)  # fmt: skip
    check_weight_dtypes({k: v.dtype for k, v in own.items()}, {k: v.dtype for k, v in state.items()}, source)
    check_finite(state, source)
    model.load_state_dict(state, strict=False)


__all__ = ["WEIGHT_DTYPES", "check_finite", "check_state_shapes", "check_weight_dtypes", "load_state_dict_strict"]
