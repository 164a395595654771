"""GaussianCloud: activations, canonical rotations, normalisation, sampling, stacking, validation."""

from __future__ import annotations

import math

import pytest
import torch

from clip_gs import GaussianCloud
from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.gaussians import SH_C0, canonical_quaternions, quaternions_to_matrices
from tests.helpers import random_cloud


def test_activations_match_hand_computed_values():
    cloud = GaussianCloud(
        means=torch.zeros(1, 3),
        sh=torch.tensor([[[0.0, 1.0, -10.0]]]),
        opacity_logits=torch.tensor([0.0]),
        log_scales=torch.tensor([[0.0, math.log(2.0), -1.0]]),
        quats=torch.tensor([[2.0, 0.0, 0.0, 0.0]]),
    )
    assert torch.allclose(cloud.rgb, torch.tensor([[0.5, 0.5 + SH_C0, 0.0]]))  # last channel clamped
    assert cloud.opacity.item() == pytest.approx(0.5)
    assert torch.allclose(cloud.scales, torch.tensor([[1.0, 2.0, math.exp(-1.0)]]))
    assert torch.allclose(cloud.rotations, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(cloud.rotation_matrices[0], torch.eye(3))


def test_rotation_matrix_of_quarter_turn_about_z():
    half = math.sqrt(0.5)
    r = quaternions_to_matrices(torch.tensor([half, 0.0, 0.0, half]))
    assert torch.allclose(r @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_rotation_matrices_are_orthonormal():
    cloud = random_cloud(50)
    r = cloud.rotation_matrices
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3).expand(50, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(50), atol=1e-5)


def test_quaternion_sign_canonicalisation_makes_q_and_minus_q_identical():
    cloud = random_cloud(200)
    flipped = cloud.replace(quats=-cloud.quats)
    assert torch.equal(cloud.rotations, flipped.rotations)
    assert torch.equal(cloud.rotation_matrices, flipped.rotation_matrices)
    assert bool((cloud.rotations[:, 0] >= 0).all())
    # w == 0: the next non-zero component decides
    q = canonical_quaternions(torch.tensor([[0.0, -1.0, 1.0, 0.0], [0.0, 0.0, 0.0, -3.0]]))
    assert torch.allclose(q, torch.tensor([[0.0, math.sqrt(0.5), -math.sqrt(0.5), 0.0], [0.0, 0.0, 0.0, 1.0]]))


def test_tiny_quaternions_normalise_without_underflow():
    cloud = random_cloud(2).replace(quats=torch.tensor([[1e-30, 0.0, 0.0, 0.0], [0.0, -3e-39, 4e-39, 0.0]]))
    assert torch.allclose(cloud.rotations, torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.6, -0.8, 0.0]]))
    assert bool(torch.isfinite(cloud.rotation_matrices).all())


def test_covariances_are_r_s_squared_rt():
    cloud = random_cloud(10)
    r, s = cloud.rotation_matrices, cloud.scales
    expected = r @ torch.diag_embed(s**2) @ r.transpose(-1, -2)
    assert torch.allclose(cloud.covariances(), expected, atol=1e-6)


def test_normalized_is_unit_sphere_and_idempotent():
    cloud = random_cloud(500)
    norm = cloud.normalized()
    assert torch.allclose(norm.means.mean(0), torch.zeros(3), atol=1e-6)
    assert norm.means.norm(dim=-1).max().item() == pytest.approx(1.0, abs=1e-6)
    radius = (cloud.means - cloud.means.mean(0)).norm(dim=-1).max()
    # scales shrink by the same factor as positions
    assert torch.allclose(norm.scales, cloud.scales / radius, rtol=1e-5)
    twice = norm.normalized()
    assert torch.allclose(twice.means, norm.means, atol=1e-6)
    assert torch.allclose(twice.log_scales, norm.log_scales, atol=1e-6)


def test_normalized_works_per_batch_element():
    a, b = random_cloud(30, seed=1), random_cloud(30, seed=2).replace(means=random_cloud(30, seed=2).means * 10)
    batched = GaussianCloud.stack([a, b])
    norm = batched.normalized()
    assert torch.allclose(norm.means[0], a.normalized().means, atol=1e-6)
    assert torch.allclose(norm.means[1], b.normalized().means, atol=1e-6)


def test_normalized_refuses_a_single_point():
    cloud = random_cloud(3).replace(means=torch.ones(3, 3))
    with pytest.raises(GaussianFormatError, match="one point"):
        cloud.normalized()


def test_resample_keeps_order_and_passes_exact_counts_through():
    cloud = random_cloud(100)
    assert cloud.resample(100) is cloud
    sub = cloud.resample(40, seed=3)
    assert len(sub) == 40
    # indices recovered from the unique x coordinates are strictly increasing (input order kept)
    idx = torch.stack([torch.nonzero(cloud.means[:, 0] == x)[0, 0] for x in sub.means[:, 0]])
    assert bool((idx[1:] > idx[:-1]).all())
    assert torch.equal(sub.means, cloud.resample(40, seed=3).means)
    assert not torch.equal(sub.means, cloud.resample(40, seed=4).means)


def test_resample_pads_with_seeded_duplicates():
    cloud = random_cloud(10)
    up = cloud.resample(25, seed=0)
    assert len(up) == 25
    assert torch.unique(up.means, dim=0).shape[0] == 10  # every original kept, nothing invented
    with pytest.raises(ConfigError, match="positive"):
        cloud.resample(0)


def test_stack_batches_equal_counts():
    a, b = random_cloud(8, seed=1), random_cloud(8, seed=2)
    batched = GaussianCloud.stack([a, b])
    assert batched.batch_shape == (2,) and batched.num_gaussians == 8
    assert torch.equal(batched.means[0], a.means) and torch.equal(batched.sh[1], b.sh)
    back = batched.unbind()
    assert torch.equal(back[1].quats, b.quats)
    named = GaussianCloud.stack([a.replace(source="a.ply"), b.replace(source="b.ply")])
    assert named.source == "a.ply, b.ply"
    with pytest.raises(GaussianFormatError, match="SH degrees"):
        GaussianCloud.stack([a, random_cloud(8, degree=1)])


def test_stack_refuses_unequal_counts_instead_of_padding():
    # Padding used to enter normalized()'s centroid and radius: a 5-Gaussian object stacked with a
    # 50-Gaussian one normalised differently than alone. Unequal counts are now refused, by name.
    small, large = random_cloud(5, seed=1).replace(source="small.ply"), random_cloud(50, seed=2)
    with pytest.raises(GaussianFormatError, match=r"different Gaussian counts \(small.ply: 5, #1: 50\).*resample"):
        GaussianCloud.stack([small, large])
    batched = GaussianCloud.stack([small.resample(50, seed=0), large])
    alone = small.resample(50, seed=0).normalized()
    assert torch.allclose(batched.normalized().means[0], alone.means, atol=1e-6)
    assert torch.allclose(batched.normalized().log_scales[0], alone.log_scales, atol=1e-6)


def test_to_changes_dtype():
    cloud = random_cloud(4).to(dtype=torch.float64)
    assert cloud.dtype == torch.float64 and cloud.sh.dtype == torch.float64


def test_repr_and_len():
    cloud = random_cloud(1234, degree=2).replace(source="thing.ply")
    assert len(cloud) == 1234
    text = repr(cloud)
    assert "num_gaussians=1,234" in text and "sh_degree=2" in text and "thing.ply" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"means": torch.zeros(4, 2)}, "means must have shape"),
        ({"opacity_logits": torch.zeros(5)}, "opacity_logits must have shape"),
        ({"sh": torch.zeros(4, 2, 3)}, "coefficients per channel"),
        ({"quats": torch.zeros(4, 4)}, "all zero"),
        ({"log_scales": torch.tensor([[0.0, float("nan"), 0.0]] * 4)}, "non-finite"),
        ({"means": torch.zeros(4, 3, dtype=torch.int64)}, "floating point"),
    ],
)
def test_validation_errors_name_the_source(change, message):
    cloud = random_cloud(4).replace(source="bad.ply")
    with pytest.raises(GaussianFormatError, match=message) as info:
        cloud.replace(**change)
    assert "bad.ply" in str(info.value)


def test_empty_cloud_is_refused():
    with pytest.raises(GaussianFormatError, match="empty"):
        GaussianCloud(torch.zeros(0, 3), torch.zeros(0, 1, 3), torch.zeros(0), torch.zeros(0, 3), torch.zeros(0, 4))


def test_from_activated_inverts_the_views():
    cloud = random_cloud(30)
    back = GaussianCloud.from_activated(cloud.means, cloud.rgb, cloud.opacity, cloud.scales, cloud.quats)
    assert torch.allclose(back.opacity, cloud.opacity, atol=1e-6)
    assert torch.allclose(back.scales, cloud.scales, rtol=1e-5)
    assert torch.allclose(back.rgb, cloud.rgb, atol=1e-6)
    with pytest.raises(GaussianFormatError, match="strictly inside"):
        GaussianCloud.from_activated(cloud.means, cloud.rgb, torch.ones(30), cloud.scales, cloud.quats)
    with pytest.raises(GaussianFormatError, match="positive"):
        GaussianCloud.from_activated(cloud.means, cloud.rgb, cloud.opacity, -cloud.scales, cloud.quats)


def test_to_without_a_change_returns_the_same_cloud():
    cloud = random_cloud(4)
    assert cloud.to("cpu") is cloud and cloud.to(dtype=torch.float32) is cloud and cloud.to() is cloud
    assert cloud.to(dtype=torch.float64) is not cloud
