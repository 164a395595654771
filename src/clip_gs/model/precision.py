"""Compute precision of the encoder: ``"fp32"``, ``"bf16"`` or ``"auto"``, and cached derived weights.

``"auto"`` picks bfloat16 where the hardware multiplies it natively and float32 elsewhere:

- CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer);
- CPU: the CPU flags name a native bf16 dot product (``avx512_bf16`` or ``amx_bf16`` on x86,
  ``bf16`` on aarch64) and PyTorch has oneDNN. Without them bf16 is emulated and slower than fp32.

In bf16 the matrix products (mini-PointNet, Gaussian branch convolutions, transformer linears and
attention) run in bfloat16 with float32 accumulation; the residual stream, LayerNorm statistics,
positional MLP, final norm, head and L2 normalisation stay float32, so embeddings agree with the
float32 forward to a cosine of about 0.9999.

:class:`DerivedWeights` holds inference-only weights computed from a module's parameters
(BatchNorm folded into the preceding product, q/k/v packed into one matrix, cast to the compute
dtype). They are rebuilt whenever a source parameter or buffer changes (in-place updates bump the
tensor version counter, ``load_state_dict`` included) and are never part of the ``state_dict``.
They cost about one copy of the weights per compute dtype used;
``GaussianEncoder.clear_inference_cache()`` frees them.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip_gs.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
"""Accepted values of every ``precision=`` argument."""

_CPU_BF16_FLAGS = {"x86_64": ("avx512_bf16", "amx_bf16"), "amd64": ("avx512_bf16", "amx_bf16"), "aarch64": ("bf16",)}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (``/proc/cpuinfo``; empty where it is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def bf16_supported(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 natively (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return _cpu_bf16_supported()


@functools.lru_cache(maxsize=1)
def _cpu_bf16_supported() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    wanted = _CPU_BF16_FLAGS.get(platform.machine().lower(), ())
    return any(flag in cpu_flags() for flag in wanted)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``"fp32"`` -> float32, ``"bf16"`` -> bfloat16, ``"auto"`` -> bfloat16 when
    :func:`bf16_supported` on ``device``, else float32.

    Raises:
        ConfigError: any other value.
    """
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def check_inference_mode(module: nn.Module) -> None:
    """Raise :class:`ConfigError` unless ``module`` is in eval mode with autograd off: the
    inference path folds BatchNorm running statistics and has no backward."""
    if module.training or torch.is_grad_enabled():
        raise ConfigError(
            "the inference path needs eval mode and no autograd (model.eval() and torch.no_grad()); "
            "use compute_dtype=None for training"
        )


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class DerivedWeights:
    """A per-module cache of inference weights derived from its parameters and buffers.

    ``get(module, dtype, build)`` returns ``build(dtype)``, computed once and reused while every
    parameter and buffer of ``module`` keeps its storage and version, and the dtype and device are
    the same. Holds one entry per dtype.
    """

    def __init__(self) -> None:
        # dtype -> (key, anchors, value); the anchors share the source tensors' storage so it
        # cannot be freed and its address reused by a different tensor while the key is held
        self._entries: dict[torch.dtype, tuple[tuple, list[torch.Tensor], Any]] = {}

    def get(self, module: nn.Module, dtype: torch.dtype, build: Callable[[torch.dtype], Any]) -> Any:
        tensors = [*module.parameters(), *module.buffers()]
        # inference tensors (made under torch.inference_mode) cannot change and have no version
        key = tuple((t.device, t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors)
        entry = self._entries.get(dtype)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = (key, [t.detach() for t in tensors], build(dtype))
            self._entries[dtype] = entry
        return entry[2]

    def clear(self) -> None:
        self._entries.clear()


__all__ = ["PRECISIONS", "DerivedWeights", "autocast_for", "bf16_supported", "cpu_flags", "resolve_precision"]
