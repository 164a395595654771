"""The GS Tokenizer: Gaussians -> FPS + kNN patches -> patch tokens.

Two branches are summed into each patch token (the paper's GS refinement block):

- the **point branch**, Uni3D's mini-PointNet over ``[xyz - centre, rgb]`` of the patch followed
  by a linear map to the token width (Uni3D ``encoder`` + ``encoder2trans``);
- the **Gaussian branch**, over every attribute of the patch: "Linear & Norm" stem, serialization
  of the patch's Gaussians along space-filling curves with a learnable order indicator, four 1x3
  convolutions (strides 1, 1, 2, 2, each with BN + ReLU) along the serialized sequence, global
  pooling, and a linear map to the token width. That last map is zero-initialised, so a model
  converted from Uni3D starts out computing exactly Uni3D's tokens and fine-tuning departs from
  there (a choice of this package; the paper does not say how the branch is initialised).

With ``gaussian_branch=False`` only the point branch exists: the "P&C baseline".

Two ways to run each branch, with the same parameters:

- the module path (``forward``): the layers as declared, for training (BatchNorm batch
  statistics, autograd) and as the readable definition;
- the inference path (``forward_inference``, eval mode without autograd): every 1x1 convolution
  of the mini-PointNet becomes a matrix product over channels-last rows ``[rows, C]``; each
  BatchNorm is folded into the product or convolution before it; the ``[global; local]``
  concatenation of the mini-PointNet is split into a per-patch and a per-point product (the
  global half of the 512x512 product is done once per patch instead of once per point); the
  Gaussian branch runs its serialization orders through one convolution call; patches are
  processed in chunks of ``inference_chunk_groups`` on CPU so the activations stay in cache; and
  the products run in the compute dtype (float32 or bfloat16). In float32 it equals the module
  path up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_gs.gaussians.cloud import FEATURE_LAYOUT
from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.precision import DerivedWeights, check_inference_mode
from clip_gs.ops import farthest_point_sample, gather, knn, serialization_order

INFERENCE_CHUNK_GROUPS = 128
"""Patches per chunk of the inference path on CPU (128 x 64 points: activations of a few MB, which
stay in cache). Other devices take all patches of the batch in one chunk."""


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


@dataclass
class Patches:
    """FPS + kNN grouping of a batch of Gaussians.

    Attributes:
        centers: ``[B, G, 3]`` patch centres (positions of the FPS-selected Gaussians).
        features: ``[B, G, K, C]`` features of the K nearest Gaussians of each centre, in
            :data:`FEATURE_LAYOUT` order, with ``xyz`` made relative to the centre.
    """

    centers: Tensor
    features: Tensor


def make_patches(features: Tensor, num_groups: int, group_size: int, fps_start: str = "first") -> Patches:
    """Group ``features: [B, N, C]`` (FEATURE_LAYOUT channels) into FPS + kNN patches.

    Returns:
        :class:`Patches` with ``centers [B, G, 3]`` and ``features [B, G, K, C]``.
    """
    xyz_slice = FEATURE_LAYOUT["xyz"]
    xyz = features[..., xyz_slice].contiguous()
    center_idx = farthest_point_sample(xyz, num_groups, start=fps_start)
    centers = gather(xyz, center_idx)  # [B, G, 3]
    _, neighbor_idx = knn(centers, xyz, group_size)  # [B, G, K]
    grouped = gather(features, neighbor_idx)  # [B, G, K, C] (a new tensor: safe to modify)
    grouped[..., xyz_slice] -= centers.unsqueeze(2)
    return Patches(centers=centers, features=grouped)


def point_channels(patch_features: Tensor) -> Tensor:
    """The point branch's input ``[..., 6]``: xyz (relative to the centre) and rgb of
    ``patch_features: [..., 19]`` (FEATURE_LAYOUT)."""
    return torch.cat(
        [patch_features[..., FEATURE_LAYOUT["xyz"]], patch_features[..., FEATURE_LAYOUT["rgb"]]], dim=-1
    )


class PointPatchEncoder(nn.Module):
    """Uni3D's mini-PointNet over ``[xyz - centre, rgb]`` of each patch.

    Conv1d 6->128, BN, ReLU, Conv1d 128->256; concatenate the max-pooled feature (512);
    Conv1d 512->512, BN, ReLU, Conv1d 512->C; max-pool. Parameter names match Uni3D's
    ``point_encoder.encoder`` so its weights load unchanged.
    """

    def __init__(self, out_dim: int = 512):
        super().__init__()
        self.out_dim = out_dim
        self._derived = DerivedWeights()
        self.first_conv = nn.Sequential(
            nn.Conv1d(6, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, out_dim, 1)
        )

    def forward(self, points: Tensor) -> Tensor:
        """``points: [B, G, K, 6]`` -> ``[B, G, C]``."""
        b, g, k, _ = points.shape
        x = self.first_conv(points.reshape(b * g, k, 6).transpose(1, 2))  # [BG, 256, K]
        pooled = x.amax(dim=2, keepdim=True)
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, k), x], dim=1))  # [BG, C, K]
        return x.amax(dim=2).reshape(b, g, self.out_dim)

    def _inference_weights(self, dtype: torch.dtype) -> tuple[Tensor, ...]:
        conv1, bn1, _, conv2 = self.first_conv
        conv3, bn3, _, conv4 = self.second_conv
        w1, b1 = fold_batchnorm(conv1.weight.squeeze(-1), conv1.bias, bn1)
        w3, b3 = fold_batchnorm(conv3.weight.squeeze(-1), conv3.bias, bn3)
        half = conv2.out_channels  # the pooled (global) half comes first in the concatenation
        weights = (w1, b1, conv2.weight.squeeze(-1), conv2.bias, w3[:, :half], w3[:, half:], b3,
                   conv4.weight.squeeze(-1), conv4.bias)  # fmt: skip
        return tuple(w.to(dtype).contiguous() for w in weights)

    def forward_inference(self, points: Tensor, dtype: torch.dtype) -> Tensor:
        """Inference path (eval mode, no autograd): ``points: [M, K, 6]`` -> ``[M, C]`` in ``dtype``."""
        w1, b1, w2, b2, w3_global, w3_local, b3, w4, b4 = self._derived.get(self, dtype, self._inference_weights)
        x = F.linear(points.to(dtype), w1, b1).relu_()  # [M, K, 128]
        x = F.linear(x, w2, b2)  # [M, K, 256]
        per_patch = F.linear(x.amax(dim=1, keepdim=True), w3_global, b3)  # [M, 1, 512]
        x = F.linear(x, w3_local).add_(per_patch).relu_()  # [M, K, 512]
        return F.linear(x, w4, b4).amax(dim=1)


class GaussianPatchEncoder(nn.Module):
    """The Gaussian branch of the GS refinement block (see the module docstring).

    Input ``[B, G, K, 19]`` patch features (FEATURE_LAYOUT, xyz relative to the centre);
    output ``[B, G, width]``.
    """

    def __init__(self, config: CLIPGSConfig):
        super().__init__()
        self.orders = config.serialization
        self.bits = config.serialization_bits
        self.pooling = config.gaussian_pooling
        self.stem = nn.Sequential(
            nn.Linear(FEATURE_LAYOUT.num_channels, config.gaussian_embed_dim),
            nn.LayerNorm(config.gaussian_embed_dim),
        )
        # order indicator: per-order scale (1 + gamma) and shift beta, identity at init
        self.order_scale = nn.Parameter(torch.zeros(len(self.orders), config.gaussian_embed_dim))
        self.order_shift = nn.Parameter(torch.zeros(len(self.orders), config.gaussian_embed_dim))
        layers: list[nn.Module] = []
        in_ch = config.gaussian_embed_dim
        for out_ch, stride in zip(config.gaussian_channels, (1, 1, 2, 2)):
            layers += [
                nn.Conv1d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm1d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(in_ch, config.width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self._derived = DerivedWeights()

    def forward(self, patch_features: Tensor) -> Tensor:
        b, g, k, _ = patch_features.shape
        x = self.stem(patch_features)  # [B, G, K, E]
        rel_xyz = patch_features[..., FEATURE_LAYOUT["xyz"]]
        serialized = []
        for i, order in enumerate(self.orders):
            idx = serialization_order(rel_xyz, order, bits=self.bits)  # [B, G, K]
            xo = torch.take_along_dim(x, idx.unsqueeze(-1), dim=2)
            serialized.append(xo * (1 + self.order_scale[i]) + self.order_shift[i])
        x = torch.stack(serialized)  # [O, B, G, K, E]
        x = self.convs(x.reshape(-1, k, x.shape[-1]).transpose(1, 2))  # [O*B*G, C, K']
        x = x.amax(dim=2) if self.pooling == "max" else x.mean(dim=2)
        x = x.reshape(len(self.orders), b, g, -1).mean(dim=0)  # fuse orders
        return self.proj(x)

    def _inference_weights(self, dtype: torch.dtype) -> dict:
        linear, norm = self.stem
        convs = []
        for i in range(0, len(self.convs), 3):
            conv, bn = self.convs[i], self.convs[i + 1]
            weight, bias = fold_batchnorm(conv.weight, conv.bias, bn)
            convs.append((weight.to(dtype).contiguous(), bias.to(dtype), conv.stride[0], conv.padding[0]))
        cast = {
            "stem_weight": linear.weight, "stem_bias": linear.bias, "norm_weight": norm.weight,
            "norm_bias": norm.bias, "order_scale": (1 + self.order_scale)[:, None, None, :],
            "order_shift": self.order_shift[:, None, None, :],
            "proj_weight": self.proj.weight, "proj_bias": self.proj.bias,
        }  # fmt: skip
        weights = {name: t.to(dtype).contiguous() for name, t in cast.items()}
        weights["convs"] = convs
        weights["norm_eps"] = norm.eps
        return weights

    def forward_inference(self, patch_features: Tensor, dtype: torch.dtype) -> Tensor:
        """Inference path (eval mode, no autograd): ``patch_features: [M, K, 19]`` -> ``[M, width]``
        in ``dtype``. BatchNorms folded into the convolutions, all orders in one convolution call;
        serialization orders are computed from the float32 relative positions."""
        w = self._derived.get(self, dtype, self._inference_weights)
        m, k, _ = patch_features.shape
        x = F.linear(patch_features.to(dtype), w["stem_weight"], w["stem_bias"])
        x = F.layer_norm(x, x.shape[-1:], w["norm_weight"], w["norm_bias"], w["norm_eps"])  # [M, K, E]
        rel_xyz = patch_features[..., FEATURE_LAYOUT["xyz"]]
        idx = torch.stack([serialization_order(rel_xyz, order, bits=self.bits) for order in self.orders])  # [O, M, K]
        x = torch.take_along_dim(x.unsqueeze(0), idx.unsqueeze(-1), dim=2)  # [O, M, K, E]
        x = x.mul_(w["order_scale"]).add_(w["order_shift"])
        x = x.reshape(-1, k, x.shape[-1]).transpose(1, 2)  # [O*M, E, K]
        for weight, bias, stride, padding in w["convs"]:
            x = F.conv1d(x, weight, bias, stride=stride, padding=padding).relu_()
        x = x.amax(dim=2) if self.pooling == "max" else x.mean(dim=2)
        x = x.view(len(self.orders), m, -1).float().mean(dim=0)  # fuse orders
        return F.linear(x.to(dtype), w["proj_weight"], w["proj_bias"])


class GSTokenizer(nn.Module):
    """Gaussians ``[B, N, 19]`` -> patch tokens ``[B, G, width]`` and centres ``[B, G, 3]``."""

    inference_chunk_groups: int = INFERENCE_CHUNK_GROUPS
    """Patches per chunk of the inference path on CPU (see :data:`INFERENCE_CHUNK_GROUPS`)."""

    def __init__(self, config: CLIPGSConfig):
        super().__init__()
        self.config = config
        self.point_encoder = PointPatchEncoder(config.point_encoder_dim)
        self.point_proj = nn.Linear(config.point_encoder_dim, config.width)  # Uni3D encoder2trans
        self.gaussian_encoder = GaussianPatchEncoder(config) if config.gaussian_branch else None
        self._derived = DerivedWeights()

    def forward(self, features: Tensor, compute_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Args:
            features: ``[B, N, 19]`` in FEATURE_LAYOUT order (normalised object).
            compute_dtype: None runs the module path (training, autograd). A dtype (float32 or
                bfloat16) runs the inference path of both branches in that dtype (see the module
                docstring): eval mode without autograd only.

        Returns: ``(tokens [B, G, width] float32, centers [B, G, 3])``.
        """
        cfg = self.config
        if compute_dtype is not None:
            return self.forward_inference(features, compute_dtype)
        patches = make_patches(features, cfg.num_groups, cfg.group_size, cfg.fps_start)
        tokens = self.point_proj(self.point_encoder(point_channels(patches.features)))
        if self.gaussian_encoder is not None:
            tokens = tokens + self.gaussian_encoder(patches.features)
        return tokens, patches.centers

    def forward_inference(self, features: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The inference path of :meth:`forward`: grouping in float32, then both branches chunk by
        chunk of patches in ``dtype``; tokens are returned in float32."""
        check_inference_mode(self)
        cfg = self.config
        patches = make_patches(features, cfg.num_groups, cfg.group_size, cfg.fps_start)
        b, g, k, c = patches.features.shape
        rows = patches.features.reshape(b * g, k, c)
        point_input = point_channels(rows)
        proj_weight, proj_bias = self._derived.get(self.point_proj, dtype, self._proj_weights)
        tokens = torch.empty(b * g, cfg.width, dtype=torch.float32, device=features.device)
        step = self.inference_chunk_groups if features.device.type == "cpu" else b * g
        for start in range(0, b * g, step):
            chunk = slice(start, start + step)
            out = F.linear(self.point_encoder.forward_inference(point_input[chunk], dtype), proj_weight, proj_bias)
            if self.gaussian_encoder is not None:
                out = out + self.gaussian_encoder.forward_inference(rows[chunk], dtype)
            tokens[chunk] = out
        return tokens.reshape(b, g, cfg.width), patches.centers

    def _proj_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return self.point_proj.weight.to(dtype).contiguous(), self.point_proj.bias.to(dtype)
