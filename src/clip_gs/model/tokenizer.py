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

This module is the one definition of these layers (the ``nn.Module`` path, used in training
and everywhere autograd or Lightning's precision runs). The fused inference form is built from
them explicitly by :mod:`clip_gs.model.fused`; nothing here caches derived weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clip_gs.model.config import CLIPGSConfig
from clip_gs.model.features import FEATURE_LAYOUT
from clip_gs.ops import gather, group, serialization_order


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
    """Group ``features: [B, N, C]`` (FEATURE_LAYOUT channels) into FPS + kNN patches with
    :func:`clip_gs.ops.group` (each patch lists its centre first, then the others by distance).

    Returns:
        :class:`Patches` with ``centers [B, G, 3]`` and ``features [B, G, K, C]``.
    """
    xyz_slice = FEATURE_LAYOUT["xyz"]
    xyz = features[..., xyz_slice].contiguous()
    center_idx, neighbor_idx = group(xyz, num_groups, group_size, start=fps_start)
    centers = gather(xyz, center_idx)  # [B, G, 3]
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


class GSTokenizer(nn.Module):
    """Gaussians ``[B, N, 19]`` -> patch tokens ``[B, G, width]`` and centres ``[B, G, 3]``."""

    def __init__(self, config: CLIPGSConfig):
        super().__init__()
        self.config = config
        self.point_encoder = PointPatchEncoder(config.point_encoder_dim)
        self.point_proj = nn.Linear(config.point_encoder_dim, config.width)  # Uni3D encoder2trans
        self.gaussian_encoder = GaussianPatchEncoder(config) if config.gaussian_branch else None

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            features: ``[B, N, 19]`` in FEATURE_LAYOUT order (normalised object).

        Returns: ``(tokens [B, G, width], centers [B, G, 3])``.
        """
        cfg = self.config
        patches = make_patches(features, cfg.num_groups, cfg.group_size, cfg.fps_start)
        tokens = self.point_proj(self.point_encoder(point_channels(patches.features)))
        if self.gaussian_encoder is not None:
            tokens = tokens + self.gaussian_encoder(patches.features)
        return tokens, patches.centers
