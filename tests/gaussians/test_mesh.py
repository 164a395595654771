"""Mesh -> 3DGS conversion: colours from textures / vertex colours / materials, disk geometry,
scene transforms, errors, and real meshes from ../shared/data/real."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from clip_gs.errors import ConfigError, MeshError
from clip_gs.gaussians.mesh import NEUTRAL_GREY, MeshColorWarning, mesh_to_gaussians, sample_texture
from clip_gs.gaussians.surface import disk_radius, sample_triangles
from tests.conftest import real_file

pytestmark = pytest.mark.filterwarnings("ignore::clip_gs.gaussians.mesh.MeshColorWarning")  # grey is tested on its own

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _quadrant_texture(size: int) -> Image.Image:
    """``size x size`` image: top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    h = size // 2
    img[:h, :h], img[:h, h:], img[h:, :h], img[h:, h:] = RED, GREEN, BLUE, WHITE
    return Image.fromarray(img)


def _unit_quad(visual=None) -> trimesh.Trimesh:
    """The square [0,1]^2 at z=0, with uv equal to (x, y)."""
    vertices = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def _textured_quad(image: Image.Image, material=None) -> trimesh.Trimesh:
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    if material is None:  # white Kd: trimesh's default Kd (0.4) would become a glTF baseColorFactor on export
        material = trimesh.visual.material.SimpleMaterial(image=image, diffuse=[255, 255, 255, 255])
    return _unit_quad(trimesh.visual.TextureVisuals(uv=uv, material=material))


def _expected_quadrant(xy: np.ndarray) -> np.ndarray:
    """Quadrant colour for quad positions: y is v, which runs bottom (image row H-1) to top."""
    left, top = xy[:, 0] < 0.5, xy[:, 1] > 0.5
    out = np.empty((len(xy), 3))
    out[left & top], out[~left & top] = RED, GREEN
    out[left & ~top], out[~left & ~top] = BLUE, WHITE
    return out / 255.0


def _away_from_texel_borders(xy: np.ndarray, size: int) -> np.ndarray:
    """Points at least 1.5 texels from a quadrant border, including the wrap border at 0 / 1."""
    margin = 1.5 / size
    dist = np.minimum(np.abs(xy - 0.5), np.minimum(xy, 1 - xy))
    return (dist > margin).all(axis=1)


# ---------------------------------------------------------------------------- texture lookup
def test_sample_texture_texel_centres_wrap_and_bilinear():
    tex = np.asarray(_quadrant_texture(2), dtype=np.float64) / 255.0
    uv = np.array(
        [
            [0.25, 0.75],  # top-left texel centre (v up): red
            [0.75, 0.75],  # top-right: green
            [0.25, 0.25],  # bottom-left: blue
            [0.75, 0.25],  # bottom-right: white
            [1.25, -0.25],  # wraps to (0.25, 0.75): red
            [0.5, 0.75],  # halfway between red and green
            [0.0, 0.75],  # the u = 0 border blends with the right column (repeat wrap)
        ]
    )
    got = sample_texture(tex, uv)
    expected = np.array([RED, GREEN, BLUE, WHITE, RED, (127.5, 127.5, 0), (127.5, 127.5, 0)]) / 255.0
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize("fmt", ["memory", "glb", "obj"])
def test_texture_colours_follow_uv_with_v_up(fmt, tmp_path):
    size = 64
    mesh = _textured_quad(_quadrant_texture(size))
    if fmt != "memory":  # round trip through a file: exercises trimesh's glTF v flip and the MTL path
        path = tmp_path / f"quad.{fmt}"
        mesh.export(path)
        mesh = path
    cloud = mesh_to_gaussians(mesh, num_gaussians=4000, seed=1, normalize=False)
    xy = cloud.means[:, :2].double().numpy()
    keep = _away_from_texel_borders(xy, size)
    assert keep.sum() > 2000
    np.testing.assert_allclose(cloud.rgb.numpy()[keep], _expected_quadrant(xy[keep]), atol=1e-5)
    if fmt != "memory":
        assert cloud.source == f"quad.{fmt}"


def test_pbr_texture_is_multiplied_by_base_color_factor():
    white = Image.fromarray(np.full((4, 4, 3), 255, dtype=np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=white, baseColorFactor=[0.5, 1.0, 0.25, 1.0])
    cloud = mesh_to_gaussians(_textured_quad(white, material), num_gaussians=500, normalize=False)
    factor = np.asarray(material.baseColorFactor[:3], dtype=float) / 255.0  # trimesh stores uint8
    np.testing.assert_allclose(cloud.rgb.numpy(), np.broadcast_to(factor, (500, 3)), atol=1e-6)
    assert factor[0] == pytest.approx(0.5, abs=0.01) and factor[2] == pytest.approx(0.25, abs=0.01)


def test_vertex_colours_are_interpolated_with_barycentrics():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    colors = np.array([[*RED, 255], [*GREEN, 255], [*BLUE, 255]], dtype=np.uint8)
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2]], vertex_colors=colors, process=False)
    cloud = mesh_to_gaussians(mesh, num_gaussians=1000, normalize=False)
    x, y = cloud.means[:, 0].double(), cloud.means[:, 1].double()
    expected = torch.stack([1 - x - y, x, y], dim=-1)  # barycentrics of (x, y) in this triangle
    torch.testing.assert_close(cloud.rgb.double(), expected, atol=1e-5, rtol=0)


def test_face_colours():
    mesh = trimesh.creation.box()
    mesh.visual.face_colors = np.tile([[0, 128, 255, 255]], (len(mesh.faces), 1))
    cloud = mesh_to_gaussians(mesh, num_gaussians=200)
    torch.testing.assert_close(cloud.rgb, torch.tensor([0, 128 / 255, 1.0]).expand(200, 3))


@pytest.mark.parametrize("kind", ["simple", "pbr"])
def test_material_colour_only(kind):
    mesh = trimesh.creation.box()
    if kind == "simple":
        material = trimesh.visual.material.SimpleMaterial(diffuse=[200, 50, 25, 255])
    else:
        material = trimesh.visual.material.PBRMaterial(baseColorFactor=[200, 50, 25, 255])
    mesh.visual = trimesh.visual.TextureVisuals(material=material)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshColorWarning)
        cloud = mesh_to_gaussians(mesh, num_gaussians=300)
    torch.testing.assert_close(cloud.rgb, torch.tensor([200, 50, 25]).div(255.0).expand(300, 3))


def test_uncoloured_mesh_gets_grey_and_a_warning_naming_the_file(tmp_path):
    path = tmp_path / "plain_box.stl"
    trimesh.creation.box().export(path)
    with pytest.warns(MeshColorWarning, match=r"plain_box\.stl.*neutral grey"):
        cloud = mesh_to_gaussians(path, num_gaussians=100)
    torch.testing.assert_close(cloud.rgb, torch.tensor(NEUTRAL_GREY).expand(100, 3))


def test_texture_without_uv_warns_and_falls_back_to_the_material_colour():
    material = trimesh.visual.material.SimpleMaterial(image=_quadrant_texture(4), diffuse=[10, 20, 30, 255])
    mesh = _unit_quad(trimesh.visual.TextureVisuals(material=material))
    with pytest.warns(MeshColorWarning, match="texture but no per-vertex UVs"):
        cloud = mesh_to_gaussians(mesh, num_gaussians=50)
    torch.testing.assert_close(cloud.rgb, torch.tensor([10, 20, 30]).div(255.0).expand(50, 3))


# ---------------------------------------------------------------------------- geometry
def test_disks_lie_in_the_face_plane_with_density_scales():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    n = 3000
    cloud = mesh_to_gaussians(box, num_gaussians=n, scale_factor=1.5, thickness_ratio=0.05, normalize=False)
    # every point is on a face: one coordinate sits at +-half extent
    half = torch.tensor([1.0, 0.5, 0.25])
    on_face = (cloud.means.abs() - half).abs() < 1e-5  # [N, 3]
    assert bool((on_face.sum(dim=1) >= 1).all())
    # the local z axis (thin axis) is the face normal, i.e. the axis the point sits on
    z_axis = cloud.rotation_matrices[:, :, 2]
    face_axis = on_face.float().argmax(dim=1)
    along = z_axis.abs().gather(1, face_axis[:, None]).squeeze(1)
    torch.testing.assert_close(along, torch.ones(n), atol=1e-5, rtol=0)
    # scales: sigma = 1.5 sqrt(A / (N pi)) in the plane, 5 % of it along the normal
    sigma = 1.5 * math.sqrt(box.area / (n * math.pi))
    assert disk_radius(box.area, n, 1.5) == pytest.approx(sigma)
    torch.testing.assert_close(cloud.scales, torch.tensor([sigma, sigma, 0.05 * sigma]).expand(n, 3))
    torch.testing.assert_close(cloud.opacity, torch.full((n,), 0.95))


def test_normalized_output_is_in_the_unit_sphere_and_keeps_relative_scale():
    box = trimesh.creation.box(extents=(20.0, 10.0, 5.0))
    raw = mesh_to_gaussians(box, num_gaussians=500, normalize=False)
    cloud = mesh_to_gaussians(box, num_gaussians=500)
    radius = cloud.means.norm(dim=-1)
    assert radius.max().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(cloud.means.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    shrink = (raw.means - raw.means.mean(0)).norm(dim=-1).max()
    torch.testing.assert_close(cloud.scales, raw.scales / shrink)


def test_scene_parts_are_sampled_jointly_by_area_with_transforms_applied():
    small = trimesh.creation.box(extents=(1, 1, 1))  # area 6
    big = trimesh.creation.box(extents=(2, 2, 2))  # area 24
    small.visual.face_colors = [255, 0, 0, 255]
    big.visual.face_colors = [0, 0, 255, 255]
    scene = trimesh.Scene()
    scene.add_geometry(small, node_name="small_left", transform=trimesh.transformations.translation_matrix([-10, 0, 0]))
    scene.add_geometry(small, node_name="small_right", transform=trimesh.transformations.translation_matrix([10, 0, 0]))
    scene.add_geometry(big, node_name="big")
    n = 6000
    cloud = mesh_to_gaussians(scene, num_gaussians=n, normalize=False)
    red = cloud.rgb[:, 0] > 0.5
    # area shares 6 : 6 : 24 -> red fraction 1/3 (binomial std ~0.006)
    assert red.float().mean().item() == pytest.approx(1 / 3, abs=0.03)
    x = cloud.means[:, 0]
    assert bool((x[~red].abs() <= 1 + 1e-5).all())  # the big box stays at the origin
    left, right = red & (x < 0), red & (x > 0)
    assert left.sum() > 0.4 * red.sum() and right.sum() > 0.4 * red.sum()  # both instances placed
    assert bool(((x[left] + 10).abs() <= 0.5 + 1e-5).all()) and bool(((x[right] - 10).abs() <= 0.5 + 1e-5).all())


def test_sample_triangles_is_area_weighted():
    tri = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 0, 1], [3, 0, 1], [0, 1, 1]]], dtype=float)
    face, bary, points = sample_triangles(tri, 20000, np.random.default_rng(0))
    assert np.mean(face == 1) == pytest.approx(0.75, abs=0.02)
    np.testing.assert_allclose(bary.sum(1), 1.0)
    assert (bary >= 0).all()
    np.testing.assert_allclose(points, np.einsum("nk,nkd->nd", bary, tri[face]))


def test_determinism_and_seed_dependence():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    a = mesh_to_gaussians(mesh, num_gaussians=256, seed=3)
    b = mesh_to_gaussians(mesh, num_gaussians=256, seed=3)
    c = mesh_to_gaussians(mesh, num_gaussians=256, seed=4)
    for name in ("means", "sh", "opacity_logits", "log_scales", "quats"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.means, c.means)


# ---------------------------------------------------------------------------- errors
def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("points_only.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no triangle faces"),
        ("flat.obj", "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "zero total area"),
        ("nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "non-finite"),
        ("broken.glb", "not a glb file", "cannot read mesh"),
        ("model.xyz123", "whatever", "cannot read mesh"),
        ("empty.stl", "", "no triangle faces|cannot read mesh"),
    ],
)
def test_bad_files_raise_mesh_error_naming_the_file(tmp_path, name, content, match):
    path = _write(tmp_path / name, content)
    with pytest.raises(MeshError, match=match) as info:
        mesh_to_gaussians(path, num_gaussians=10)
    assert name in str(info.value)
    assert not isinstance(info.value.__cause__, MeshError)  # trimesh errors are wrapped, chained as cause


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(MeshError, match="no such mesh file"):
        mesh_to_gaussians(tmp_path / "absent.glb")
    with pytest.raises(MeshError, match="expected a path"):
        mesh_to_gaussians(np.zeros((3, 3)))


def test_in_memory_degenerate_meshes():
    nan_mesh = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]], [[0, 1, 2]], process=False)
    with pytest.raises(MeshError, match="non-finite"):
        mesh_to_gaussians(nan_mesh)
    with pytest.raises(MeshError, match="no triangle faces"):
        mesh_to_gaussians(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), dtype=int), process=False))
    with pytest.raises(MeshError, match="zero total area"):
        mesh_to_gaussians(trimesh.Trimesh([[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 1, 2]], process=False))


@pytest.mark.parametrize(
    "kwargs",
    [{"num_gaussians": 0}, {"num_gaussians": 2.5}, {"opacity": 1.0}, {"thickness_ratio": 0.0}, {"scale_factor": -1}],
)
def test_bad_parameters_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        mesh_to_gaussians(trimesh.creation.box(), **kwargs)


# ---------------------------------------------------------------------------- real meshes
@pytest.mark.parametrize(
    "relative",
    [
        "trimesh-models/Duck.glb",
        "trimesh-models/fuze.obj",
        "trimesh-models/BoxTextured.glb",
        "kaolin-samples/pizza.obj",
        "trimesh-models/bunny.ply",
        "trimesh-models/teapot.stl",
        "odedstein-meshes/cube/cube.obj",
        "common-3d-test-models/suzanne.obj",
    ],
)
def test_real_meshes_convert(real_data, relative):
    path = real_file(relative)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeshColorWarning)  # untextured files are grey by design
        cloud = mesh_to_gaussians(path, num_gaussians=2000, seed=0)
    assert cloud.num_gaussians == 2000
    assert cloud.source == path.name
    assert cloud.means.norm(dim=-1).max().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(cloud.means.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert bool(((cloud.rgb >= 0) & (cloud.rgb <= 1)).all())


def test_real_duck_is_yellow(real_data):
    rgb = mesh_to_gaussians(real_file("trimesh-models/Duck.glb"), num_gaussians=4000).rgb.mean(0)
    assert rgb[0] > 0.8 and rgb[1] > 0.6 and rgb[2] < 0.2, rgb


def test_real_avocado_is_green_brown_and_gltf_matches_obj(real_data):
    gltf = mesh_to_gaussians(real_file("kaolin-samples/avocado.gltf"), num_gaussians=4000).rgb.mean(0)
    obj = mesh_to_gaussians(real_file("kaolin-samples/avocado.obj"), num_gaussians=4000).rgb.mean(0)
    r, g, b = gltf.tolist()
    assert g > b + 0.2 and r > b + 0.15 and g >= r, gltf  # green skin / brown stone, little blue
    # glTF UVs are flipped on load, OBJ UVs are not: both must land on the same texels
    torch.testing.assert_close(gltf, obj, atol=0.02, rtol=0)


def test_real_fuze_texture_varies(real_data):
    rgb = mesh_to_gaussians(real_file("trimesh-models/fuze.obj"), num_gaussians=4000).rgb
    assert rgb.std(0).max() > 0.1
    assert len(torch.unique((rgb * 255).round(), dim=0)) > 100


def test_real_milk_truck_merges_nodes_with_transforms(real_data):
    path = real_file("trimesh-models/CesiumMilkTruck.glb")
    cloud = mesh_to_gaussians(path, num_gaussians=10000, normalize=False)
    # several colour clusters: dark tyres / windows and light body at least
    q = (cloud.rgb * 4).floor().clamp(max=3)
    keys = (q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]).long()
    shares = torch.bincount(keys, minlength=64).float() / len(keys)
    assert int((shares > 0.05).sum()) >= 3
    # the one wheel geometry is instanced twice; only the wheels reach below y = 0.2
    scene = trimesh.load_scene(str(path))
    wheel_x = [scene.graph[node][0][0, 3] for node in scene.graph.nodes_geometry if scene.graph[node][1] == "Wheels"]
    assert len(wheel_x) == 2 and abs(wheel_x[0] - wheel_x[1]) > 2
    low_x = cloud.means[cloud.means[:, 1] < 0.2, 0]
    assert len(low_x) > 50
    for x in wheel_x:
        assert int(((low_x - x).abs() < 0.5).sum()) > 20
    assert int((low_x.abs() < 0.5).sum()) == 0  # nothing left at the untransformed wheel position
    bounds = torch.tensor(scene.bounds, dtype=torch.float32)
    torch.testing.assert_close(cloud.means.amin(0), bounds[0], atol=0.05, rtol=0)
    torch.testing.assert_close(cloud.means.amax(0), bounds[1], atol=0.05, rtol=0)


def test_real_determinism(real_data):
    path = real_file("kaolin-samples/pizza.obj")
    a = mesh_to_gaussians(path, num_gaussians=1000, seed=7)
    b = mesh_to_gaussians(path, num_gaussians=1000, seed=7)
    c = mesh_to_gaussians(path, num_gaussians=1000, seed=8)
    assert torch.equal(a.means, b.means) and torch.equal(a.sh, b.sh) and torch.equal(a.quats, b.quats)
    assert not torch.equal(a.means, c.means)
