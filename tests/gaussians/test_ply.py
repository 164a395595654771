"""INRIA 3DGS .ply: round trips, property layout, every bad-input case, the real donut file."""

from __future__ import annotations

import warnings

import numpy as np
import plyfile
import pytest
import torch

from clip_gs import GaussianCloud, load_gaussians, save_gaussians
from clip_gs.errors import GaussianFormatError, UnsupportedFormatError
from clip_gs.gaussians.formats.ply import UnknownPropertiesWarning
from tests.conftest import real_file
from tests.helpers import gaussian_columns, random_cloud, write_vertex_ply


def assert_bitwise_equal(a: GaussianCloud, b: GaussianCloud) -> None:
    for name in ("means", "sh", "opacity_logits", "log_scales", "quats"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize(("ascii", "byte_order"), [(False, "<"), (False, ">"), (True, "<")])
def test_round_trip_is_bitwise(tmp_path, degree, ascii, byte_order):
    cloud = random_cloud(257, degree=degree, seed=degree)
    path = save_gaussians(cloud, tmp_path / "c.ply", ascii=ascii, byte_order=byte_order)
    back = load_gaussians(path)
    assert back.sh_degree == degree
    assert_bitwise_equal(cloud, back)
    header = path.read_bytes()[:200]
    expected = b"ascii" if ascii else (b"binary_little_endian" if byte_order == "<" else b"binary_big_endian")
    assert expected in header


def test_written_property_order_matches_the_reference_trainer(tmp_path):
    path = save_gaussians(random_cloud(3, degree=1), tmp_path / "c.ply")
    names = [p.name for p in plyfile.PlyData.read(str(path))["vertex"].properties]
    assert names == [
        "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *[f"f_rest_{i}" for i in range(9)],
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
    ]  # fmt: skip


def test_properties_are_found_by_name_and_f_rest_is_channel_major(tmp_path):
    cols = gaussian_columns(6, degree=1)
    shuffled = dict(reversed(list(cols.items())))  # property order reversed in the file
    cloud = load_gaussians(write_vertex_ply(tmp_path / "r.ply", shuffled))
    assert np.array_equal(cloud.means[:, 2].numpy(), cols["z"])
    assert np.array_equal(cloud.quats[:, 0].numpy(), cols["rot_0"])
    # f_rest_0..2 are R coefficients 1..3, f_rest_3..5 are G, f_rest_6..8 are B
    assert np.array_equal(cloud.sh[:, 1, 0].numpy(), cols["f_rest_0"])
    assert np.array_equal(cloud.sh[:, 3, 0].numpy(), cols["f_rest_2"])
    assert np.array_equal(cloud.sh[:, 1, 1].numpy(), cols["f_rest_3"])
    assert np.array_equal(cloud.sh[:, 2, 2].numpy(), cols["f_rest_7"])


def test_double_precision_properties_are_read_as_float32(tmp_path):
    cols = gaussian_columns(5, 0, np.float64)
    cloud = load_gaussians(write_vertex_ply(tmp_path / "d.ply", cols))
    assert cloud.dtype == torch.float32 and len(cloud) == 5
    assert np.array_equal(cloud.means[:, 1].numpy(), cols["y"].astype(np.float32))
    assert np.array_equal(cloud.log_scales[:, 2].numpy(), cols["scale_2"].astype(np.float32))


def test_unknown_properties_are_tolerated_and_reported(tmp_path):
    cols = gaussian_columns(4, 0) | {"nx": np.zeros(4, np.float32), "importance": np.ones(4, np.float32)}
    with pytest.warns(UnknownPropertiesWarning, match="importance"):
        cloud = load_gaussians(write_vertex_ply(tmp_path / "u.ply", cols))
    assert np.array_equal(cloud.opacity_logits.numpy(), cols["opacity"])


def test_normals_alone_do_not_warn(tmp_path):
    cols = gaussian_columns(4, 0) | {"nx": np.zeros(4, np.float32), "ny": np.zeros(4, np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_gaussians(write_vertex_ply(tmp_path / "n.ply", cols))


def test_mesh_ply_is_refused_as_a_mesh(tmp_path):
    cols = {k: np.zeros(3, np.float32) for k in ("x", "y", "z")}
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    path = write_vertex_ply(tmp_path / "mesh.ply", cols, extra_elements=[plyfile.PlyElement.describe(faces, "face")])
    with pytest.raises(GaussianFormatError, match=r"mesh PLY.*f_dc_0") as info:
        load_gaussians(path)
    assert "mesh.ply" in str(info.value)


def test_point_cloud_ply_is_refused_as_a_point_cloud(tmp_path):
    cols = {k: np.zeros(3, np.float32) for k in ("x", "y", "z")} | {"red": np.zeros(3, np.uint8)}
    with pytest.raises(GaussianFormatError, match=r"point-cloud PLY.*opacity"):
        load_gaussians(write_vertex_ply(tmp_path / "pc.ply", cols))


def test_wrong_f_rest_count_is_refused(tmp_path):
    cols = gaussian_columns(3, 0) | {f"f_rest_{i}": np.zeros(3, np.float32) for i in range(5)}
    with pytest.raises(GaussianFormatError, match="5 f_rest properties"):
        load_gaussians(write_vertex_ply(tmp_path / "r.ply", cols))


def test_truncated_binary_file_is_refused_before_reading(tmp_path):
    path = save_gaussians(random_cloud(100), tmp_path / "t.ply")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(GaussianFormatError, match="truncated PLY"):
        load_gaussians(path)


def test_absurd_vertex_count_fails_fast(tmp_path):
    path = save_gaussians(random_cloud(10), tmp_path / "big.ply")
    path.write_bytes(path.read_bytes().replace(b"element vertex 10", b"element vertex 1000000000000"))
    with pytest.raises(GaussianFormatError, match="1,000,000,000,000 vertex"):
        load_gaussians(path)


def test_truncated_ascii_file_is_refused(tmp_path):
    path = save_gaussians(random_cloud(50), tmp_path / "a.ply", ascii=True)
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    with pytest.raises(GaussianFormatError, match="t.ply|a.ply"):
        load_gaussians(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n", "end_header"),
        (b"ply\nformat weird 1.0\nend_header\n", "unknown PLY format"),
        (b"ply\nelement vertex 1\nproperty float x\nend_header\n", "no 'format' line"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n1\n", "bad PLY property"),
        (
            b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float x\nend_header\n1 1\n",
            "duplicate",
        ),
        (b"ply\nformat ascii 1.0\nelement face 0\nend_header\n", "no 'vertex' element"),
    ],
)
def test_broken_headers_give_typed_errors(tmp_path, content, message):
    path = tmp_path / "h.ply"
    path.write_bytes(content)
    with pytest.raises(GaussianFormatError, match=message):
        load_gaussians(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(GaussianFormatError, match="cannot open"):
        load_gaussians(tmp_path / "absent.ply")
    other = tmp_path / "x.bin"
    other.write_bytes(b"\x00" * 64)
    with pytest.raises(UnsupportedFormatError, match="supported formats: .*ply"):
        load_gaussians(other)
    with pytest.raises(UnsupportedFormatError, match="cannot write extension"):
        save_gaussians(random_cloud(3), tmp_path / "x.xyz")


def test_non_finite_values_in_a_file_are_reported(tmp_path):
    cols = gaussian_columns(4, 0)
    cols["opacity"][2] = np.nan
    with pytest.raises(GaussianFormatError, match=r"n.ply: opacity_logits has 1 non-finite"):
        load_gaussians(write_vertex_ply(tmp_path / "n.ply", cols))


@pytest.mark.slow
def test_a_million_gaussians_round_trip(tmp_path):
    cloud = random_cloud(1_000_000, degree=1, seed=7)
    back = load_gaussians(save_gaussians(cloud, tmp_path / "m.ply"))
    assert_bitwise_equal(cloud, back)


def test_real_donut_loads_and_round_trips_bitwise(tmp_path):
    path = real_file("gshairlod-donut/donut_fused.ply")
    cloud = load_gaussians(path)
    assert len(cloud) == 45_624 and cloud.sh_degree == 0
    assert bool(torch.isfinite(cloud.means).all())
    assert 0.0 < cloud.opacity.mean().item() < 1.0
    back = load_gaussians(save_gaussians(cloud, tmp_path / "donut.ply"))
    assert_bitwise_equal(cloud, back)


def test_real_point_cloud_ply_is_refused():
    path = real_file("gshairlod-donut/donut_color.ply")
    with pytest.raises(GaussianFormatError, match="point-cloud PLY"):
        load_gaussians(path)
