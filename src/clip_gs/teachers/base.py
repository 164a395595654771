"""The teacher interface: a frozen CLIP that embeds text and images into one unit-norm space.

A :class:`Teacher` wraps a contrastive image-text model and only ever runs it for inference:

- ``encode_text(list[str]) -> [T, E]`` and ``encode_images(images) -> [B, E]``, float32, unit norm;
- images are ``uint8 [B, H, W, 3]`` (0..255) or float ``[B, 3, H, W]`` in [0, 1] (a single image
  without the batch dimension is accepted too); resizing (shortest side, centre crop, bicubic with
  antialiasing) and normalisation are the teacher's own;
- ``embed_dim``, ``image_size`` and :attr:`Teacher.identity` (a :class:`TeacherIdentity`: model name,
  pretrained tag or file checksum), so shards, checkpoints and model cards can record which teacher
  made their embeddings; :func:`check_same_teacher` refuses to mix two of them;
- frozen: the wrapped model is in eval mode with ``requires_grad=False`` everywhere and is run under
  :func:`torch.no_grad` (outputs are plain tensors a student loss can use); a Teacher is deliberately *not* an ``nn.Module``, so an enclosing
  LightningModule or optimizer never sees (or trains, or switches to train mode) its parameters;
- batched internally (``batch_size``) and, on CUDA, in fp16 / bf16 autocast when asked (``precision``).

This module imports only torch; model libraries (open_clip) load lazily in the subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clip_gs.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16")
"""Accepted ``precision`` values; fp16 needs CUDA, bf16 runs on CPU and CUDA."""


class TeacherMismatchError(ConfigError):
    """Embeddings made by two different teachers were about to be mixed."""


@dataclass(frozen=True)
class TeacherIdentity:
    """Which teacher made a set of embeddings.

    Attributes:
        kind: ``"open_clip"`` (built-in name + tag), ``"hf-hub"``, ``"file"`` (local checkpoint,
            identified by its checksum) or ``"random"`` (randomly initialised; tests only).
        model: architecture name (open_clip config name or hub id).
        pretrained: the pretrained tag, the hub id, or ``""``.
        checksum: ``"sha256:<first 16 hex digits>"`` of the weights file, or ``""`` when the tag names them.
        embed_dim: E.
    """

    kind: str
    model: str
    pretrained: str = ""
    checksum: str = ""
    embed_dim: int = 0

    def __str__(self) -> str:
        text = self.model
        if self.pretrained:
            text += f"/{self.pretrained}"
        if self.checksum:
            text += f"@{self.checksum}"
        return f"{self.kind}:{text}"

    def to_dict(self) -> dict:
        """JSON-ready fields (for shard metadata, checkpoints and model cards)."""
        return {"kind": self.kind, "model": self.model, "pretrained": self.pretrained,
                "checksum": self.checksum, "embed_dim": self.embed_dim}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> TeacherIdentity:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: a field is missing.
        """
        try:
            return cls(str(data["kind"]), str(data["model"]), str(data.get("pretrained", "")),
                       str(data.get("checksum", "")), int(data.get("embed_dim", 0)))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid teacher identity {data!r}: {exc}") from exc


def _as_identity(value: object) -> TeacherIdentity | str:
    if isinstance(value, Teacher):
        return value.identity
    if isinstance(value, TeacherIdentity):
        return value
    if isinstance(value, dict):
        return TeacherIdentity.from_dict(value)
    if isinstance(value, str):
        return value
    raise ConfigError(f"expected a Teacher, TeacherIdentity, identity dict or string, got {type(value).__name__}")


def check_view_background(teacher, background: Sequence[float]) -> None:
    """Refuse to embed views rendered on ``background`` when ``teacher`` knows other backgrounds only
    (its :attr:`Teacher.view_backgrounds`; a teacher without the attribute knows any).

    Raises:
        ConfigError: ``background`` is not among the teacher's ``view_backgrounds`` (the message names both).
    """
    backgrounds = getattr(teacher, "view_backgrounds", None)
    if backgrounds is None:
        return
    rgb = tuple(float(c) for c in background)
    if not any(max(abs(a - b) for a, b in zip(rgb, known)) <= 1e-6 for known in backgrounds):
        known = ", ".join(str(tuple(round(c, 4) for c in k)) for k in backgrounds)
        raise ConfigError(
            f"teacher {teacher.identity} was trained on views rendered on background {known} only; its image "
            f"embeddings of views on {tuple(round(c, 4) for c in rgb)} mean nothing (the offline teacher scores "
            "chance zero-shot on black views). Render on a background it knows, or use a CLIP teacher "
            "(e.g. --teacher EVA02-E-14-plus/laion2b_s9b_b144k)"
        )


def check_same_teacher(a: object, b: object, what: str = "embeddings") -> None:
    """Refuse to mix embeddings of two different teachers.

    Args:
        a, b: each a :class:`Teacher`, a :class:`TeacherIdentity`, its ``to_dict()`` or its ``str()``.
        what: what is being combined, for the message (e.g. ``"shard train-00003 and the model"``).

    Raises:
        TeacherMismatchError: the identities (or embedding sizes) differ; the message names both.
    """
    ia, ib = _as_identity(a), _as_identity(b)
    if str(ia) != str(ib):
        raise TeacherMismatchError(
            f"{what}: made by different teachers ({ia} vs {ib}); embeddings of different CLIP teachers "
            "live in different spaces and cannot be mixed, re-embed one side with the other's teacher"
        )
    if isinstance(ia, TeacherIdentity) and isinstance(ib, TeacherIdentity) and ia.embed_dim != ib.embed_dim:
        raise TeacherMismatchError(f"{what}: teacher {ia} recorded with embed_dim {ia.embed_dim} and {ib.embed_dim}")


class Teacher:
    """Base class of frozen CLIP teachers (see the module docstring for the contract).

    Subclasses set :attr:`model` (an open_clip-style module with ``encode_image`` / ``encode_text``),
    :attr:`tokenizer`, :attr:`identity`, :attr:`image_size`, :attr:`image_mean`, :attr:`image_std`
    and call :meth:`_freeze`.

    Args:
        batch_size: items per forward pass inside ``encode_text`` / ``encode_images``.
        device: where the model runs.
        precision: ``"fp32"``, ``"fp16"`` (CUDA only) or ``"bf16"``: autocast dtype of the forward
            passes; outputs are float32 either way.
    """

    model: torch.nn.Module
    identity: TeacherIdentity
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    view_backgrounds: tuple[tuple[float, float, float], ...] | None = None
    """The backgrounds (RGB in [0, 1]) of the rendered views this teacher's image embeddings mean
    something on; None: any (a CLIP trained on web images). Dataset preparation refuses to render
    views on another background for a teacher that names its own (:func:`check_view_background`)."""

    def __init__(self, batch_size: int = 64, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(f"teacher batch_size must be a positive int, got {batch_size!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"teacher precision must be one of {PRECISIONS}, got {precision!r}")
        self.batch_size = batch_size
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"teacher precision fp16 needs a CUDA device, got {self.device}; use fp32 or bf16")
        self.precision = precision

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """E, the size of every embedding."""
        return self.identity.embed_dim

    @property
    def name(self) -> str:
        """``str(identity)``."""
        return str(self.identity)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.identity}, embed_dim={self.embed_dim}, image_size={self.image_size}, "
                f"device={self.device}, precision={self.precision})")  # fmt: skip

    def _freeze(self) -> None:
        self.model.eval()
        self.model.requires_grad_(False)
        self.model.to(self.device)

    def to(self, device: str | torch.device) -> Teacher:
        """Move the model to ``device`` (in place); returns ``self``."""
        self.device = torch.device(device)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(f"teacher precision fp16 needs a CUDA device, got {self.device}")
        self.model.to(self.device)
        return self

    def parameters(self):
        """The frozen model's parameters (read-only use: checks, hashing)."""
        return self.model.parameters()

    def _autocast(self):
        if self.precision == "fp32":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Token ids ``[T, L]`` (int64) of ``texts`` with the teacher's own tokenizer."""
        return self.tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Embed texts.

        Args:
            texts: T strings (a single ``str`` is treated as a list of one).

        Returns:
            ``[T, E]`` float32, unit norm, on the teacher's device.

        Raises:
            ConfigError: ``texts`` is not a sequence of strings.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ConfigError(
                f"{self.identity}: encode_text takes a list of str, got {[type(t).__name__ for t in texts][:5]}"
            )
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        out = []
        with torch.no_grad(), self._autocast():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenize(texts[start : start + self.batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens).float())
        return F.normalize(torch.cat(out), dim=-1)

    # ------------------------------------------------------------------ images
    def preprocess(self, images: Tensor | np.ndarray) -> Tensor:
        """Turn user images into the model's input ``[B, 3, S, S]`` (float32, normalised).

        Accepts ``uint8 [B, H, W, 3]`` / ``[H, W, 3]`` (values 0..255) or floating
        ``[B, 3, H, W]`` / ``[3, H, W]`` in [0, 1]. The shorter side is resized to
        ``image_size`` (bicubic, antialiased), the centre cropped, then mean / std normalised.

        Raises:
            ConfigError: wrong dtype, layout or value range (the message gives the shape seen).
        """
        x = torch.as_tensor(images) if not isinstance(images, Tensor) else images
        who = f"{self.identity}: encode_images"
        if x.dtype == torch.uint8:
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ConfigError(f"{who}: uint8 images must be [B, H, W, 3] (channels last), got {list(x.shape)}")
            x = x.permute(0, 3, 1, 2).float() / 255.0
        elif x.is_floating_point():
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ConfigError(f"{who}: float images must be [B, 3, H, W] (channels first), got {list(x.shape)}")
            x = x.float()
            if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
                raise ConfigError(
                    f"{who}: float images must lie in [0, 1], got range [{x.min().item():.3g}, {x.max().item():.3g}]"
                    " (pass uint8 [B, H, W, 3] for 0..255 values)"
                )
        else:
            raise ConfigError(f"{who}: images must be uint8 [B, H, W, 3] or float [B, 3, H, W], got dtype {x.dtype}")
        x = x.to(self.device)
        size = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            scale = size / min(h, w)
            nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[..., top : top + size, left : left + size]
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_images(self, images: Tensor | np.ndarray) -> Tensor:
        """Embed images (see :meth:`preprocess` for the accepted layouts).

        Returns:
            ``[B, E]`` float32, unit norm, on the teacher's device.
        """
        x = images if isinstance(images, Tensor) else torch.as_tensor(np.asarray(images))
        if x.ndim == 3:
            x = x.unsqueeze(0)
        out = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                pixels = self.preprocess(x[start : start + self.batch_size])
                with self._autocast():
                    out.append(self.model.encode_image(pixels).float())
        if not out:
            return torch.empty(0, self.embed_dim, device=self.device)
        return F.normalize(torch.cat(out), dim=-1)

    def similarity(self, images: Tensor | np.ndarray, texts: Sequence[str]) -> Tensor:
        """Cosine similarities ``[B, T]`` between images and texts."""
        return self.encode_images(images) @ self.encode_text(texts).T


__all__ = [
    "PRECISIONS",
    "Teacher",
    "TeacherIdentity",
    "TeacherMismatchError",
    "check_same_teacher",
    "check_view_background",
]
