"""A plain, readable re-statement of Uni3D's point encoder: the reference for the P&C baseline.

:class:`Uni3DPointEncoderReference` is written from the description of Uni3D (it is not
Uni3D's code): naive reference grouping (one FPS step per centre, exact kNN), the mini-PointNet,
the timm EVA image model created by name and called block by block without RoPE, the final
norm and the projection. Its parameter names are exactly Uni3D's ``point_encoder.*`` keys, so a
Uni3D checkpoint loads into it unchanged. Tests use it to check the converter and the CLIPGS
P&C-baseline path end to end; ``benchmarks/`` uses it as the unoptimised reference forward.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip_gs.errors import ConfigError
from clip_gs.model.config import CLIPGSConfig
from clip_gs.ops import farthest_point_sample_reference, gather, knn_reference


class _MiniPointNet(nn.Module):
    """Uni3D's ``Encoder``: per-point convs, max-pool, concat, convs, max-pool."""

    def __init__(self, encoder_channel: int):
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(
            nn.Conv1d(6, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Conv1d(512, encoder_channel, 1)
        )

    def forward(self, point_groups: Tensor) -> Tensor:
        bs, g, n, _ = point_groups.shape
        point_groups = point_groups.reshape(bs * g, n, 6)
        feature = self.first_conv(point_groups.transpose(2, 1))
        feature_global = torch.max(feature, dim=2, keepdim=True)[0]
        feature = torch.cat([feature_global.expand(-1, -1, n), feature], dim=1)
        feature = self.second_conv(feature)
        feature_global = torch.max(feature, dim=2, keepdim=False)[0]
        return feature_global.reshape(bs, g, self.encoder_channel)


class Uni3DPointEncoderReference(nn.Module):
    """Uni3D's point encoder for one registered size (``config.uni3d_model`` names the timm model).

    ``forward(xyz [B, N, 3], rgb [B, N, 3]) -> [B, embed_dim]`` (L2-normalised), with ``xyz``
    already normalised to the unit sphere.
    """

    def __init__(self, config: CLIPGSConfig):
        super().__init__()
        if config.uni3d_model is None:
            raise ConfigError(f"config {config.name!r} names no Uni3D timm model")
        self.config = config
        self.visual = timm.create_model(config.uni3d_model, pretrained=False)
        width = config.width
        self.encoder = _MiniPointNet(config.point_encoder_dim)
        self.encoder2trans = nn.Linear(config.point_encoder_dim, width)
        self.trans2embed = nn.Linear(width, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, width))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))

    def group(self, xyz: Tensor, rgb: Tensor) -> tuple[Tensor, Tensor]:
        """Naive grouping: ``(center [B, G, 3], features [B, G, K, 6])``."""
        cfg = self.config
        center = gather(xyz, farthest_point_sample_reference(xyz, cfg.num_groups))
        _, idx = knn_reference(center, xyz, cfg.group_size)
        neighborhood = gather(xyz, idx) - center.unsqueeze(2)
        return center, torch.cat([neighborhood, gather(rgb, idx)], dim=-1)

    def forward(self, xyz: Tensor, rgb: Tensor) -> Tensor:
        center, features = self.group(xyz, rgb)
        tokens = self.encoder2trans(self.encoder(features))
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        x = self.visual.pos_drop(x + pos)
        for block in self.visual.blocks:
            x = block(x)
        x = self.visual.fc_norm(self.visual.norm(x[:, 0, :]))
        return F.normalize(self.trans2embed(x), dim=-1)

    def uni3d_state_dict(self) -> dict[str, Tensor]:
        """This module's weights in Uni3D's checkpoint layout: ``{"module": {"point_encoder.*": ...,
        "logit_scale": ...}}`` (what ``BAAI/Uni3D`` model.pt files hold)."""
        state = {f"point_encoder.{k}": v for k, v in self.state_dict().items()}
        state["logit_scale"] = torch.tensor(2.6593)
        return {"module": state}


def deepspeed_model_states(state: dict) -> dict:
    """A checkpoint laid out as DeepSpeed's ``save_checkpoint`` writes ``mp_rank_00_model_states.pt``
    (the structure of the published ``BAAI/Uni3D`` ``model.pt`` files): the weights under
    ``module``, DeepSpeed's own entries, and a training script's client state."""
    import argparse
    from collections import OrderedDict

    import numpy as np

    return {
        "module": OrderedDict(state),
        "buffer_names": [k for k in state if "running_" in k or "num_batches" in k],
        "optimizer": None,
        "param_shapes": [OrderedDict((k, v.shape) for k, v in state.items() if "running_" not in k)],
        "frozen_param_shapes": None,
        "shared_params": {},
        "frozen_param_fragments": None,
        "lr_scheduler": None,
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": 12_000,
        "global_samples": 1_536_000,
        "dp_world_size": 8,
        "mp_world_size": 1,
        "ds_config": {"train_batch_size": 128, "bf16": {"enabled": True}, "zero_optimization": {"stage": 1}},
        "ds_version": "0.9.5",
        # client state of the training script
        "epoch": 10,
        "best_zero_shot_acc": np.float64(0.4625),
        "args": argparse.Namespace(model="create_uni3d", lr=1e-3, batch_size=16),
    }
