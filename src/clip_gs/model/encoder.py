"""`GaussianEncoder`: GS Tokenizer + Uni3D-style transformer + projection into CLIP space.

This is the one definition of the encoder: the timm EVA blocks and the tokenizer's layers as
declared. Training and validation run it as is, under whatever precision the caller sets
(Lightning's precision plugin, or ``torch.autocast``). For fast inference, :meth:`GaussianEncoder.fuse`
builds an explicit inference-only snapshot (:mod:`clip_gs.model.fused`); the module keeps no
state of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.models.eva import EvaBlock
from torch import Tensor, nn

from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.fused import FusedEncoder
from clip_gs.model.precision import resolve_precision
from clip_gs.model.tokenizer import GSTokenizer


class PatchDropout(nn.Module):
    """Keep a random ``1 - p`` fraction of the patch tokens (never the cls token) in training.

    Identity in eval mode (unlike Uni3D's version, which also dropped patches at inference).
    Uses the global torch RNG, seeded by the training run's seed.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens: [B, 1 + G, D]`` -> ``[B, 1 + G', D]``."""
        if not self.training or self.p == 0.0:
            return tokens
        cls, patches = tokens[:, :1], tokens[:, 1:]
        b, g, d = patches.shape
        keep = max(1, int(g * (1.0 - self.p)))
        idx = torch.rand(b, g, device=tokens.device).topk(keep, dim=1).indices
        patches = torch.take_along_dim(patches, idx.unsqueeze(-1), dim=1)
        return torch.cat([cls, patches], dim=1)


def make_blocks(config: CLIPGSConfig) -> nn.ModuleList:
    """The transformer blocks of a Uni3D size: timm ``EvaBlock``s with that size's variant."""
    rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
    blocks = nn.ModuleList(
        EvaBlock(
            dim=config.width,
            num_heads=config.num_heads,
            qkv_fused=config.qkv_fused,
            mlp_ratio=config.mlp_ratio,
            swiglu_mlp=config.swiglu_mlp,
            scale_mlp=config.scale_mlp,
            drop_path=rate,
        )
        for rate in rates
    )
    return blocks


class GaussianEncoder(nn.Module):
    """Encode normalised Gaussians into the CLIP embedding space.

    ``features [B, N, 19]`` -> GS Tokenizer -> ``[cls; tokens] + [cls_pos; MLP(centres)]`` ->
    patch dropout (training only) -> EVA blocks (no RoPE) -> LayerNorm of the cls token ->
    linear head -> L2 normalisation -> ``[B, embed_dim]``.

    Parameter names follow Uni3D where a Uni3D counterpart exists (``cls_token``, ``cls_pos``,
    ``pos_embed.{0,2}``, ``blocks``, ``head`` = Uni3D ``trans2embed``).
    """

    def __init__(self, config: CLIPGSConfig):
        super().__init__()
        self.config = config
        self.tokenizer = GSTokenizer(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, config.width))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, config.width))
        self.patch_dropout = PatchDropout(config.patch_dropout)
        self.blocks = make_blocks(config)
        self.norm = LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.embed_dim)

    def forward_features(self, features: Tensor) -> Tensor:
        """``features: [B, N, 19]`` -> cls feature after the final norm, ``[B, width]``."""
        tokens, centers = self.tokenizer(features)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(centers)], dim=1)
        x = self.patch_dropout(x + pos)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])

    def forward(self, features: Tensor, normalize: bool = True) -> Tensor:
        """``features: [B, N, 19]`` -> embeddings ``[B, embed_dim]`` (unit norm by default)."""
        embedding = self.head(self.forward_features(features))
        return F.normalize(embedding.float(), dim=-1) if normalize else embedding

    def fuse(self, precision: str = "auto") -> FusedEncoder:
        """The fused inference form of this encoder (:class:`~clip_gs.model.fused.FusedEncoder`),
        a snapshot of the current weights with eval-mode semantics, computing its products in
        ``precision`` (``"fp32"``, ``"bf16"`` or ``"auto"``: bf16 where the device multiplies it
        natively, see :func:`~clip_gs.model.precision.resolve_precision`).

        Raises:
            ConfigError: an unknown ``precision``.
        """
        return FusedEncoder(self, resolve_precision(precision, self.cls_token.device))
