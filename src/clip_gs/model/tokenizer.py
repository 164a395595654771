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

The convolutions keep their ``nn.Conv1d`` parameters (Uni3D's checkpoint layout), but both
branches run channels-last, ``[..., K, C]``: a 1x1 convolution is a matrix product and a 1x3 one a
matrix product over unfolded windows (:func:`conv1d_channels_last`), and BatchNorm normalises the
flattened ``[M * K, C]`` rows, which are the statistics of ``[M, C, K]``. On CPUs oneDNN's
convolution kernels for these short sequences were the slowest part of a training step (more so
without AVX-512); the products are several times faster, backward included, and equal to
``F.conv1d`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
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
    return torch.cat([patch_features[..., FEATURE_LAYOUT["xyz"]], patch_features[..., FEATURE_LAYOUT["rgb"]]], dim=-1)


def conv1d_channels_last(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int = 1, padding: int = 0) -> Tensor:
    """``F.conv1d`` of channels-last ``x: [M, L, C]`` with ``weight: [O, C, k]`` -> ``[M, L', O]``:
    one matrix product over the unfolded (zero-padded) windows."""
    k = weight.shape[-1]
    if k == 1 and stride == 1 and padding == 0:
        return F.linear(x, weight.squeeze(-1), bias)
    if padding:
        x = F.pad(x, (0, 0, padding, padding))
    windows = x.unfold(1, k, stride)  # [M, L', C, k]
    return F.linear(windows.flatten(2), weight.flatten(1), bias)


def batch_norm_channels_last(x: Tensor, norm: nn.BatchNorm1d) -> Tensor:
    """``norm`` (a BatchNorm1d over C channels) applied to channels-last ``x: [..., C]``."""
    return norm(x.reshape(-1, x.shape[-1])).view(x.shape)


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
        b = points.shape[0]
        conv1, norm1, _, conv2 = self.first_conv
        conv3, norm3, _, conv4 = self.second_conv
        rows = rearrange(points, "b g k c -> (b g) k c")  # one row of K points per patch
        x = conv1d_channels_last(rows, conv1.weight, conv1.bias)
        x = conv1d_channels_last(batch_norm_channels_last(x, norm1).relu(), conv2.weight, conv2.bias)  # [BG, K, 256]
        # conv3 of [pooled, x] (the pooled half first, as Uni3D concatenates) is split into its two
        # products, so the per-patch half runs once per patch instead of once per Gaussian.
        half = x.shape[-1]
        w3 = conv3.weight.squeeze(-1)
        per_patch = F.linear(x.amax(dim=1, keepdim=True), w3[:, :half], conv3.bias)  # [BG, 1, 512]
        x = F.linear(x, w3[:, half:]) + per_patch  # [BG, K, 512]
        x = conv1d_channels_last(batch_norm_channels_last(x, norm3).relu(), conv4.weight, conv4.bias)  # [BG, K, C]
        return rearrange(x.amax(dim=1), "(b g) c -> b g c", b=b)


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
        b, g = patch_features.shape[:2]
        x = self.stem(patch_features)  # [B, G, K, E]
        rel_xyz = patch_features[..., FEATURE_LAYOUT["xyz"]]
        serialized = []
        for i, order in enumerate(self.orders):
            idx = serialization_order(rel_xyz, order, bits=self.bits)  # [B, G, K]
            xo = torch.take_along_dim(x, idx.unsqueeze(-1), dim=2)
            serialized.append(xo * (1 + self.order_scale[i]) + self.order_shift[i])
        x = rearrange(torch.stack(serialized), "o b g k e -> (o b g) k e")  # every order of every patch: a row
        for i in range(0, len(self.convs), 3):  # Conv1d(1x3), BN, ReLU, channels-last
            conv, norm = self.convs[i], self.convs[i + 1]
            x = conv1d_channels_last(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0])
            x = batch_norm_channels_last(x, norm).relu()  # [O*B*G, K', C]
        x = x.amax(dim=1) if self.pooling == "max" else x.mean(dim=1)
        x = reduce(x, "(o b g) c -> b g c", "mean", b=b, g=g)  # fuse orders
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
