"""Compute precision: the one set of choices (:data:`PRECISIONS`), the fused inference encoder's
(``"fp32"``, ``"bf16"`` or ``"auto"``) and a teacher's (:func:`teacher_precision`).

For the fused encoder, ``"auto"`` picks bfloat16 where the hardware multiplies it natively and
float32 elsewhere:

- CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and newer);
- CPU: the CPU flags name a native bf16 dot product (``avx512_bf16`` or ``amx_bf16`` on x86,
  ``bf16`` on aarch64), PyTorch has oneDNN, and neither library is held below it: a
  ``ONEDNN_MAX_CPU_ISA`` of an ISA without bf16 (``AVX2``, ``AVX512_CORE``) or an
  ``ATEN_CPU_CAPABILITY`` other than ``avx512`` / ``default`` turns it off, so the AVX2 emulation
  (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) chooses what an AVX2 machine chooses.
  Without native bf16 the products are emulated and slower than fp32.

The precision of training and validation is not set here: they run the module path under
whatever precision the trainer sets (Lightning's ``precision=``).
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

from clip_gs.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The precision choices of every ``--precision`` flag and ``precision=`` argument. ``"auto"`` means
what each consumer documents (:func:`resolve_precision`, :func:`teacher_precision`); a consumer
that cannot run a value raises :class:`~clip_gs.errors.ConfigError` naming it."""

FUSED_PRECISIONS = ("auto", "fp32", "bf16")
"""What the fused inference encoder runs (:func:`resolve_precision`): fp16 is not among them."""

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
    if not any(flag in cpu_flags() for flag in wanted):
        return False
    onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if onednn_isa != "ALL" and not any(part in onednn_isa for part in ("BF16", "AMX", "FP16", "AVX10")):
        return False
    return os.environ.get("ATEN_CPU_CAPABILITY", "default").lower() in ("default", "avx512", "")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The fused encoder's compute dtype: ``"fp32"`` -> float32, ``"bf16"`` -> bfloat16, ``"auto"``
    -> bfloat16 when :func:`bf16_supported` on ``device``, else float32.

    Raises:
        ConfigError: any other value (``"fp16"`` included: the fused encoder does not run it).
    """
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    raise ConfigError(f"the fused encoder's precision must be one of {FUSED_PRECISIONS}, got {precision!r}")


def teacher_precision(precision: str, device: torch.device | str) -> str:
    """A teacher's precision for ``precision`` on ``device``: ``"auto"`` -> ``"bf16"`` on a CUDA
    device that supports it, else ``"fp32"`` (a teacher on the CPU stays in fp32, so that what it
    embeds there does not depend on the CPU's bf16 support); other values as given (the teacher
    refuses those it cannot run, e.g. fp16 off CUDA).

    Raises:
        ConfigError: a value not in :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    return "bf16" if device.type == "cuda" and bf16_supported(device) else "fp32"


__all__ = [
    "FUSED_PRECISIONS",
    "PRECISIONS",
    "bf16_supported",
    "cpu_flags",
    "resolve_device",
    "resolve_precision",
    "teacher_precision",
]
