"""The torch reference rasterizer against closed forms, invariants and gradients; SH; contact sheets."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from clip_gs import GaussianCloud
from clip_gs.errors import MissingDependencyError, RenderError
from clip_gs.render import (
    contact_sheet,
    orbit_cameras,
    rasterize,
    render_cloud,
    sh_basis,
    sh_to_rgb,
)
from clip_gs.render.gsplat_backend import gsplat_available
from clip_gs.render.reference import project_gaussians
from tests.conftest import real_file, requires_cuda

F64 = torch.float64


def pinhole(width: int, height: int, focal: float, cx: float | None = None, cy: float | None = None, dtype=F64):
    """Identity world-to-camera and a pinhole K (the world frame is the OpenCV camera frame)."""
    cx = width / 2 if cx is None else cx
    cy = height / 2 if cy is None else cy
    K = torch.tensor([[[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]]], dtype=dtype)
    return torch.eye(4, dtype=dtype)[None], K


def expected_single(mean, quat_wxyz, scales, opacity, color, width, height, focal, cx, cy):
    """Closed-form render of one Gaussian seen by the identity camera (numpy, scipy rotation)."""
    x, y, z = mean
    rot = Rotation.from_quat([quat_wxyz[1], quat_wxyz[2], quat_wxyz[3], quat_wxyz[0]]).as_matrix()
    cov3 = rot @ np.diag(np.square(scales)) @ rot.T
    jac = np.array([[focal / z, 0, -focal * x / z**2], [0, focal / z, -focal * y / z**2]])
    cov2 = jac @ cov3 @ jac.T + 0.3 * np.eye(2)
    inv = np.linalg.inv(cov2)
    centre = np.array([focal * x / z + cx, focal * y / z + cy])
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    d = np.stack([cols, rows], -1) - centre
    maha = np.einsum("hwi,ij,hwj->hw", d, inv, d)
    alpha = np.minimum(0.99, opacity * np.exp(-0.5 * maha))
    alpha[alpha < 1 / 255] = 0.0
    return alpha[..., None] * np.asarray(color), alpha, np.where(alpha > 0, z, 0.0)


# ------------------------------------------------------------------ closed forms
@pytest.mark.parametrize(
    ("mean", "quat", "scales"),
    [
        ((0.0, 0.0, 4.0), (1.0, 0.0, 0.0, 0.0), (0.3, 0.3, 0.3)),  # isotropic, on axis
        ((0.4, -0.3, 5.0), (0.9, 0.2, -0.3, 0.25), (0.6, 0.15, 0.3)),  # anisotropic, rotated, off axis
    ],
)
def test_single_gaussian_matches_closed_form(mean, quat, scales):
    width, height, focal = 41, 33, 30.0
    q = np.asarray(quat) / np.linalg.norm(quat)
    viewmats, Ks = pinhole(width, height, focal)
    out = rasterize(
        torch.tensor([mean], dtype=F64),
        torch.tensor([quat], dtype=F64),  # unnormalised on purpose: the rasterizer normalises
        torch.tensor([scales], dtype=F64),
        torch.tensor([0.8], dtype=F64),
        torch.tensor([[0.2, 0.6, 0.9]], dtype=F64),
        viewmats, Ks, width, height, tile_size=8,
    )  # fmt: skip
    rgb, alpha, depth = expected_single(mean, q, scales, 0.8, (0.2, 0.6, 0.9), width, height, focal,
                                        width / 2, height / 2)  # fmt: skip
    assert alpha.max() > 0.5 and (alpha > 0).sum() > 50  # the footprint really covers the image
    np.testing.assert_allclose(out.rgb[0].numpy(), rgb, atol=1e-12)
    np.testing.assert_allclose(out.alpha[0].numpy(), alpha, atol=1e-12)
    np.testing.assert_allclose(out.depth[0].numpy(), depth, atol=1e-9)


def test_rigid_change_of_world_frame_leaves_the_image_unchanged():
    gen = torch.Generator().manual_seed(3)
    n, width, height = 30, 40, 30
    means = torch.randn(n, 3, generator=gen, dtype=F64) * 0.5 + torch.tensor([0.0, 0.0, 4.0], dtype=F64)
    quats = torch.randn(n, 4, generator=gen, dtype=F64)
    scales = torch.rand(n, 3, generator=gen, dtype=F64) * 0.2 + 0.05
    opac = torch.rand(n, generator=gen, dtype=F64) * 0.8 + 0.1
    rgb = torch.rand(n, 3, generator=gen, dtype=F64)
    viewmats, Ks = pinhole(width, height, 35.0)
    ref = rasterize(means, quats, scales, opac, rgb, viewmats, Ks, width, height)

    rot_q = torch.tensor(Rotation.from_euler("xyz", [30, -50, 70], degrees=True).as_quat(), dtype=F64)
    g_rot = torch.tensor(Rotation.from_quat(rot_q.numpy()).as_matrix(), dtype=F64)
    g = torch.eye(4, dtype=F64)
    g[:3, :3], g[:3, 3] = g_rot, torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    q_g = torch.cat([rot_q[3:], rot_q[:3]])  # wxyz
    w1, x1, y1, z1 = q_g
    w2, x2, y2, z2 = quats.unbind(-1)
    moved_quats = torch.stack([  # Hamilton product q_g * q
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], -1)  # fmt: skip
    moved = rasterize(means @ g_rot.T + g[:3, 3], moved_quats, scales, opac, rgb,
                      viewmats @ torch.linalg.inv(g), Ks, width, height)  # fmt: skip
    assert ref.alpha.max() > 0.5
    torch.testing.assert_close(moved.rgb, ref.rgb, atol=1e-9, rtol=0)
    torch.testing.assert_close(moved.depth, ref.depth, atol=1e-9, rtol=0)


# ------------------------------------------------------------------ compositing
def _two_gaussians(depth_red: float, depth_blue: float):
    means = torch.tensor([[0.0, 0.0, depth_red], [0.0, 0.0, depth_blue]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64)
    scales = torch.tensor([[0.3, 0.3, 0.3], [0.3 * depth_blue / depth_red] * 3], dtype=F64)  # same screen size
    opac = torch.tensor([0.8, 0.8], dtype=F64)
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    viewmats, Ks = pinhole(15, 15, 20.0)  # odd size: the optical axis hits the centre of pixel (7, 7)
    return rasterize(means, quats, scales, opac, colors, viewmats, Ks, 15, 15)


def test_front_gaussian_dominates_and_swapping_depths_swaps_the_colour():
    front_red = _two_gaussians(3.0, 5.0).rgb[0, 7, 7]
    front_blue = _two_gaussians(5.0, 3.0).rgb[0, 7, 7]
    # Centre pixel: alpha = opacity exactly; front 0.8, back 0.8 * (1 - 0.8).
    torch.testing.assert_close(front_red, torch.tensor([0.8, 0.0, 0.16], dtype=F64))
    torch.testing.assert_close(front_blue, torch.tensor([0.16, 0.0, 0.8], dtype=F64))


def test_expected_depth_is_the_alpha_weighted_mean():
    out = _two_gaussians(3.0, 5.0)
    torch.testing.assert_close(out.depth[0, 7, 7], torch.tensor((0.8 * 3 + 0.16 * 5) / 0.96, dtype=F64))
    torch.testing.assert_close(out.alpha[0, 7, 7], torch.tensor(0.96, dtype=F64))


def test_compositing_stops_before_transmittance_drops_below_1e_4():
    # Transmittance after k Gaussians of opacity 0.95 is 0.05^k: 1.25e-4 after 3, 6.25e-6 after 4.
    means = torch.tensor([[0.0, 0.0, z] for z in (2.0, 3.0, 4.0, 5.0)], dtype=F64)
    colors = torch.tensor([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1], [1.0, 1.0, 1.0]], dtype=F64)
    viewmats, Ks = pinhole(15, 15, 20.0)
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=F64), means[:, 2:].expand(4, 3) * 0.1,
                    torch.full((4,), 0.95, dtype=F64), colors, viewmats, Ks, 15, 15)  # fmt: skip
    torch.testing.assert_close(out.alpha[0, 7, 7], torch.tensor(1 - 0.05**3, dtype=F64))
    # The fourth (white) Gaussian is never composited at the centre.
    expected = 0.1 * torch.tensor([0.95, 0.95 * 0.05, 0.95 * 0.05**2], dtype=F64)
    torch.testing.assert_close(out.rgb[0, 7, 7], expected)


def test_background_fills_the_transmittance_and_opacity_scales_alpha():
    width = height = 15
    viewmats, Ks = pinhole(width, height, 20.0)
    args = (torch.tensor([[0.0, 0.0, 4.0]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
            torch.full((1, 3), 0.2, dtype=F64))  # fmt: skip
    color = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64)
    bg = torch.tensor([0.25, 0.5, 1.0], dtype=F64)
    full = rasterize(*args, torch.tensor([0.6], dtype=F64), color, viewmats, Ks, width, height, background=bg)
    half = rasterize(*args, torch.tensor([0.3], dtype=F64), color, viewmats, Ks, width, height, background=bg)
    black = rasterize(*args, torch.tensor([0.6], dtype=F64), color, viewmats, Ks, width, height)
    torch.testing.assert_close(full.rgb, black.rgb + (1 - full.alpha)[..., None] * bg)
    covered = half.alpha > 0  # smaller opacity: smaller footprint, half the alpha inside it
    torch.testing.assert_close(half.alpha[covered], full.alpha[covered] / 2)
    assert bool((full.alpha[~covered] >= 0).all()) and covered.sum() < (full.alpha > 0).sum()
    corner = full.rgb[0, 0, 0]
    torch.testing.assert_close(corner, bg)  # nothing reaches the corner


def test_random_scene_outputs_are_in_range_and_deterministic():
    gen = torch.Generator().manual_seed(0)
    n = 2000
    means = torch.randn(n, 3, generator=gen) * 0.6
    quats = torch.randn(n, 4, generator=gen)
    scales = torch.rand(n, 3, generator=gen) * 0.08 + 0.005
    opac = torch.rand(n, generator=gen)
    sh = torch.randn(n, 16, 3, generator=gen) * 0.5
    cams = orbit_cameras(2, width=48, height=40)
    runs = [rasterize(means, quats, scales, opac, sh, cams.viewmats, cams.Ks, 48, 40, background=torch.ones(3))
            for _ in range(2)]  # fmt: skip
    out = runs[0]
    assert out.rgb.shape == (2, 40, 48, 3) and out.alpha.shape == (2, 40, 48) and out.depth.shape == (2, 40, 48)
    assert bool(((out.alpha >= 0) & (out.alpha <= 1)).all()) and out.alpha.max() > 0.9
    assert bool((out.rgb >= 0).all())
    for name in ("rgb", "alpha", "depth"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name)), name


def test_tiling_and_chunking_do_not_change_the_image():
    gen = torch.Generator().manual_seed(1)
    n = 300
    means = torch.randn(n, 3, generator=gen, dtype=F64) * 0.5
    quats = torch.randn(n, 4, generator=gen, dtype=F64)
    scales = torch.rand(n, 3, generator=gen, dtype=F64) * 0.1 + 0.01
    opac = torch.rand(n, generator=gen, dtype=F64)
    rgb = torch.rand(n, 3, generator=gen, dtype=F64)
    cams = orbit_cameras(1, width=37, height=29, dtype=F64)
    args = (means, quats, scales, opac, rgb, cams.viewmats, cams.Ks, 37, 29)
    ref = rasterize(*args, tile_size=16, chunk_size=1024, backend="reference")
    other = rasterize(*args, tile_size=5, chunk_size=3, backend="reference")
    torch.testing.assert_close(other.rgb, ref.rgb, atol=1e-12, rtol=0)
    torch.testing.assert_close(other.alpha, ref.alpha, atol=1e-12, rtol=0)


def _random_scene(n: int, seed: int, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * 0.5
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = torch.rand(n, 3, generator=gen, dtype=dtype) * 0.1 + 0.005
    opac = torch.rand(n, generator=gen, dtype=dtype) * 0.98 + 0.01
    sh = torch.randn(n, 16, 3, generator=gen, dtype=dtype) * 0.4
    return means, quats, scales, opac, sh


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_backends_equal_the_reference_in_values_and_gradients(seed, backend):
    """The batched torch backend (4 x 4 px tiles in blocks) and the compiled numba kernels against the
    per-tile reference: an odd image size, SH degree 3, three cameras of which one looks away from everything."""
    width, height = 45, 31
    params = [t.requires_grad_(True) for t in _random_scene(1500, seed)]
    cams = orbit_cameras(2, width=width, height=height, dtype=F64)
    away = cams.viewmats[:1].clone()
    away[0, :3, 3] += torch.tensor([0.0, 0.0, -50.0], dtype=F64)  # everything behind this camera
    viewmats, Ks = torch.cat([cams.viewmats, away]), torch.cat([cams.Ks, cams.Ks[:1]])
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    outs, grads = {}, {}
    weights = [
        torch.rand(3, height, width, 3, dtype=F64, generator=torch.Generator().manual_seed(9 + k)) for k in range(2)
    ]
    for name in ("reference", backend):
        out = rasterize(*params, viewmats, Ks, width, height, background=bg, backend=name)
        loss = (out.rgb * weights[0]).sum() + (out.alpha * weights[1][..., 0]).sum() + (out.depth * 1e-2).sum()
        grads[name] = torch.autograd.grad(loss, params)
        outs[name] = out
    ref, fast = outs["reference"], outs[backend]
    assert float(ref.alpha[:2].max().detach()) > 0.9 and float(ref.alpha[2].max().detach()) == 0.0
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name), atol=1e-10, rtol=1e-10)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), grads[backend], grads["reference"]):
        assert float(b.abs().max()) > 0, name
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8, msg=name)


def test_numba_backend_float32_and_thread_count_independence(monkeypatch):
    """In float32 (the fitting dtype) the kernels agree with the float64 reference to float32 rounding,
    and 1 or 2 threads give bit-identical images and gradients (each tile belongs to one thread)."""
    import clip_gs.render.numba_backend as kernels

    monkeypatch.setattr(kernels, "PAIRS_PER_THREAD", 1)  # this small scene would otherwise run on one thread
    width, height = 40, 36
    scene = _random_scene(800, 3)
    cams = orbit_cameras(2, width=width, height=height)
    ref_params = [t.clone().requires_grad_(True) for t in scene]
    ref = rasterize(*ref_params, cams.viewmats.double(), cams.Ks.double(), width, height, backend="reference")
    ref_grads = torch.autograd.grad(ref.rgb.sum() + ref.alpha.sum(), ref_params)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            params = [t.float().requires_grad_(True) for t in scene]
            out = rasterize(*params, cams.viewmats, cams.Ks, width, height, backend="numba")
            results.append((out.rgb, torch.autograd.grad(out.rgb.sum() + out.alpha.sum(), params)))
    finally:
        torch.set_num_threads(threads)
    (rgb1, grads1), (rgb2, grads2) = results
    assert torch.equal(rgb1, rgb2) and all(torch.equal(a, b) for a, b in zip(grads1, grads2))
    torch.testing.assert_close(rgb1.double(), ref.rgb.detach(), atol=2e-5, rtol=1e-4)
    for a, b in zip(grads1, ref_grads):
        torch.testing.assert_close(a.double(), b, atol=1e-3 * float(b.abs().max()), rtol=1e-3)


def test_culling_near_plane_and_outside_the_frustum():
    viewmats, Ks = pinhole(20, 20, 20.0)
    means = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.0, 0.005], [50.0, 0.0, 4.0], [0.0, 0.0, 4.0]], dtype=F64)
    ones = torch.ones(4, dtype=F64)
    proj = project_gaussians(means, torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=F64), torch.full((4, 3), 0.1, dtype=F64),
                             ones * 0.5, torch.ones(4, 3, dtype=F64), viewmats[0], Ks[0], 20, 20, None)  # fmt: skip
    assert proj.ids.tolist() == [3]  # behind, inside the near plane (0.01), far off to the side
    out = rasterize(means[:3], torch.tensor([[1.0, 0, 0, 0]] * 3, dtype=F64), torch.full((3, 3), 0.1, dtype=F64),
                    ones[:3] * 0.5, torch.ones(3, 3, dtype=F64), viewmats, Ks, 20, 20)  # fmt: skip
    assert float(out.alpha.max()) == 0.0


# ------------------------------------------------------------------ SH colour
def test_sh_basis_is_orthonormal_on_the_sphere():
    count = 200_000  # Fibonacci sphere: near-uniform directions
    i = torch.arange(count, dtype=F64) + 0.5
    z = 1 - 2 * i / count
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z**2)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    basis = sh_basis(dirs, 3)  # [count, 16]
    gram = 4 * math.pi * basis.T @ basis / count
    torch.testing.assert_close(gram, torch.eye(16, dtype=F64), atol=1e-3, rtol=0)


def test_sh_colour_depends_on_the_view_direction():
    coeffs = torch.zeros(1, 4, 3, dtype=F64)
    coeffs[0, 0] = torch.tensor([0.0, 0.0, 0.0])
    coeffs[0, 3, 0] = -1.0  # the x term: basis_3 = -C1 x, so red = 0.5 + C1 x
    towards_x = sh_to_rgb(coeffs, torch.tensor([[2.0, 0.0, 0.0]], dtype=F64), 1)
    towards_mx = sh_to_rgb(coeffs, torch.tensor([[-1.0, 0.0, 0.0]], dtype=F64), 1)
    torch.testing.assert_close(towards_x[0], torch.tensor([0.5 + 0.4886025119029199, 0.5, 0.5], dtype=F64))
    torch.testing.assert_close(towards_mx[0], torch.tensor([0.5 - 0.4886025119029199, 0.5, 0.5], dtype=F64))
    assert float(sh_to_rgb(coeffs * 3, torch.tensor([[-1.0, 0, 0]], dtype=F64), 1)[0, 0]) == 0.0  # clamp at 0


def test_render_cloud_uses_the_activated_views_and_sh_dc_matches_rgb():
    gen = torch.Generator().manual_seed(2)
    n = 200
    cloud = GaussianCloud.from_activated(
        means=torch.randn(n, 3, generator=gen) * 0.5,
        rgb=torch.rand(n, 3, generator=gen) * 0.8 + 0.1,
        opacity=torch.rand(n, generator=gen) * 0.8 + 0.1,
        scales=torch.rand(n, 3, generator=gen) * 0.05 + 0.01,
        quats=torch.randn(n, 4, generator=gen),
    )
    cams = orbit_cameras(2, width=32, height=32)
    out = render_cloud(cloud, cams)
    direct = rasterize(cloud.means, cloud.quats, cloud.scales, cloud.opacity, cloud.rgb, cams.viewmats, cams.Ks, 32, 32)
    assert out.alpha.max() > 0.5
    torch.testing.assert_close(out.rgb, direct.rgb, atol=1e-5, rtol=0)  # DC SH == rgb, q == q / |q|
    batched = GaussianCloud.stack([cloud, cloud])
    with pytest.raises(RenderError, match="unbatched"):
        render_cloud(batched, cams)


# ------------------------------------------------------------------ gradients
def test_gradcheck_all_gaussian_parameters():
    width, height = 12, 10
    viewmats, Ks = pinhole(width, height, 10.0)
    means = torch.tensor([[0.1, -0.05, 4.0], [-0.5, 0.3, 5.0], [0.4, 0.35, 4.5]], dtype=F64, requires_grad=True)
    quats = torch.tensor([[0.9, 0.1, -0.2, 0.3], [0.7, -0.3, 0.2, 0.1], [1.0, 0.2, 0.1, -0.4]], dtype=F64,
                         requires_grad=True)  # fmt: skip
    scales = torch.tensor([[0.8, 0.5, 0.6], [0.7, 0.9, 0.4], [0.5, 0.6, 0.7]], dtype=F64, requires_grad=True)
    opac = torch.tensor([0.7, 0.6, 0.8], dtype=F64, requires_grad=True)
    sh = torch.tensor([[[1.0, 0.2, -0.3]], [[-0.2, 0.8, 0.1]], [[0.3, -0.1, 0.9]]], dtype=F64)
    sh = torch.cat([sh, 0.1 * torch.ones(3, 3, 3, dtype=F64)], dim=1).requires_grad_(True)  # degree 1

    def render(m, q, s, o, c):  # the reference; the batched backend's gradients are held equal to it below
        out = rasterize(m, q, s, o, c, viewmats, Ks, width, height, tile_size=4, chunk_size=2,
                        background=torch.tensor([0.1, 0.2, 0.3], dtype=F64), backend="reference")  # fmt: skip
        return out.rgb, out.alpha, out.depth

    with torch.no_grad():
        alpha = render(means, quats, scales, opac, sh)[1]
    assert float(alpha.max()) > 0.7 and float((alpha > 0).float().mean()) > 0.6  # most pixels see Gaussians
    assert torch.autograd.gradcheck(render, (means, quats, scales, opac, sh), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------ memory
class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_stays_bounded_for_100k_gaussians_at_224():
    gen = torch.Generator().manual_seed(0)
    n, size, tile, chunk = 100_000, 224, 16, 1024
    direction = torch.randn(n, 3, generator=gen)
    means = direction / direction.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=gen) ** (1 / 3)
    scales = torch.exp(torch.randn(n, 3, generator=gen) * 0.3) * 0.01
    cams = orbit_cameras(1, width=size, height=size)
    with torch.no_grad(), _LargestTensor() as probe:
        out = rasterize(means, torch.randn(n, 4, generator=gen), scales, torch.rand(n, generator=gen) * 0.8 + 0.1,
                        torch.rand(n, 3, generator=gen), cams.viewmats, cams.Ks, size, size,
                        tile_size=tile, chunk_size=chunk)  # fmt: skip
    assert out.alpha.max() > 0.99
    # Per-Gaussian [N, 3, 3] tensors, tile intersections and [tile^2, chunk, 2] are the only big ones.
    assert probe.largest <= max(9 * n, 2 * tile * tile * chunk), probe.largest
    assert probe.largest < size * size * n / 1000


# ------------------------------------------------------------------ input errors and backends
def test_bad_inputs_raise_render_error():
    viewmats, Ks = pinhole(8, 8, 10.0)
    good = dict(means=torch.zeros(2, 3), quats=torch.ones(2, 4), scales=torch.ones(2, 3), opacities=torch.ones(2),
                colors=torch.ones(2, 3), viewmats=viewmats.float(), Ks=Ks.float(), width=8, height=8)  # fmt: skip
    rasterize(**good)
    for change, message in [
        (dict(scales=torch.ones(3, 3)), "scales must be"),
        (dict(colors=torch.ones(2, 5, 3)), "not \\(degree\\+1\\)\\^2"),
        (dict(sh_degree=1), "needs SH colors"),
        (dict(colors=torch.ones(2, 4, 3), sh_degree=2), "degree 1"),
        (dict(Ks=torch.ones(2, 3, 3)), "Ks must be"),
        (dict(width=0), "width must be"),
        (dict(backend="cuda"), "backend must be"),
        (dict(background=torch.ones(4)), "background must be"),
    ]:
        with pytest.raises(RenderError, match=message):
            rasterize(**{**good, **change})


def test_gsplat_backend_without_gsplat_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gsplat", None)  # import gsplat now raises ImportError, installed or not
    viewmats, Ks = pinhole(8, 8, 10.0)
    with pytest.raises(MissingDependencyError, match=r"pip install clip-gs\[cuda\]"):
        rasterize(torch.zeros(1, 3), torch.ones(1, 4), torch.ones(1, 3), torch.ones(1), torch.ones(1, 3),
                  viewmats.float(), Ks.float(), 8, 8, backend="gsplat")  # fmt: skip


@requires_cuda
def test_gsplat_matches_the_torch_reference():
    if not gsplat_available():
        pytest.skip("gsplat is not installed (pip install clip-gs[cuda])")
    gen = torch.Generator().manual_seed(0)
    n = 5000
    means = torch.randn(n, 3, generator=gen) * 0.4
    quats = torch.randn(n, 4, generator=gen)
    scales = torch.rand(n, 3, generator=gen) * 0.03 + 0.005
    opac = torch.rand(n, generator=gen) * 0.8 + 0.1  # below both alpha clamps (0.99 and gsplat's 0.999)
    sh = torch.randn(n, 4, 3, generator=gen) * 0.3
    cams = orbit_cameras(3, width=64, height=48)
    args = (means, quats, scales, opac, sh, cams.viewmats, cams.Ks, 64, 48)
    bg = torch.tensor([0.2, 0.3, 0.4])
    ref = rasterize(*args, background=bg, backend="torch")
    fast = rasterize(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args), background=bg.cuda(),
                     backend="gsplat")  # fmt: skip
    assert (fast.rgb.cpu() - ref.rgb).abs().mean() < 2e-3
    assert (fast.alpha.cpu() - ref.alpha).abs().mean() < 2e-3
    covered = ref.alpha > 0.5
    assert (fast.depth.cpu()[covered] - ref.depth[covered]).abs().mean() < 1e-2


# ------------------------------------------------------------------ contact sheet
def test_contact_sheet_layout_and_pixels(tmp_path):
    images = torch.zeros(5, 6, 8, 3)
    for i in range(5):
        images[i, ..., i % 3] = (i + 1) / 5
    sheet = contact_sheet(images, columns=3, padding=2)
    assert sheet.size == (3 * (8 + 2) + 2, 2 * (6 + 2) + 2)
    pixels = np.asarray(sheet)
    for i in range(5):
        top, left = 2 + (i // 3) * 8, 2 + (i % 3) * 10
        expected = np.zeros(3, dtype=np.uint8)
        expected[i % 3] = round((i + 1) / 5 * 255)
        assert (pixels[top : top + 6, left : left + 8] == expected).all(), i
    assert (pixels[-8:, -10:] == 255).all()  # the sixth cell is empty padding
    labelled = contact_sheet(images, labels=["a", "b", "c", "d", "e"])
    assert labelled.size == (3 * 10 + 2, 2 * 8 + 2) and np.asarray(labelled).sum() != np.asarray(sheet).sum()
    with pytest.raises(RenderError, match="labels"):
        contact_sheet(images, labels=["only one"])
    with pytest.raises(RenderError, match=r"\[C, H, W, 3\]"):
        contact_sheet(images[0])


# ------------------------------------------------------------------ real data
def test_real_donut_renders_a_ring_with_a_hole(tmp_path):
    from clip_gs import load_gaussians

    cloud = load_gaussians(real_file("gshairlod-donut/donut_fused.ply")).normalized()
    # The donut is +Z up; seen from straight above its axis (elevation 89.9) it is a ring.
    cams = orbit_cameras(1, radius=3.0, elevation_deg=89.9, width=64, height=64, up="+z")
    with torch.no_grad():
        out = render_cloud(cloud, cams, background=torch.ones(3))
    alpha = out.alpha[0]
    contact_sheet(out.rgb).save(tmp_path / "donut.png")
    assert float(alpha[32, 32]) < 0.1  # the hole at the centre
    ring_radius = 0.75 * 64 / 2 / (3.0 * math.tan(math.radians(22.5)))  # ~0.75 units off centre, in pixels
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        y, x = round(32 + dy * ring_radius), round(32 + dx * ring_radius)
        assert float(alpha[y, x]) > 0.9, (y, x)
    assert float(alpha[0, 0]) == 0.0


def test_compiled_projection_equals_the_torch_projection_at_the_frustum_clamp():
    """The compiled EWA projection against :func:`project_gaussians`, values and gradients, on Gaussians
    spread far past the field of view (large ones still reach the image: the Jacobian's clamp is used)."""
    from clip_gs.render.numba_backend import project_numba
    from clip_gs.render.raster_types import FOV_CLAMP

    gen = torch.Generator().manual_seed(4)
    n = 400
    means = (torch.randn(n, 3, generator=gen, dtype=F64) * 2.0).requires_grad_(True)
    quats = torch.randn(n, 4, generator=gen, dtype=F64).requires_grad_(True)
    scales = (torch.rand(n, 3, generator=gen, dtype=F64) * 0.8 + 0.01).requires_grad_(True)
    opac = torch.rand(n, generator=gen, dtype=F64) * 0.9 + 0.05
    cams = orbit_cameras(2, width=40, height=30, dtype=F64)
    means2d, conics, depths, extents, valid = project_numba(means, quats, scales, opac, cams.viewmats, cams.Ks, 40, 30,
                                                            0.01, 1e10, 0.3, FOV_CLAMP)  # fmt: skip
    clamped = 0
    weights = [torch.randn(s, generator=gen, dtype=F64) for s in ((n, 2), (n, 3), (n,))]
    ours = sum((t[cam] * w).sum() for cam in range(2) for t, w in zip((means2d, conics, depths), weights))
    grads = torch.autograd.grad(ours, (means, quats, scales))
    theirs = 0
    for cam in range(2):
        proj = project_gaussians(means, quats, scales, opac, torch.ones(n, 3, dtype=F64), cams.viewmats[cam],
                                 cams.Ks[cam], 40, 30, None)  # fmt: skip
        assert valid[cam].nonzero().squeeze(1).tolist() == proj.ids.tolist()
        torch.testing.assert_close(means2d[cam, proj.ids], proj.means2d, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(conics[cam, proj.ids], proj.conics, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(extents[cam, proj.ids], proj.extents, atol=1e-10, rtol=1e-10)
        ids = proj.ids
        theirs = theirs + (proj.means2d * weights[0][ids]).sum() + (proj.conics * weights[1][ids]).sum() + (
            proj.depths * weights[2][ids]).sum()  # fmt: skip
        x = proj.means2d[:, 0].detach()
        clamped += int(((x < -0.15 * 40) | (x > 1.15 * 40)).sum())  # beyond 1.3x the field of view
    assert clamped > 5  # the Jacobian's clamp is exercised, in values and gradients
    expected = torch.autograd.grad(theirs, (means, quats, scales))
    for name, a, b in zip(("means", "quats", "scales"), grads, expected):
        assert float(b.abs().max()) > 0, name
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8, msg=name)
