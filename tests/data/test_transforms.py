"""Seeded 3DGS transforms: exact geometry (covariances, SH bands, renders), seeds, batching, errors."""

from __future__ import annotations

import math

import pytest
import torch

from clip_gs import GaussianCloud
from clip_gs.data import (
    ColorDrop,
    ColorJitter,
    Compose,
    PositionJitter,
    RandomRotation,
    RandomScale,
    RandomTranslation,
    Resample,
    element_seed,
    sample_seed,
    step_seed,
)
from clip_gs.errors import ConfigError, GaussianFormatError
from clip_gs.gaussians import quaternions_to_matrices
from clip_gs.gaussians.frames import quaternion_multiply, rotate_cloud, sh_rotation_matrix
from clip_gs.render import eval_sh, orbit_cameras, render_cloud

F64 = torch.float64
FIELDS = ("means", "sh", "opacity_logits", "log_scales", "quats")


def make_cloud(n: int = 200, degree: int = 0, seed: int = 0, batch: tuple[int, ...] = (), dtype=F64) -> GaussianCloud:
    """Random cloud inside the unit sphere, built directly from (batched) tensors."""
    gen = torch.Generator().manual_seed(seed)
    lead = (*batch, n)
    return GaussianCloud(
        means=(torch.rand(*lead, 3, generator=gen, dtype=F64) * 2 - 1) * 0.55,
        sh=torch.randn(*lead, (degree + 1) ** 2, 3, generator=gen, dtype=F64) * 0.4,
        opacity_logits=torch.randn(*lead, generator=gen, dtype=F64) + 1.0,
        log_scales=torch.log(torch.rand(*lead, 3, generator=gen, dtype=F64) * 0.08 + 0.02),
        quats=torch.randn(*lead, 4, generator=gen, dtype=F64) * 2.0,  # unnormalised on purpose
    ).to(dtype=dtype)


def assert_same(a: GaussianCloud, b: GaussianCloud) -> None:
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def random_quat(seed: int) -> torch.Tensor:
    q = torch.randn(4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return q / q.norm()


def random_dirs(count: int, seed: int) -> torch.Tensor:
    d = torch.randn(count, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return d / d.norm(dim=-1, keepdim=True)


ALL_TRANSFORMS = {
    "rotation_up": RandomRotation(),
    "rotation_so3": RandomRotation(mode="so3"),
    "scale": RandomScale(),
    "translation": RandomTranslation(),
    "position_jitter": PositionJitter(sigma=0.01),
    "color_jitter": ColorJitter(),
    "resample": Resample(num_gaussians=150),
    "compose": Compose([RandomRotation(mode="so3"), RandomScale(), PositionJitter(), ColorJitter(), Resample(120)]),
}


# ------------------------------------------------------------------ seeds
def test_sample_seed_is_a_deterministic_well_mixed_function():
    seeds = [sample_seed(7, epoch, index) for epoch in range(3) for index in range(300)]
    assert seeds == [sample_seed(7, epoch, index) for epoch in range(3) for index in range(300)]
    assert len(set(seeds)) == len(seeds)  # every (epoch, index) its own seed
    assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert sample_seed(7, 0, 0) != sample_seed(8, 0, 0) and sample_seed(0, 1, 0) != sample_seed(0, 0, 1)
    ones = sum(bin(s).count("1") for s in seeds) / len(seeds)
    assert 29 < ones < 34  # about 63 / 2 bits set: mixed, not a counter
    # the three derivations are separate streams
    assert len({sample_seed(1, 2, 3), element_seed(1, 2), step_seed(1, 2)}) == 3


# ------------------------------------------------------------------ rotation
def test_quaternion_multiply_composes_rotations():
    a, b = random_quat(1), random_quat(2)
    torch.testing.assert_close(
        quaternions_to_matrices(quaternion_multiply(a, b)), quaternions_to_matrices(a) @ quaternions_to_matrices(b)
    )


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_rotated_sh_evaluates_to_the_original_at_inversely_rotated_directions(degree):
    cloud = make_cloud(50, degree, seed=degree)
    for seed in range(3):
        quat = random_quat(10 + seed)
        rot = quaternions_to_matrices(quat)
        rotated = rotate_cloud(cloud, quat)
        dirs = random_dirs(50, seed)  # one direction per Gaussian
        got = eval_sh(rotated.sh, dirs, degree)
        expected = eval_sh(cloud.sh, dirs @ rot, degree)  # rows R^T d
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
        assert (got - eval_sh(cloud.sh, dirs, degree)).abs().max() > 1e-2  # the colour really turned


def test_sh_rotation_matrices_are_orthogonal_and_compose():
    r1, r2 = quaternions_to_matrices(random_quat(3)), quaternions_to_matrices(random_quat(4))
    t1, t2, t12 = sh_rotation_matrix(r1, 3), sh_rotation_matrix(r2, 3), sh_rotation_matrix(r1 @ r2, 3)
    torch.testing.assert_close(t1 @ t1.T, torch.eye(16, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(t12, t1 @ t2, atol=1e-12, rtol=0)
    mask = torch.block_diag(*[torch.ones(2 * band + 1, 2 * band + 1) for band in range(4)]).bool()
    assert bool((t1[~mask] == 0).all())  # bands never mix


@pytest.mark.parametrize("mode", ["up", "so3"])
def test_rotation_transforms_means_and_covariances_exactly(mode):
    cloud = make_cloud(100, degree=1)
    transform = RandomRotation(mode=mode)
    out = transform(cloud, seed=5)
    rot = quaternions_to_matrices(transform.quaternion(5))
    torch.testing.assert_close(out.means, cloud.means @ rot.T, atol=1e-14, rtol=0)
    torch.testing.assert_close(out.covariances(), rot @ cloud.covariances() @ rot.T, atol=1e-14, rtol=0)
    torch.testing.assert_close(out.quats.norm(dim=-1), cloud.quats.norm(dim=-1))  # stored norms kept
    assert torch.equal(out.log_scales, cloud.log_scales) and torch.equal(out.opacity_logits, cloud.opacity_logits)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    if mode == "up":  # +Y, the orbit cameras' up axis, is fixed; heights are unchanged
        torch.testing.assert_close(rot @ up, up, atol=1e-15, rtol=0)
        torch.testing.assert_close(out.means[:, 1], cloud.means[:, 1], atol=1e-15, rtol=0)
    else:
        assert (rot @ up - up).norm() > 1e-3


def test_rotation_about_the_up_axis_respects_max_angle_and_axis():
    for seed in range(20):
        quat = RandomRotation(max_angle_deg=30.0).quaternion(seed)
        assert 2 * math.degrees(math.acos(min(1.0, abs(float(quat[0]))))) <= 30.0 + 1e-9
        assert float(quat[1]) == 0.0 and float(quat[3]) == 0.0  # about y only
    z_quat = RandomRotation(up="+z").quaternion(0)
    assert float(z_quat[1]) == 0.0 and float(z_quat[2]) == 0.0


def test_q_and_minus_q_stay_equivalent():
    cloud = make_cloud(100, degree=2)
    flipped = cloud.replace(quats=-cloud.quats)
    quat = random_quat(6)
    outs = [rotate_cloud(c, r) for c in (cloud, flipped) for r in (quat, -quat)]
    cams = orbit_cameras(1, width=24, height=24, dtype=F64)
    ref_cov, ref_img = outs[0].covariances(), render_cloud(outs[0], cams).rgb
    for out in outs[1:]:
        torch.testing.assert_close(out.covariances(), ref_cov, atol=1e-15, rtol=0)
        torch.testing.assert_close(out.sh, outs[0].sh, atol=1e-15, rtol=0)
        torch.testing.assert_close(render_cloud(out, cams).rgb, ref_img, atol=1e-12, rtol=0)


@pytest.mark.parametrize("degree", [0, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_render_of_rotated_cloud_equals_render_from_inversely_rotated_camera(degree, dtype):
    cloud = make_cloud(300, degree, seed=11, dtype=dtype)
    transform = RandomRotation(mode="so3")
    rotated = transform(cloud, seed=3)
    rot = quaternions_to_matrices(transform.quaternion(3))
    cams = orbit_cameras(2, width=32, height=32, dtype=F64)
    g = torch.eye(4, dtype=F64)
    g[:3, :3] = rot
    moved_cams = type(cams)(cams.viewmats @ g, cams.Ks, cams.width, cams.height)  # V' = V [[R, 0], [0, 1]]
    got = render_cloud(rotated, cams)
    expected = render_cloud(cloud, moved_cams)
    assert expected.alpha.max() > 0.9 and expected.rgb.std() > 0.05  # a real image
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    assert (got.rgb - expected.rgb).abs().max() < tol
    assert (got.alpha - expected.alpha).abs().max() < tol
    if degree > 0:  # the SH bands matter: leaving them unrotated gives a visibly different image
        unrotated_sh = render_cloud(rotated.replace(sh=cloud.sh), cams)
        assert (unrotated_sh.rgb - expected.rgb).abs().max() > 1e-2


# ------------------------------------------------------------------ scale, translation, jitter
def test_scaling_scales_means_and_covariances():
    cloud = make_cloud(100, degree=1)
    transform = RandomScale(min_scale=0.5, max_scale=2.0)
    out = transform(cloud, seed=9)
    s = transform.factor(9)
    assert 0.5 <= s <= 2.0 and abs(s - 1.0) > 1e-3
    torch.testing.assert_close(out.means, cloud.means * s, atol=1e-15, rtol=0)
    torch.testing.assert_close(out.covariances(), s**2 * cloud.covariances(), atol=1e-15, rtol=1e-13)
    assert torch.equal(out.sh, cloud.sh) and torch.equal(out.quats, cloud.quats)
    fixed = RandomScale(min_scale=1.5, max_scale=1.5)
    assert fixed.factor(0) == fixed.factor(1) == pytest.approx(1.5, abs=1e-15)


def test_translation_moves_every_mean_by_one_offset_and_keeps_covariances():
    cloud = make_cloud(100)
    transform = RandomTranslation(max_offset=0.3)
    out = transform(cloud, seed=4)
    shift = out.means - cloud.means
    torch.testing.assert_close(shift, shift[:1].expand_as(shift), atol=1e-15, rtol=0)
    torch.testing.assert_close(shift[0], transform.offset(4), atol=1e-15, rtol=0)
    assert bool((shift[0].abs() <= 0.3).all()) and shift[0].abs().max() > 1e-3
    assert torch.equal(out.covariances(), cloud.covariances())


def test_position_jitter_adds_noise_of_sigma_and_keeps_covariances():
    cloud = make_cloud(4000)
    out = PositionJitter(sigma=0.02)(cloud, seed=1)
    noise = out.means - cloud.means
    assert abs(float(noise.std()) - 0.02) < 0.001 and abs(float(noise.mean())) < 0.001
    assert torch.equal(out.covariances(), cloud.covariances())
    assert torch.equal(out.sh, cloud.sh) and torch.equal(out.opacity_logits, cloud.opacity_logits)
    assert_same(PositionJitter(sigma=0.0)(cloud, seed=1), cloud)


# ------------------------------------------------------------------ colour, resampling
@pytest.mark.parametrize("degree", [0, 2])
def test_color_jitter_is_one_affine_map_of_the_raw_colour_for_every_direction(degree):
    cloud = make_cloud(100, degree)
    transform = ColorJitter(gain=0.2, brightness=0.1)
    out = transform(cloud, seed=2)
    gain, offset = transform.parameters(2)
    assert bool(((gain >= 0.8) & (gain <= 1.2)).all()) and (gain - 1).abs().max() > 1e-3
    assert offset.abs().max() <= 0.1 and bool((offset == offset[0]).all())  # brightness: one offset for r, g, b
    dirs = random_dirs(100, 0)
    before = eval_sh(cloud.sh, dirs, degree) + 0.5
    torch.testing.assert_close(eval_sh(out.sh, dirs, degree) + 0.5, gain * before + offset, atol=1e-13, rtol=0)
    torch.testing.assert_close(out.rgb, (gain * (0.5 + 0.28209479177387814 * cloud.sh_dc) + offset).clamp(0, 1))
    assert torch.equal(out.means, cloud.means) and torch.equal(out.covariances(), cloud.covariances())


def test_resample_gives_the_count_and_handles_batches_per_element():
    single = make_cloud(100)
    assert Resample(64)(single, seed=0).num_gaussians == 64
    assert Resample(130)(single, seed=0).num_gaussians == 130
    assert_same(Resample(64)(single, seed=3), single.resample(64, seed=3))
    batch = make_cloud(100, batch=(3,))
    out = Resample(64)(batch, seed=0)
    assert out.batch_shape == (3,) and out.num_gaussians == 64


# ------------------------------------------------------------------ reproducibility and batching
@pytest.mark.parametrize("name", sorted(ALL_TRANSFORMS))
def test_same_seed_same_output_different_seed_different_output(name):
    transform = ALL_TRANSFORMS[name]
    cloud = make_cloud(200, degree=1, dtype=torch.float32)
    a, b = transform(cloud, sample_seed(0, 0, 5)), transform(cloud, sample_seed(0, 0, 5))
    assert_same(a, b)
    c = transform(cloud, sample_seed(0, 0, 6))
    assert any(not torch.equal(getattr(a, f), getattr(c, f)) for f in FIELDS)


@pytest.mark.parametrize("name", sorted(ALL_TRANSFORMS))
def test_batched_equals_per_element_with_element_seeds(name):
    transform = ALL_TRANSFORMS[name]
    batch = make_cloud(200, degree=1, batch=(3,), dtype=torch.float32)
    out = transform(batch, seed=17)
    assert out.batch_shape == (3,)
    for b, element in enumerate(batch.unbind()):
        assert_same(out.unbind()[b], transform(element, element_seed(17, b)))
    # identical elements still get their own random parameters
    same = GaussianCloud(**{f: getattr(batch, f)[:1].expand(3, *getattr(batch, f).shape[1:]) for f in FIELDS})
    parts = transform(same, seed=17).unbind()
    assert not torch.equal(parts[0].means, parts[1].means) or not torch.equal(parts[0].sh, parts[1].sh)


def test_two_batch_dimensions_flatten_row_major():
    transform = RandomRotation(mode="so3")
    batch = make_cloud(50, batch=(2, 3))
    out = transform(batch, seed=1)
    assert out.batch_shape == (2, 3)
    flat = out.means.reshape(6, 50, 3)
    for b in range(6):
        element = GaussianCloud(**{f: getattr(batch, f).reshape(6, *getattr(batch, f).shape[2:])[b] for f in FIELDS})
        assert torch.equal(flat[b], transform(element, element_seed(1, b)).means)


def test_compose_applies_steps_in_order_with_step_seeds():
    steps = [RandomScale(min_scale=2.0, max_scale=2.0), RandomTranslation(max_offset=0.5), ColorJitter()]
    cloud = make_cloud(80, degree=1)
    expected = cloud
    for i, step in enumerate(steps):
        expected = step(expected, step_seed(21, i))
    assert_same(Compose(steps)(cloud, seed=21), expected)
    assert_same(Compose([])(cloud, seed=21), cloud)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RandomRotation(mode="xyz"), "mode must be 'up' or 'so3'"),
        (lambda: RandomRotation(up="x"), "up must be one of"),
        (lambda: RandomRotation(max_angle_deg=270.0), "max_angle_deg must lie in"),
        (lambda: RandomScale(min_scale=-0.5), "min_scale must lie in"),
        (lambda: RandomScale(min_scale=0.0), "min_scale must lie in"),
        (lambda: RandomScale(min_scale=2.0, max_scale=1.0), "max_scale must lie in"),
        (lambda: RandomTranslation(max_offset=-0.1), "max_offset"),
        (lambda: PositionJitter(sigma=-1.0), "sigma must lie in"),
        (lambda: PositionJitter(sigma=float("nan")), "sigma must be a finite number"),
        (lambda: ColorJitter(gain=1.0), "gain must lie in"),
        (lambda: ColorJitter(brightness="0.1"), "brightness must be a finite number"),
        (lambda: Resample(num_gaussians=0), "num_gaussians must be a positive int"),
        (lambda: Resample(num_gaussians=10.0), "num_gaussians must be a positive int"),
        (lambda: Compose([RandomScale(), 3]), "transform 1 is not callable"),
        (lambda: sample_seed(-1, 0, 0), "base_seed must be a non-negative int"),
        (lambda: sample_seed(0, 0.5, 0), "epoch must be a non-negative int"),
        (lambda: RandomScale()(make_cloud(10), seed=-3), "seed must be a non-negative int"),
        (lambda: PositionJitter()(make_cloud(10), seed=True), "seed must be a non-negative int"),
    ],
)
def test_bad_parameters_raise_config_errors_naming_the_problem(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_non_cloud_input_is_a_format_error():
    with pytest.raises(GaussianFormatError, match="RandomScale needs a GaussianCloud, got Tensor"):
        RandomScale()(torch.zeros(10, 3), seed=0)


def test_color_drop_greys_whole_objects_for_a_seeded_fraction():
    """Uni3D's colour drop: with probability p the object's colour is flat grey (view-independent), else
    untouched; the draw is a pure function of the seed and geometry never changes."""
    torch.manual_seed(0)
    cloud = GaussianCloud(torch.randn(200, 3), torch.randn(200, 4, 3), torch.randn(200), torch.randn(200, 3),
                          torch.randn(200, 4))  # fmt: skip
    drop = ColorDrop(p=0.5, grey=0.4)
    dropped = [seed for seed in range(400) if drop.drops(seed)]
    assert 160 < len(dropped) < 240  # about half
    grey = drop(cloud, dropped[0])
    torch.testing.assert_close(grey.rgb, torch.full_like(cloud.rgb, 0.4))
    assert torch.count_nonzero(grey.sh[:, 1:]) == 0  # no view-dependent colour left
    for field in ("means", "opacity_logits", "log_scales", "quats"):
        assert torch.equal(getattr(grey, field), getattr(cloud, field))
    kept = next(seed for seed in range(400) if seed not in dropped)
    assert torch.equal(drop(cloud, kept).sh, cloud.sh)
    assert not ColorDrop(p=0.0).drops(0) and ColorDrop(p=1.0).drops(0)
    with pytest.raises(ConfigError, match="ColorDrop"):
        ColorDrop(p=1.5)
