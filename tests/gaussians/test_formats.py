"""Tests for the non-INRIA formats: .splat, SuperSplat compressed PLY and Niantic spz.

The encoders below are small, independent test fixtures written from the format
descriptions (not the library's decoders), so a decoder bug shows up as a mismatch. They are
also the seeds of ``test_fuzz.py``.
"""

from __future__ import annotations

import gzip
import math
import struct
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clip_gs.errors import ConfigError, GaussianFormatError, MissingDependencyError, UnsupportedFormatError
from clip_gs.gaussians.cloud import SH_C0
from clip_gs.gaussians.formats import read_compressed_ply, read_splat, read_spz
from clip_gs.gaussians.formats.splat import DEFAULT_OPACITY_EPS, splat_importance_order
from clip_gs.gaussians.io import load_gaussians, registered_formats, save_gaussians
from clip_gs.gaussians.sh import sh_basis
from tests.conftest import real_file
from tests.helpers import encode_compressed_ply, encode_spz, random_format_cloud

REAL = "playcanvas-splats"


# ---------------------------------------------------------------------------- fixtures


def write_bytes(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- registry
def test_registry_order_and_unknown_content(tmp_path):
    names = [f.name for f in registered_formats()]
    assert names.index("compressed_ply") < names.index("ply")
    assert {"ply", "compressed_ply", "spz", "splat"} <= set(names)
    path = write_bytes(tmp_path, "mystery.bin", b"\x00garbage" * 10)
    with pytest.raises(UnsupportedFormatError) as info:
        load_gaussians(path)
    for name in ("ply", "compressed_ply", "spz", "splat"):
        assert name in str(info.value)


def test_headerless_splat_needs_its_extension(tmp_path):
    path = tmp_path / "cloud.splat"
    save_gaussians(random_format_cloud(8, 0), path)
    assert load_gaussians(path).num_gaussians == 8
    renamed = write_bytes(tmp_path, "cloud.bin", path.read_bytes())
    with pytest.raises(UnsupportedFormatError):
        load_gaussians(renamed)
    assert load_gaussians(renamed, format="splat").num_gaussians == 8


def test_content_wins_over_extension(tmp_path):
    cloud = random_format_cloud(40, 1)
    spz = write_bytes(tmp_path, "misnamed.ply", encode_spz(cloud, version=3))
    cply = write_bytes(tmp_path, "plain.ply", encode_compressed_ply(cloud))
    assert load_gaussians(spz).num_gaussians == 40
    assert load_gaussians(cply).num_gaussians == 40


# ---------------------------------------------------------------------------- .splat
def test_splat_decodes_known_record(tmp_path):
    record = struct.pack("<3f3f4B4B", 1.0, -2.0, 3.5, 0.5, 0.25, 2.0, 255, 0, 128, 64, 255, 128, 0, 128)
    cloud = read_splat(write_bytes(tmp_path, "one.splat", record))
    assert cloud.means.tolist() == [[1.0, -2.0, 3.5]]
    assert torch.allclose(cloud.log_scales, torch.log(torch.tensor([[0.5, 0.25, 2.0]])))
    assert torch.allclose(cloud.sh_dc, (torch.tensor([[1.0, 0.0, 128 / 255]]) - 0.5) / SH_C0)
    assert torch.allclose(cloud.opacity, torch.tensor([64 / 255]))
    assert cloud.quats.tolist() == [[127 / 128, 0.0, -1.0, 0.0]]
    assert cloud.sh_degree == 0


def test_splat_opacity_eps_is_a_parameter(tmp_path):
    records = struct.pack("<3f3f4B4B", 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 255, 128, 128, 128)
    records += struct.pack("<3f3f4B4B", 0, 0, 0, 1, 1, 1, 0, 0, 0, 255, 255, 128, 128, 128)
    path = write_bytes(tmp_path, "edge.splat", records)
    default = read_splat(path).opacity.double()
    expected = torch.tensor([DEFAULT_OPACITY_EPS, 1 - DEFAULT_OPACITY_EPS], dtype=torch.float64)
    assert torch.allclose(default, expected, atol=1e-7)
    loose = read_splat(path, opacity_eps=1e-2).opacity.double()
    assert torch.allclose(loose, torch.tensor([1e-2, 0.99], dtype=torch.float64), atol=1e-6)
    with pytest.raises(ConfigError, match="opacity_eps"):
        read_splat(path, opacity_eps=0.0)


@pytest.mark.parametrize("size", [0, 31, 33, 95])
def test_splat_size_must_be_whole_records(tmp_path, size):
    path = write_bytes(tmp_path, "bad.splat", b"\x01" * size)
    with pytest.raises(GaussianFormatError, match="32-byte records"):
        load_gaussians(path)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_splat_non_positive_scale_is_an_error(tmp_path, scale):
    good = struct.pack("<3f3f4B4B", 0, 0, 0, 1, 1, 1, 9, 9, 9, 9, 255, 128, 128, 128)
    bad = struct.pack("<3f3f4B4B", 0, 0, 0, 1, scale, 1, 9, 9, 9, 9, 255, 128, 128, 128)
    with pytest.raises(GaussianFormatError, match="index 2"):
        read_splat(write_bytes(tmp_path, "s.splat", good + good + bad))


def test_splat_zero_quaternion_names_index(tmp_path):
    good = struct.pack("<3f3f4B4B", 0, 0, 0, 1, 1, 1, 9, 9, 9, 9, 255, 128, 128, 128)
    zero = struct.pack("<3f3f4B4B", 0, 0, 0, 1, 1, 1, 9, 9, 9, 9, 128, 128, 128, 128)
    with pytest.raises(GaussianFormatError, match="index 1"):
        read_splat(write_bytes(tmp_path, "q.splat", good + zero + good))


def test_splat_nan_position_is_a_typed_error(tmp_path):
    record = struct.pack("<3f3f4B4B", float("nan"), 0, 0, 1, 1, 1, 9, 9, 9, 9, 255, 128, 128, 128)
    with pytest.raises(GaussianFormatError, match="non-finite"):
        read_splat(write_bytes(tmp_path, "nan.splat", record))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300))
def test_splat_round_trip_within_quantisation(tmp_path_factory, seed, n):
    cloud = random_format_cloud(n, seed)
    path = tmp_path_factory.mktemp("splat") / "c.splat"
    save_gaussians(cloud, path)
    assert path.stat().st_size == 32 * n
    back = load_gaussians(path)
    assert torch.equal(back.means, cloud.means)  # float32, exact
    assert torch.allclose(back.log_scales, cloud.log_scales, atol=1e-5, rtol=0)
    assert (back.rgb - cloud.rgb).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.opacity - cloud.opacity).abs().max() <= 0.5 / 255 + 1e-6
    q_in = cloud.quats / cloud.quats.norm(dim=-1, keepdim=True)
    q_out = back.quats / back.quats.norm(dim=-1, keepdim=True)
    assert (q_in - q_out).abs().max() <= 1 / 128
    # covariances agree to the rotation quantisation
    assert torch.allclose(back.rotation_matrices, cloud.rotation_matrices, atol=0.05)


def test_splat_rgb_outside_unit_range_is_clamped(tmp_path):
    cloud = random_format_cloud(50, 3, rgb_range=(-0.5, 1.5))
    path = tmp_path / "c.splat"
    save_gaussians(cloud, path)
    back = load_gaussians(path)
    assert (back.rgb - cloud.rgb).abs().max() <= 0.5 / 255 + 1e-6  # rgb view is clamped on both sides


def test_splat_sort_by_importance(tmp_path):
    cloud = random_format_cloud(100, 4)
    save_gaussians(cloud, tmp_path / "sorted.splat", sort=True)
    back = load_gaussians(tmp_path / "sorted.splat")
    order = splat_importance_order(cloud)
    assert torch.equal(back.means, cloud.means[order])
    importance = back.scales.prod(dim=-1) * back.opacity
    assert (importance[:-1] >= importance[1:] - 1e-3 * importance[:-1]).all()
    save_gaussians(cloud, tmp_path / "kept.splat")
    assert torch.equal(load_gaussians(tmp_path / "kept.splat").means, cloud.means)


def test_splat_refuses_to_drop_sh_silently(tmp_path):
    cloud = random_format_cloud(10, 5, sh_degree=2)
    with pytest.raises(GaussianFormatError, match="drop_sh=True"):
        save_gaussians(cloud, tmp_path / "c.splat")
    save_gaussians(cloud, tmp_path / "c.splat", drop_sh=True)
    back = load_gaussians(tmp_path / "c.splat")
    assert back.sh_degree == 0
    assert (back.rgb - cloud.rgb).abs().max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------- compressed PLY
@pytest.mark.parametrize("color_bounds", [True, False])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_compressed_ply_matches_encoder(tmp_path, color_bounds, degree):
    cloud = random_format_cloud(600, 7 + degree, sh_degree=degree)
    path = write_bytes(tmp_path, "c.compressed.ply", encode_compressed_ply(cloud, color_bounds))
    back = load_gaussians(path)
    assert back.num_gaussians == 600 and back.sh_degree == degree
    # per-chunk quantisation: 11/10/11 bits of the chunk's extent
    for c in range(3):
        sl = slice(256 * c, 256 * (c + 1))
        extent = cloud.means[sl].amax(0) - cloud.means[sl].amin(0)
        step = extent / torch.tensor([2047.0, 1023.0, 2047.0])
        assert ((back.means[sl] - cloud.means[sl]).abs() <= step / 2 + 1e-5).all()
        extent = cloud.log_scales[sl].amax(0) - cloud.log_scales[sl].amin(0)
        step = extent / torch.tensor([2047.0, 1023.0, 2047.0])
        assert ((back.log_scales[sl] - cloud.log_scales[sl]).abs() <= step / 2 + 1e-5).all()
    assert (back.opacity - cloud.opacity).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.rgb - cloud.rgb).abs().max() <= 1 / 255  # half a step of the chunk's colour range
    dots = (back.rotations * cloud.rotations).sum(-1).abs()
    assert dots.min() > 0.9995
    if degree:
        assert (back.sh[:, 1:] - cloud.sh[:, 1:]).abs().max() <= 8 / 256 / 2 + 1e-6


def test_compressed_ply_rotation_bit_layout(tmp_path):
    # one Gaussian: largest = rot_2 (y), others (w, x, z) = (0.5, -0.5, 0) -> y = sqrt(0.5)
    cloud = random_format_cloud(1, 0)
    data = bytearray(encode_compressed_ply(cloud))
    n_word = lambda v: round((v / math.sqrt(2) + 0.5) * 1023)
    word = (2 << 30) | (n_word(0.5) << 20) | (n_word(-0.5) << 10) | n_word(0.0)
    # packed_rotation is the second uint32 of the last (only) vertex row
    offset = len(data) - 16 + 4
    data[offset : offset + 4] = struct.pack("<I", word)
    back = read_compressed_ply(write_bytes(tmp_path, "r.compressed.ply", bytes(data)))
    assert torch.allclose(back.quats, torch.tensor([[0.5, -0.5, math.sqrt(0.5), 0.0]]), atol=2e-3)


def test_compressed_ply_chunk_count_must_match(tmp_path):
    data = encode_compressed_ply(random_format_cloud(300, 1)).replace(b"element chunk 2", b"element chunk 1")
    with pytest.raises(GaussianFormatError):
        load_gaussians(write_bytes(tmp_path, "c.ply", data))


def test_compressed_ply_huge_claim_fails_fast(tmp_path):
    data = encode_compressed_ply(random_format_cloud(10, 1)).replace(b"element vertex 10", b"element vertex 1000000000000")
    with pytest.raises(GaussianFormatError, match="truncated"):
        load_gaussians(write_bytes(tmp_path, "c.ply", data))


def test_compressed_ply_wrong_property_type(tmp_path):
    data = encode_compressed_ply(random_format_cloud(10, 1))
    data = data.replace(b"property uint packed_color", b"property float packed_color")
    with pytest.raises(GaussianFormatError, match="wrong type"):
        load_gaussians(write_bytes(tmp_path, "c.ply", data))


def test_compressed_ply_nan_bounds_are_a_typed_error(tmp_path):
    data = bytearray(encode_compressed_ply(random_format_cloud(10, 1)))
    start = data.find(b"end_header\n") + len(b"end_header\n")
    data[start : start + 4] = struct.pack("<I", 0x7FA00000)  # a signalling NaN as min_x
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(GaussianFormatError, match="non-finite"):
            load_gaussians(write_bytes(tmp_path, "nan.compressed.ply", bytes(data)))


def test_compressed_ply_duplicate_elements(tmp_path):
    data = encode_compressed_ply(random_format_cloud(10, 1, sh_degree=1))
    data = data.replace(b"element sh 10\n", b"element sh 1\nproperty uchar f_rest_0\nelement sh 10\n")
    with pytest.raises(GaussianFormatError):
        load_gaussians(write_bytes(tmp_path, "dup.compressed.ply", data))


def test_ply_huge_list_element_claim_fails_fast(tmp_path):
    """A header claiming 10^12 faces is refused from the header alone (before plyfile allocates)."""
    save_gaussians(random_format_cloud(5, 0), tmp_path / "a.ply")
    data = (
        (tmp_path / "a.ply")
        .read_bytes()
        .replace(b"end_header", b"element face 1000000000000\nproperty list uchar int vertex_indices\nend_header")
    )
    with pytest.raises(GaussianFormatError, match="at least"):
        load_gaussians(write_bytes(tmp_path, "faces.ply", data))


def _check_chunk_bounds(path, cloud):
    """Decoded positions and log-scales lie inside each chunk's min/max (float32 rounding allowed)."""
    import plyfile

    chunks = plyfile.PlyData.read(str(path))["chunk"].data
    owner = torch.arange(cloud.num_gaussians) // 256
    for prefix, values in (("", cloud.means), ("scale_", cloud.log_scales)):
        lo = torch.stack([torch.from_numpy(chunks[f"min_{prefix}{a}"].copy()) for a in "xyz"], -1)[owner]
        hi = torch.stack([torch.from_numpy(chunks[f"max_{prefix}{a}"].copy()) for a in "xyz"], -1)[owner]
        tol = 1e-6 * (1 + lo.abs().maximum(hi.abs()))
        assert (values >= lo - tol).all() and (values <= hi + tol).all()


@pytest.mark.parametrize(
    "name, count, degree",
    [("guitar.compressed.ply", 90_854, 0), ("biker.compressed.ply", 152_746, 0), ("test.compressed.ply", 64, 3)],
)
def test_real_compressed_ply(name, count, degree):
    path = real_file(f"{REAL}/{name}")
    cloud = load_gaussians(path)
    assert cloud.num_gaussians == count and cloud.sh_degree == degree
    assert torch.isfinite(cloud.means).all()
    assert ((cloud.opacity > 0) & (cloud.opacity < 1)).all()
    _check_chunk_bounds(path, cloud)
    # plausible colours: mostly inside [0, 1] before clamping, not a constant
    raw_rgb = 0.5 + SH_C0 * cloud.sh_dc
    assert ((raw_rgb > -0.2) & (raw_rgb < 1.2)).float().mean() > 0.99
    assert cloud.rgb.std() > 0.05
    assert torch.allclose(cloud.quats.norm(dim=-1), torch.ones(count), atol=1e-3)
    assert cloud.scales.median() < 0.1 * (cloud.means.amax(0) - cloud.means.amin(0)).max()
    if degree:
        rest = cloud.sh[:, 1:]
        assert rest.abs().max() <= 4.0 and rest.std() > 0.01


# ---------------------------------------------------------------------------- spz
@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_spz_matches_encoder(tmp_path, version, degree):
    cloud = random_format_cloud(257, 11 + version, sh_degree=degree)
    path = write_bytes(tmp_path, "c.spz", encode_spz(cloud, version=version))
    back = load_gaussians(path, format="spz") if version == 4 else load_gaussians(path)
    stored = read_spz(path, coordinates="stored")
    assert stored.num_gaussians == 257 and stored.sh_degree == degree
    assert (stored.means - cloud.means).abs().max() <= 2.0**-13 + 1e-6
    inside = (cloud.log_scales > -10) & (cloud.log_scales < 5.9)
    assert ((stored.log_scales - cloud.log_scales).abs()[inside] <= 1 / 32 + 1e-6).all()
    assert (stored.opacity - cloud.opacity).abs().max() <= 0.5 / 255 + 1e-6
    assert (stored.sh_dc - cloud.sh_dc).abs().max() <= 0.5 / 255 / 0.15 + 1e-5
    if degree:
        assert (stored.sh[:, 1:] - cloud.sh[:, 1:]).abs().max() <= 0.5 / 128 + 1e-6
    tolerance = 0.995 if version == 2 else 0.9995
    assert ((stored.rotations * cloud.rotations).sum(-1).abs() > tolerance).all()
    # default: y and z flipped into the RDF frame
    assert torch.equal(back.means, stored.means * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(back.quats, stored.quats * torch.tensor([1.0, 1.0, -1.0, -1.0]))


def test_spz_rdf_flip_keeps_view_dependent_colour(tmp_path):
    cloud = random_format_cloud(20, 2, sh_degree=3)
    path = write_bytes(tmp_path, "c.spz", encode_spz(cloud, version=3))
    stored, flipped = read_spz(path, coordinates="stored"), read_spz(path)
    directions = torch.nn.functional.normalize(torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    flip = torch.tensor([1.0, -1.0, -1.0])
    colour_stored = torch.einsum("nk,nkc->nc", sh_basis(directions, 3)[:, 1:], stored.sh[:, 1:])
    colour_flipped = torch.einsum("nk,nkc->nc", sh_basis(directions * flip, 3)[:, 1:], flipped.sh[:, 1:])
    assert torch.allclose(colour_stored, colour_flipped, atol=1e-6)
    # the rotation matrices are conjugated by the flip
    f = torch.diag(flip)
    assert torch.allclose(flipped.rotation_matrices, f @ stored.rotation_matrices @ f, atol=1e-6)


@pytest.mark.parametrize("version", [0, 1, 5, 99])
def test_spz_unsupported_version_is_named(tmp_path, version):
    data = bytearray(gzip.decompress(encode_spz(random_format_cloud(5, 0), version=3)))
    data[4:8] = struct.pack("<I", version)
    with pytest.raises(UnsupportedFormatError, match=f"version {version}"):
        load_gaussians(write_bytes(tmp_path, "v.spz", gzip.compress(bytes(data))))


def test_spz_extensions_and_high_degree_unsupported(tmp_path):
    data = bytearray(gzip.decompress(encode_spz(random_format_cloud(5, 0), version=3)))
    data[14] = 0x2
    with pytest.raises(UnsupportedFormatError, match="extensions"):
        load_gaussians(write_bytes(tmp_path, "e.spz", gzip.compress(bytes(data))))
    data[14], data[12] = 0, 4
    with pytest.raises(UnsupportedFormatError, match="SH degree 4"):
        load_gaussians(write_bytes(tmp_path, "d.spz", gzip.compress(bytes(data))))


@pytest.mark.parametrize("version", [3, 4])
def test_spz_huge_claim_fails_fast(tmp_path, version):
    data = bytearray(encode_spz(random_format_cloud(5, 0), version=version))
    if version == 3:
        raw = bytearray(gzip.decompress(bytes(data)))
        raw[8:12] = struct.pack("<I", 4_000_000_000)
        data = gzip.compress(bytes(raw))
    else:
        data[8:12] = struct.pack("<I", 100_000_000)
    with pytest.raises(GaussianFormatError):
        load_gaussians(write_bytes(tmp_path, "h.spz", bytes(data)), format="spz")


@pytest.mark.parametrize("version", [2, 3, 4])
def test_spz_truncated(tmp_path, version):
    data = encode_spz(random_format_cloud(100, 0), version=version)
    for cut in (10, len(data) // 2, len(data) - 1):
        with pytest.raises(GaussianFormatError):
            read_spz(write_bytes(tmp_path, "t.spz", data[:cut]))


def test_spz_v4_without_zstd_names_the_package(tmp_path, monkeypatch):
    import builtins

    data = encode_spz(random_format_cloud(5, 0), version=4)
    real_import = builtins.__import__

    def no_zstd(name, *args, **kwargs):
        if name in ("zstandard", "compression"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    with pytest.raises(MissingDependencyError, match="zstandard"):
        read_spz(write_bytes(tmp_path, "z.spz", data))


def test_real_biker_spz_matches_compressed_ply():
    spz_path = real_file(f"{REAL}/biker.spz")
    ply_path = real_file(f"{REAL}/biker.compressed.ply")
    pytest.importorskip("zstandard")
    spz, ply = load_gaussians(spz_path), load_gaussians(ply_path)
    assert spz.num_gaussians == ply.num_gaussians == 152_746
    assert ((spz.opacity > 0) & (spz.opacity < 1)).all()
    # same order; positions within spz's 2^-12 grid (half a step) plus the ply's own rounding
    assert (spz.means - ply.means).abs().max() <= 2.0**-13 + 1e-5
    assert (spz.rgb - ply.rgb).abs().max() <= 1 / 255
    assert torch.equal(spz.opacity_logits, ply.opacity_logits)  # both store the same 8-bit alpha
    assert ((spz.rotations * ply.rotations).sum(-1).abs() > 0.9999).all()
    inside = ply.log_scales > -10  # spz clamps log-scales to [-10, 5.94]
    assert ((spz.log_scales - ply.log_scales).abs()[inside] <= 1 / 32 + 1e-5).all()
    assert inside.float().mean() > 0.999


def test_load_gaussians_forwards_reader_options(tmp_path):
    cloud = random_format_cloud(10, 4)
    path = write_bytes(tmp_path, "c.spz", encode_spz(cloud, version=3))
    stored = load_gaussians(path, coordinates="stored")
    assert torch.equal(stored.means, read_spz(path, coordinates="stored").means)
    assert torch.equal(load_gaussians(path).means, stored.means * torch.tensor([1.0, -1.0, -1.0]))
    with pytest.raises(TypeError):
        load_gaussians(path, no_such_option=1)
