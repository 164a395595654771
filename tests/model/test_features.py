"""The model's input encoding (clip_gs.model.features) and the one shared preprocessing."""

from __future__ import annotations

import pytest
import torch

from clip_gs import GaussianCloud
from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.model import FEATURE_LAYOUT, gaussian_features, get_model_config, preprocess_cloud
from tests.helpers import random_cloud


def test_features_follow_the_layout():
    cloud = random_cloud(20)
    f = gaussian_features(cloud)
    assert f.shape == (20, FEATURE_LAYOUT.num_channels) == (20, 19)
    assert torch.equal(f[:, FEATURE_LAYOUT["xyz"]], cloud.means)
    assert torch.equal(f[:, FEATURE_LAYOUT["rgb"]], cloud.rgb)
    assert torch.equal(f[:, FEATURE_LAYOUT["opacity"]][:, 0], cloud.opacity)
    assert torch.allclose(f[:, FEATURE_LAYOUT["scale"]], torch.sigmoid(cloud.log_scales))
    assert torch.allclose(gaussian_features(cloud, "exp")[:, FEATURE_LAYOUT["scale"]], cloud.scales)
    assert torch.equal(f[:, FEATURE_LAYOUT["rotation"]], cloud.rotation_matrices.flatten(-2))
    with pytest.raises(KeyError, match="no feature field"):
        FEATURE_LAYOUT["normals"]
    with pytest.raises(ConfigError, match="scale_activation"):
        gaussian_features(cloud, "softplus")


def test_features_are_identical_for_q_and_minus_q():
    cloud = random_cloud(200)
    assert torch.equal(gaussian_features(cloud), gaussian_features(cloud.replace(quats=-cloud.quats)))


def test_features_of_a_batch_are_the_features_of_each_object():
    a, b = random_cloud(8, seed=1), random_cloud(8, seed=2)
    batched = gaussian_features(GaussianCloud.stack([a, b]))
    assert batched.shape == (2, 8, 19)
    assert torch.allclose(batched[1], gaussian_features(b), atol=1e-6)


def test_preprocess_resamples_normalises_and_featurises():
    config = get_model_config("clip-gs-tiny", num_gaussians=64, num_groups=8, group_size=8)
    cloud = random_cloud(100, seed=3).to(dtype=torch.float64)
    features = preprocess_cloud(cloud, config, seed=5)
    assert features.shape == (64, 19) and features.dtype == torch.float32
    expected = gaussian_features(cloud.resample(64, seed=5).to(dtype=torch.float32).normalized())
    assert torch.equal(features, expected)
    xyz = features[:, FEATURE_LAYOUT["xyz"]]
    assert xyz.norm(dim=-1).max().item() == pytest.approx(1.0, abs=1e-6)
    assert not torch.equal(preprocess_cloud(cloud, config, seed=6), features)  # the seed is used
    with pytest.raises(GaussianFormatError, match="one object"):
        preprocess_cloud(GaussianCloud.stack([cloud, cloud]), config)
