"""3DGS fitted to posed views: transforms.json I/O, the Blender renderer's cameras, the fit itself,
bad inputs, and the command line (fit-gaussians, prepare --gaussians fitted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clip_gs import GaussianCloud, load_gaussians
from clip_gs.cli import main
from clip_gs.errors import ConfigError, FitError, MeshError, PosedImagesError
from clip_gs.fitting import (
    FitConfig,
    PosedImages,
    evaluate_views,
    fit_gaussians,
    init_from_points,
    random_points,
    read_posed_images,
    write_posed_images,
)
from clip_gs.render import Cameras, rasterize, sphere_cameras
from clip_gs.render.blender import blender_available
from tests.conftest import real_file

requires_blender = pytest.mark.skipif(not blender_available(), reason="Blender's Python module (bpy) is not installed")


def _object(n: int = 600, seed: int = 0) -> GaussianCloud:
    """A two-coloured blob: Gaussians on a torus-like ring, red on one side and blue on the other."""
    gen = torch.Generator().manual_seed(seed)
    angle = torch.rand(n, generator=gen) * 2 * math.pi
    tube = torch.rand(n, generator=gen) * 2 * math.pi
    radius = 0.6 + 0.25 * torch.cos(tube)
    means = torch.stack([radius * torch.cos(angle), 0.25 * torch.sin(tube), radius * torch.sin(angle)], dim=-1)
    rgb = torch.where((means[:, :1] > 0), torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3, 0.9]))
    quats = torch.randn(n, 4, generator=gen)
    return GaussianCloud.from_activated(means, rgb, torch.full((n,), 0.9), torch.full((n, 3), 0.06), quats,
                                        source="ring")  # fmt: skip


def _views(cloud: GaussianCloud, cameras: Cameras) -> PosedImages:
    """Straight-alpha RGBA renders of ``cloud`` (rendered over black: rgb = colour x alpha)."""
    out = rasterize(cloud.means, cloud.rotations, cloud.scales, cloud.opacity, cloud.sh, cameras.viewmats, cameras.Ks,
                    cameras.width, cameras.height)  # fmt: skip
    alpha = out.alpha[..., None]
    rgb = torch.where(alpha > 1e-6, out.rgb / alpha.clamp_min(1e-6), torch.zeros_like(out.rgb)).clamp(0, 1)
    return PosedImages(torch.cat([rgb, alpha], dim=-1), cameras, "ring")


@pytest.fixture(scope="module")
def ring_views():
    cloud = _object()
    return _views(cloud, sphere_cameras(16, width=48, height=48)), _views(
        cloud, sphere_cameras(4, width=48, height=48, turn=0.5)
    )


# ------------------------------------------------------------------ the fit


def test_a_fit_recovers_a_synthetic_object(ring_views):
    """From random points in the unit ball, 400 iterations at 48 px bring the held-out PSNR from the start's
    9.5 dB past 28 dB (measured 34.5 dB, SSIM 0.986, in 7 s on 2 cores; docs/fitting.md for
    real meshes)."""
    train, test = ring_views
    init = init_from_points(random_points(1500, seed=1), source="ring")
    before, _ = evaluate_views(init, test)
    result = fit_gaussians(train, init, FitConfig(iterations=400, max_gaussians=3000, refine_start=50, seed=3),
                           held_out=test)  # fmt: skip
    assert before < 12.0
    assert result.psnr > 28.0, (before, result.psnr)
    assert result.ssim > 0.95
    assert result.cloud.num_gaussians <= 3000
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert len(result.losses) == 400 and all(math.isfinite(v) for v in result.losses)


def test_a_fit_repeats_bit_for_bit_and_leaves_the_global_rng_alone(ring_views):
    train, _ = ring_views
    init = init_from_points(random_points(400, seed=2))
    config = FitConfig(iterations=60, refine_start=10, refine_every=20, max_gaussians=600, seed=5)
    torch.manual_seed(123)
    first = fit_gaussians(train, init, config)
    after_first = torch.rand(1)
    torch.manual_seed(123)
    second = fit_gaussians(train, init, config)
    assert torch.equal(after_first, torch.rand(1))
    assert first.counts[-1][1] != 400  # densification ran
    for name in GaussianCloud._TENSOR_FIELDS:
        assert torch.equal(getattr(first.cloud, name), getattr(second.cloud, name)), name
    assert first.losses == second.losses
    other = fit_gaussians(train, init, FitConfig(**{**config.__dict__, "seed": 6}))
    assert other.losses != first.losses


def test_the_count_cap_and_sh_degree_hold(ring_views):
    train, _ = ring_views
    init = init_from_points(random_points(500, seed=2))
    result = fit_gaussians(train, init, FitConfig(iterations=80, refine_start=10, refine_every=10, max_gaussians=520,
                                                  grow_grad2d=1e-6, sh_degree=2))  # fmt: skip
    assert result.cloud.num_gaussians <= 520
    assert result.cloud.sh_degree == 2
    assert any(count == 520 for _, count in result.counts)  # the cap was reached and enforced


def test_starting_points_from_a_3dgs_file_and_a_point_cloud(tmp_path):
    import numpy as np
    import trimesh

    from clip_gs import save_gaussians
    from clip_gs.data.fitted import init_from_file

    ring = _object(300)
    save_gaussians(ring, tmp_path / "ring.ply")
    init = init_from_file(tmp_path / "ring.ply", 200, torch.eye(4, dtype=torch.float64), seed=1)
    assert init.num_gaussians == 200
    assert bool(torch.isin(init.means[:, 0], ring.means[:, 0]).all())  # a seeded subset of the file's centres
    colours = np.tile(np.array([[255, 0, 0, 255]], dtype=np.uint8), (50, 1))
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3)), colors=colours).export(tmp_path / "points.ply")
    points = init_from_file(tmp_path / "points.ply", 200, torch.eye(4, dtype=torch.float64))
    assert points.num_gaussians == 50
    torch.testing.assert_close(points.rgb, torch.tensor([[1.0, 0.0, 0.0]]).expand(50, 3), atol=1e-5, rtol=0)
    (tmp_path / "empty.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                        "property float z\nend_header\n")  # fmt: skip
    with pytest.raises(MeshError, match="no points"):
        init_from_file(tmp_path / "empty.ply", 10, torch.eye(4, dtype=torch.float64))


def test_a_diverging_fit_raises_naming_the_object(ring_views):
    train, _ = ring_views
    init = init_from_points(random_points(300, seed=2))
    with pytest.raises(FitError, match=r"ring: the fit diverged at step \d+"):
        fit_gaussians(train, init, FitConfig(iterations=50, lr_scales=1e12, lr_means=1e12))


def test_screen_space_info_is_the_gradient_of_each_projected_mean():
    cloud = _object(200)
    cams = sphere_cameras(2, width=32, height=32)
    params = [t.clone().requires_grad_(True) for t in (cloud.means, cloud.rotations, cloud.scales, cloud.opacity)]
    plain = rasterize(*params, cloud.rgb, cams.viewmats, cams.Ks, 32, 32)
    out = rasterize(*params, cloud.rgb, cams.viewmats, cams.Ks, 32, 32, with_info=True)
    assert torch.equal(out.rgb, plain.rgb)
    info = out.info
    assert info["means2d"].shape == (2, 200, 2) and info["radii"].shape == (2, 200, 2) and info["n_cameras"] == 2
    info["means2d"].retain_grad()
    out.rgb.sum().backward()
    grad = info["means2d"].grad
    visible = (info["radii"] > 0).all(dim=-1)
    assert bool(visible.any()) and float(grad[visible].abs().sum()) > 0
    assert float(grad[~visible].abs().sum()) == 0.0
    # the projected means are the pinhole projections of the means
    p = cams.viewmats[0, :3, :3] @ cloud.means.T + cams.viewmats[0, :3, 3:]
    uv = (cams.Ks[0] @ p)[:2] / p[2]
    torch.testing.assert_close(info["means2d"][0][visible[0]].detach(), uv.T[visible[0]], atol=1e-4, rtol=1e-5)
    with pytest.raises(Exception, match="with_info=True needs backend"):
        rasterize(*params, cloud.rgb, cams.viewmats, cams.Ks, 32, 32, backend="torch", with_info=True)


# ------------------------------------------------------------------ posed images


def test_transforms_json_round_trip(tmp_path, ring_views):
    views, _ = ring_views
    cams = views.cameras
    Ks = cams.Ks.clone()
    Ks[:, 0, 2] += 1.5  # an off-centre principal point must survive too
    posed = PosedImages(views.images, Cameras(cams.viewmats, Ks, cams.width, cams.height), "ring")
    write_posed_images(tmp_path / "ring", posed, extra={"note": "test"})
    back = read_posed_images(tmp_path / "ring")
    assert back.name == "ring" and len(back) == len(posed)
    assert float((back.images - posed.images).abs().max()) <= 0.5 / 255 + 1e-6
    torch.testing.assert_close(back.cameras.viewmats, posed.cameras.viewmats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.cameras.Ks, posed.cameras.Ks)
    assert json.loads((tmp_path / "ring" / "transforms.json").read_text())["note"] == "test"


def test_reading_a_nerf_synthetic_folder(tmp_path):
    """Blender's convention: camera-to-world, OpenGL axes, file paths without extension, RGB images."""
    from PIL import Image

    folder = tmp_path / "lego"
    (folder / "train").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "train" / "r_0.png")
    c2w = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0], [0, 0, 0, 1]]  # at +4 z, looking down -z
    spec = {"camera_angle_x": 2 * math.atan(0.5), "frames": [{"file_path": "./train/r_0", "transform_matrix": c2w}]}
    (folder / "transforms.json").write_text(json.dumps(spec))
    posed = read_posed_images(folder)
    assert posed.images.shape == (1, 30, 40, 4) and float(posed.images[..., 3].min()) == 1.0
    K, view = posed.cameras.Ks[0], posed.cameras.viewmats[0]
    assert float(K[0, 0]) == pytest.approx(40.0) and float(K[1, 1]) == pytest.approx(40.0)
    for point, pixel in (((0.0, 0.0, 0.0), (20.0, 15.0)), ((0.5, 0.5, 0.0), (25.0, 10.0))):  # +y is up: a smaller row
        p = view[:3, :3] @ torch.tensor(point) + view[:3, 3]
        assert float(p[2]) == pytest.approx(4.0)
        uv = (K @ p)[:2] / p[2]
        torch.testing.assert_close(uv, torch.tensor(pixel))


def test_bad_posed_images_are_refused_naming_the_object(tmp_path, ring_views):
    views, _ = ring_views
    images, cams = views.images, views.cameras
    with pytest.raises(PosedImagesError, match="ring: no views"):
        PosedImages(images[:0], cams, "ring")
    with pytest.raises(PosedImagesError, match="ring: 15 images but 16 cameras"):
        PosedImages(images[:15], cams, "ring")
    with pytest.raises(PosedImagesError, match="ring: images are 40x48 but the cameras are 48x48"):
        PosedImages(images[:, :, :40], cams, "ring")
    bad = images.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(PosedImagesError, match=r"ring: view\(s\) \[3\] hold NaN"):
        PosedImages(bad, cams, "ring")
    empty = images.clone()
    empty[5, ..., 3] = 0
    with pytest.raises(PosedImagesError, match=r"ring: view\(s\) \[5\] are transparent everywhere"):
        PosedImages(empty, cams, "ring")
    write_posed_images(tmp_path / "ring", views[:2])
    from PIL import Image

    Image.new("RGBA", (20, 20)).save(tmp_path / "ring" / "images" / "view_001.png")
    with pytest.raises(PosedImagesError, match="every view must have one size"):
        read_posed_images(tmp_path / "ring")
    with pytest.raises(PosedImagesError, match="no transforms.json"):
        read_posed_images(tmp_path)
    with pytest.raises(ConfigError, match="iterations"):
        FitConfig(iterations=0)


# ------------------------------------------------------------------ Blender views of real meshes


@requires_blender
@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["trimesh-models/Duck.glb", "kaolin-samples/armchair.obj"])
def test_blender_silhouettes_agree_with_the_surface_conversion(mesh):
    """The same cameras see the same object: Blender's render of a real mesh and the Gaussian rasterizer's
    render of its dense surface conversion agree in silhouette (IoU >= 0.97 at 512 px; measured 0.995 for
    the duck, 0.980-0.987 for the armchair's thin frame). The rasterizer's low-pass filter (``eps2d``, 0.3
    px^2 by default) widens every Gaussian by about half a pixel, a halo that costs the thin frame 3% IoU
    at the default (measured 0.952), so this comparison renders with ``eps2d=0.05``."""
    from clip_gs.fitting import transform_cloud
    from clip_gs.gaussians.mesh import mesh_to_gaussians, mesh_unit_transform
    from clip_gs.render import render_cloud
    from clip_gs.render.blender import render_mesh

    path = real_file(mesh)
    world = mesh_unit_transform(path)
    cams = sphere_cameras(2, width=512, height=512, turn=0.3)
    rgba = render_mesh(path, cams, world=world, samples=4, denoise=False)
    cloud = transform_cloud(mesh_to_gaussians(path, num_gaussians=400_000, normalize=False), world)
    alpha = render_cloud(cloud, cams, eps2d=0.05).alpha
    a, b = rgba[..., 3] > 0.5, alpha > 0.5
    iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1)
    assert bool((a.flatten(1).sum(1) > 5000).all())  # the object fills a good part of each view
    assert float(iou.min()) >= 0.97, iou.tolist()


@requires_blender
def test_render_mesh_refuses_a_mesh_without_faces(tmp_path):
    from clip_gs.render.blender import render_mesh

    points = tmp_path / "points.obj"
    points.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="no faces"):
        render_mesh(points, sphere_cameras(1, width=16, height=16))


@requires_blender
@pytest.mark.slow
def test_fit_gaussians_command_on_a_real_mesh_and_on_its_views(tmp_path, capsys):
    mesh = real_file("trimesh-models/Duck.glb")
    out, views = tmp_path / "duck.ply", tmp_path / "duck_views"
    code = main(["fit-gaussians", str(mesh), "--out", str(out), "--iterations", "150", "--views", "12",
                 "--held-out", "2", "--size", "64", "--max-gaussians", "3000", "--save-views", str(views), "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    cloud = load_gaussians(out)
    assert 0 < cloud.num_gaussians <= 3000
    psnr = float(printed.split("held-out PSNR ")[1].split(" dB")[0])
    assert psnr > 22.0, printed
    posed = read_posed_images(views)
    assert len(posed) == 12 and posed.images.shape[1:] == (64, 64, 4)
    # the saved views are a folder input; the mesh (moved by the recorded frame) starts the fit
    code = main(["fit-gaussians", str(views), "--out", str(tmp_path / "again.ply"), "--iterations", "60",
                 "--held-out", "3", "--init", str(mesh), "--max-gaussians", "3000", "--quiet"])  # fmt: skip
    assert code == 0
    again = float(capsys.readouterr().out.split("held-out PSNR ")[1].split(" dB")[0])
    assert again > 20.0


@requires_blender
@pytest.mark.slow
def test_prepare_with_fitted_gaussians_on_real_meshes(tmp_path):
    from clip_gs.data.shards import TripletShardDataset

    source = tmp_path / "meshes"
    for label, name in (("duck", "trimesh-models/Duck.glb"), ("box", "trimesh-models/BoxTextured.glb")):
        (source / label).mkdir(parents=True)
        (source / label / real_file(name).name).symlink_to(real_file(name))
    (source / "broken").mkdir()
    (source / "broken" / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    out = tmp_path / "out"
    code = main(["prepare", str(source), "--out", str(out), "--teacher", "synthetic-clip", "--gaussians", "fitted",
                 "--views", "2", "--fit-iterations", "40", "--fit-views", "6", "--fit-size", "48",
                 "--mesh-gaussians", "2000", "--val-fraction", "0", "--test-fraction", "0", "--quiet"])  # fmt: skip
    assert code == 3  # one input failed, the run went on
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failures] == ["broken/points"] and failures[0]["error"] == "MeshError"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["gaussians"] == "fitted" and manifest["counts"]["train"] == 2
    dataset = TripletShardDataset(out / "train")
    samples = [dataset[i] for i in range(len(dataset))]
    assert sorted(s.label for s in samples) == ["box", "duck"]
    for sample in samples:
        assert sample.fit is not None and sample.fit["psnr"] > 15.0 and sample.fit["iterations"] == 40
        assert sample.cloud.num_gaussians <= 2000
        norms = sample.cloud.means.norm(dim=-1)
        assert float(norms.max()) == pytest.approx(1.0, abs=1e-4)  # stored normalised, as every cloud
