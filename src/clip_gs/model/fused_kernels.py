"""The building blocks of :class:`~clip_gs.model.fused.FusedEncoder`: folded, packed snapshots of
the tokenizer's branches and of the EVA blocks.

Each block is built once from its ``nn.Module`` (a ``build`` classmethod that copies the weights,
folding BatchNorms into the products before them) and then called as a plain function of tensors.
:mod:`clip_gs.model.fused` describes what fusing does and assembles these into the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers.mlp import GluMlp, Mlp, SwiGLU
from timm.models.eva import EvaAttention, EvaBlock
from torch import Tensor, nn

from clip_gs.errors import ConfigError
from clip_gs.model.features import FEATURE_LAYOUT
from clip_gs.model.tokenizer import GaussianPatchEncoder, PointPatchEncoder, conv1d_channels_last
from clip_gs.ops import serialization_order

Linear = tuple[Tensor, Tensor | None]
"""``(weight [out, in], bias [out] or None)``."""


def fold_batchnorm(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the product before it.

    Args:
        weight: ``[C_out, ...]`` weight of the linear map / convolution.
        bias: ``[C_out]`` or None.
        bn: the BatchNorm applied to its output (running statistics).

    Returns:
        ``(weight', bias')`` with ``bn(W x + b) == W' x + b'``.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.view(-1, *([1] * (weight.dim() - 1))), folded_bias


def copy_weight(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A detached copy in ``dtype`` (never a view of a parameter: the fused form is a snapshot)."""
    return None if t is None else t.detach().to(dtype, copy=True).contiguous()


def copy_linear(layer: nn.Linear, dtype: torch.dtype) -> Linear:
    """``(weight [out, in], bias [out] or None)`` copies of a linear layer in ``dtype``."""
    return copy_weight(layer.weight, dtype), copy_weight(layer.bias, dtype)


def copy_layer_norm(norm: nn.Module) -> tuple[Tensor, Tensor, float] | None:
    """``(weight, bias, eps)`` float32 copies of a LayerNorm; None for Identity."""
    if isinstance(norm, nn.Identity):
        return None
    return copy_weight(norm.weight, torch.float32), copy_weight(norm.bias, torch.float32), norm.eps


@dataclass(frozen=True)
class FusedPointBranch:
    """Mini-PointNet with folded BatchNorms and the split global/local product, then the
    projection to the token width (Uni3D ``encoder2trans``)."""

    first: Linear
    second: Linear
    third_global: Tensor
    third_local: Tensor
    third_bias: Tensor
    fourth: Linear
    proj: Linear

    @classmethod
    def build(cls, encoder: PointPatchEncoder, proj: nn.Linear, dtype: torch.dtype) -> FusedPointBranch:
        conv1, bn1, _, conv2 = encoder.first_conv
        conv3, bn3, _, conv4 = encoder.second_conv
        w1, b1 = fold_batchnorm(conv1.weight.squeeze(-1), conv1.bias, bn1)
        w3, b3 = fold_batchnorm(conv3.weight.squeeze(-1), conv3.bias, bn3)
        half = conv2.out_channels  # the pooled (global) half comes first in the concatenation
        return cls(
            first=(copy_weight(w1, dtype), copy_weight(b1, dtype)),
            second=(copy_weight(conv2.weight.squeeze(-1), dtype), copy_weight(conv2.bias, dtype)),
            third_global=copy_weight(w3[:, :half], dtype),
            third_local=copy_weight(w3[:, half:], dtype),
            third_bias=copy_weight(b3, dtype),
            fourth=(copy_weight(conv4.weight.squeeze(-1), dtype), copy_weight(conv4.bias, dtype)),
            proj=copy_linear(proj, dtype),
        )

    def __call__(self, points: Tensor) -> Tensor:
        """``points: [M, K, 6]`` (xyz relative to the centre, rgb) -> tokens ``[M, width]``."""
        dtype = self.first[0].dtype
        x = F.linear(points.to(dtype), *self.first).relu_()  # [M, K, 128]
        x = F.linear(x, *self.second)  # [M, K, 256]
        per_patch = F.linear(x.amax(dim=1, keepdim=True), self.third_global, self.third_bias)  # [M, 1, 512]
        x = F.linear(x, self.third_local).add_(per_patch).relu_()  # [M, K, 512]
        return F.linear(F.linear(x, *self.fourth).amax(dim=1), *self.proj)


@dataclass(frozen=True)
class FusedGaussianBranch:
    """The Gaussian branch with folded BatchNorms and all orders in one convolution call."""

    orders: tuple[str, ...]
    bits: int
    pooling: str
    stem: Linear
    stem_norm: tuple[Tensor, Tensor, float]
    order_scale: Tensor  # [O, 1, 1, E]
    order_shift: Tensor  # [O, 1, 1, E]
    convs: tuple[tuple[Tensor, Tensor, int, int], ...]  # (weight, bias, stride, padding)
    proj: Linear

    @classmethod
    def build(cls, branch: GaussianPatchEncoder, dtype: torch.dtype) -> FusedGaussianBranch:
        linear, norm = branch.stem
        convs = []
        for i in range(0, len(branch.convs), 3):
            conv, bn = branch.convs[i], branch.convs[i + 1]
            weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
            convs.append((copy_weight(weight, dtype), copy_weight(bias, dtype), conv.stride[0], conv.padding[0]))
        return cls(
            orders=tuple(branch.orders),
            bits=branch.bits,
            pooling=branch.pooling,
            stem=copy_linear(linear, dtype),
            stem_norm=(copy_weight(norm.weight, dtype), copy_weight(norm.bias, dtype), norm.eps),
            order_scale=copy_weight((1 + branch.order_scale)[:, None, None, :], dtype),
            order_shift=copy_weight(branch.order_shift[:, None, None, :], dtype),
            convs=tuple(convs),
            proj=copy_linear(branch.proj, dtype),
        )

    def __call__(self, patch_features: Tensor) -> Tensor:
        """``patch_features: [M, K, 19]`` -> ``[M, width]``. Serialization orders are computed
        from the float32 relative positions."""
        dtype = self.stem[0].dtype
        m, k, _ = patch_features.shape
        x = F.linear(patch_features.to(dtype), *self.stem)
        x = F.layer_norm(x, x.shape[-1:], *self.stem_norm)  # [M, K, E]
        rel_xyz = patch_features[..., FEATURE_LAYOUT["xyz"]]
        idx = torch.stack([serialization_order(rel_xyz, order, bits=self.bits) for order in self.orders])  # [O, M, K]
        x = torch.take_along_dim(x.unsqueeze(0), idx.unsqueeze(-1), dim=2)  # [O, M, K, E]
        x = x.mul_(self.order_scale).add_(self.order_shift)
        x = x.reshape(-1, k, x.shape[-1])  # [O*M, K, E], channels-last as the module path runs it
        for weight, bias, stride, padding in self.convs:
            x = conv1d_channels_last(x, weight, bias, stride, padding).relu_()
        x = x.amax(dim=1) if self.pooling == "max" else x.mean(dim=1)
        x = x.view(len(self.orders), m, -1).float().mean(dim=0)  # fuse orders
        return F.linear(x.to(dtype), *self.proj)


def block_is_fusable(block: nn.Module) -> bool:
    """Whether :class:`FusedBlock` computes this block: an ``EvaBlock`` with EVA attention (no
    q/k norm, no gate, optional inner LayerNorm) and a SwiGLU, GluMlp or Mlp MLP whose norm is
    a LayerNorm or Identity. Every block :class:`~clip_gs.model.config.CLIPGSConfig` can describe is."""
    if not isinstance(block, EvaBlock) or not isinstance(block.attn, EvaAttention):
        return False
    attn, mlp = block.attn, block.mlp
    norms = (block.norm1, block.norm2, attn.norm, mlp.norm)
    # older timm 1.0.x releases have no attention gate / q-k norms: getattr keeps them fusable
    return (
        getattr(attn, "gate", None) is None
        and isinstance(getattr(attn, "q_norm", nn.Identity()), nn.Identity)
        and isinstance(getattr(attn, "k_norm", nn.Identity()), nn.Identity)
        and all(isinstance(n, (nn.LayerNorm, nn.Identity)) for n in norms)
        and isinstance(block.norm1, nn.LayerNorm)
        and isinstance(block.norm2, nn.LayerNorm)
        and isinstance(mlp, (SwiGLU, GluMlp, Mlp))
    )


@dataclass(frozen=True)
class FusedBlock:
    """One EVA block without RoPE, as ``EvaBlock.forward`` computes it in eval mode.

    ``qkv`` is one ``[3A, D]`` matrix (EVA has no k bias: zeros), ``fc1`` one ``[2H, D]``
    gate/value matrix for gated MLPs (gate first unless ``gate_last``).
    """

    heads: int
    norm1: tuple[Tensor, Tensor, float]
    qkv: Linear
    attn_norm: tuple[Tensor, Tensor, float] | None
    proj: Linear
    gamma_1: Tensor | None
    norm2: tuple[Tensor, Tensor, float]
    fc1: Linear
    gated: bool
    gate_last: bool
    act: nn.Module
    mlp_norm: tuple[Tensor, Tensor, float] | None
    fc2: Linear
    gamma_2: Tensor | None

    @classmethod
    def build(cls, block: EvaBlock, dtype: torch.dtype) -> FusedBlock:
        if not block_is_fusable(block):
            raise ConfigError(f"cannot fuse block {type(block).__name__}: see block_is_fusable for what is supported")
        attn, mlp = block.attn, block.mlp
        if attn.qkv is not None:
            qkv_weight = attn.qkv.weight
            qkv_bias = None if attn.q_bias is None else torch.cat([attn.q_bias, attn.k_bias, attn.v_bias])
        else:
            projections = (attn.q_proj, attn.k_proj, attn.v_proj)
            qkv_weight = torch.cat([p.weight for p in projections])
            if all(p.bias is None for p in projections):
                qkv_bias = None
            else:
                qkv_bias = torch.cat(
                    [p.bias if p.bias is not None else torch.zeros_like(p.weight[:, 0]) for p in projections]
                )
        if isinstance(mlp, SwiGLU):
            fc1_weight = torch.cat([mlp.fc1_g.weight, mlp.fc1_x.weight])
            fc1_bias = None if mlp.fc1_g.bias is None else torch.cat([mlp.fc1_g.bias, mlp.fc1_x.bias])
            gated, gate_last = True, False
        else:
            fc1_weight, fc1_bias = mlp.fc1.weight, mlp.fc1.bias
            gated, gate_last = isinstance(mlp, GluMlp), isinstance(mlp, GluMlp) and mlp.gate_last
        mlp_norm = copy_layer_norm(mlp.norm)
        return cls(
            heads=attn.num_heads,
            norm1=copy_layer_norm(block.norm1),
            qkv=(copy_weight(qkv_weight, dtype), copy_weight(qkv_bias, dtype)),
            attn_norm=None if isinstance(attn.norm, nn.Identity) else cast_norm(copy_layer_norm(attn.norm), dtype),
            proj=copy_linear(attn.proj, dtype),
            gamma_1=copy_weight(block.gamma_1, torch.float32),
            norm2=copy_layer_norm(block.norm2),
            fc1=(copy_weight(fc1_weight, dtype), copy_weight(fc1_bias, dtype)),
            gated=gated,
            gate_last=gate_last,
            act=mlp.act,
            mlp_norm=None if mlp_norm is None else cast_norm(mlp_norm, dtype),
            fc2=copy_linear(mlp.fc2, dtype),
            gamma_2=copy_weight(block.gamma_2, torch.float32),
        )

    def __call__(self, x: Tensor, num_queries: int | None = None) -> Tensor:
        """Args:
            x: ``[B, T, D]`` float32 residual stream.
            num_queries: None updates every token. ``Q`` updates only the first ``Q`` tokens
                (they still attend to all ``T``) and returns ``[B, Q, D]``: the last block of an
                encoder that reads only the cls token needs ``Q = 1``, which skips the query,
                output and MLP products of the other tokens without changing the result.

        Returns:
            ``[B, T, D]`` (or ``[B, Q, D]``) float32.
        """
        return fused_block_forward(self, x, num_queries)


def cast_norm(norm: tuple[Tensor, Tensor, float], dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
    """``(weight [D], bias [D], eps)`` of a LayerNorm with its weight and bias in ``dtype``."""
    return norm[0].to(dtype), norm[1].to(dtype), norm[2]


def fused_block_forward(block: FusedBlock, x: Tensor, num_queries: int | None = None) -> Tensor:
    """:meth:`FusedBlock.__call__` as a plain function (what ``torch.compile`` compiles)."""
    b, t, d = x.shape
    weight, bias = block.qkv
    heads = block.heads
    h = F.layer_norm(x, (d,), *block.norm1).to(weight.dtype)
    if num_queries is None:
        qkv = F.linear(h, weight, bias).view(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, T, head_dim]
    else:
        a = weight.shape[0] // 3
        x = x[:, :num_queries]
        q = F.linear(h[:, :num_queries], weight[:a], None if bias is None else bias[:a])
        q = q.view(b, num_queries, heads, -1).transpose(1, 2)
        kv = F.linear(h, weight[a:], None if bias is None else bias[a:]).view(b, t, 2, heads, -1)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
    h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q.shape[2], -1)
    if block.attn_norm is not None:
        h = F.layer_norm(h, h.shape[-1:], *block.attn_norm)
    h = F.linear(h, *block.proj)
    x = x + (h if block.gamma_1 is None else block.gamma_1 * h)
    h = F.layer_norm(x, (d,), *block.norm2).to(weight.dtype)
    h = F.linear(h, *block.fc1)
    if block.gated:
        first, second = h.chunk(2, dim=-1)
        h = first * block.act(second) if block.gate_last else block.act(first).mul_(second)
    else:
        h = block.act(h)
    if block.mlp_norm is not None:
        h = F.layer_norm(h, h.shape[-1:], *block.mlp_norm)
    h = F.linear(h, *block.fc2)
    return x + (h if block.gamma_2 is None else block.gamma_2 * h)


__all__ = [
    "FusedBlock",
    "FusedGaussianBranch",
    "FusedPointBranch",
    "Linear",
    "block_is_fusable",
    "cast_norm",
    "copy_layer_norm",
    "copy_linear",
    "copy_weight",
    "fold_batchnorm",
    "fused_block_forward",
]
