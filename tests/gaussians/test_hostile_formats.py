"""Hostile 3DGS files and meshes, grouped by entry point: ``load_gaussians`` (spz, PLY, compressed
PLY, .splat), ``clip-gs info`` (FIFOs and devices) and ``mesh_to_gaussians`` (OBJ material files).

Each case is a crafted file of a few KB. Cases whose unguarded failure would allocate gigabytes
(a decompression bomb, ``/dev/zero``) run under :func:`bounded_memory`, so a reader that trusts the
data fails with ``MemoryError`` instead of exhausting the machine. Cases with a FIFO run under
:func:`fifo_watchdog`, which unblocks a reader stuck on the FIFO and reports that it opened it.

The two fuzz tests at the end follow ``test_fuzz.py``: every outcome is valid data or the
package's typed error, and for header comments and trailing bytes, valid data must be the
unmutated cloud (no silent wrong data).
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import plyfile
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_gs.cli import main
from clip_gs.errors import GaussianFormatError, MeshError
from clip_gs.gaussians.cloud import GaussianCloud
from clip_gs.gaussians.formats import spz as spz_module
from clip_gs.gaussians.formats import write_ply, write_splat
from clip_gs.gaussians.formats.ply import UnknownPropertiesWarning
from clip_gs.gaussians.io import load_gaussians
from clip_gs.gaussians.mesh import MeshColorWarning, mesh_to_gaussians
from tests.helpers import (
    encode_compressed_ply,
    encode_spz,
    fifo_watchdog,
    gaussian_columns,
    make_fifo,
    peak_bytes,
    random_format_cloud,
    write_vertex_ply,
)

MEMORY_HEADROOM = 768 << 20
"""Extra private memory a guarded case may allocate (the 1 GB per-test budget, less the process)."""


# ---------------------------------------------------------------------------- guards
def _private_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmData in /proc/self/status")


@contextmanager
def bounded_memory(headroom: int = MEMORY_HEADROOM):
    """Limit the process' private data (``RLIMIT_DATA``) to its current size plus ``headroom``."""
    resource = pytest.importorskip("resource")
    try:
        used = _private_bytes()
    except OSError:
        pytest.skip("needs /proc/self/status (Linux)")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = used + headroom if hard == resource.RLIM_INFINITY else min(hard, used + headroom)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_same_cloud(a: GaussianCloud, b: GaussianCloud) -> None:
    for name in GaussianCloud._TENSOR_FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def ply_bytes(tmp_path: Path, cloud: GaussianCloud, **options) -> bytes:
    path = tmp_path / "seed.ply"
    write_ply(cloud, path, **options)
    return path.read_bytes()


# ============================================================================ load_gaussians: spz
def zstd_rle_frame(size: int, byte: int = 0) -> bytes:
    """A zstd frame of ``size`` copies of ``byte``, made of RLE blocks: 4 bytes per 128 KiB."""
    out = bytearray(b"\x28\xb5\x2f\xfd") + bytes([0x00, 0x38])  # no content size, 128 KiB window
    left = size
    while left > 0:
        count = min(1 << 17, left)
        left -= count
        out += ((1 if left == 0 else 0) | (1 << 1) | (count << 3)).to_bytes(3, "little") + bytes([byte])
    return bytes(out)


def spz_v4_bomb(num_points: int, sh_degree: int = 3) -> bytes:
    """A well-formed spz v4 file whose streams really decompress to ``num_points`` points of zeros."""
    widths = [9, 1, 3, 3, 4] + ([3 * ((sh_degree + 1) ** 2 - 1)] if sh_degree else [])
    frames = [zstd_rle_frame(num_points * w) for w in widths]
    header = struct.pack("<IIIBBBBI12x", 0x5053474E, 4, num_points, sh_degree, 12, 0, len(widths), 32)
    toc = b"".join(struct.pack("<QQ", len(f), num_points * w) for f, w in zip(frames, widths))
    return header + toc + b"".join(frames)


def test_spz_v4_bomb_is_refused_before_decompressing(tmp_path):
    pytest.importorskip("zstandard")
    data = spz_v4_bomb((1 << 24) - 1)  # 16.7M points at SH 3: 1.09 GB of streams in 33 KB
    assert len(data) < 34_000
    path = write(tmp_path / "bomb.spz", data)
    with bounded_memory(), pytest.raises(GaussianFormatError, match=r"bomb\.spz: .*compression ratio") as info:
        load_gaussians(path)
    assert "1,090,518,975" in str(info.value)


def test_spz_gzip_bomb_within_deflates_own_ratio_is_refused(tmp_path):
    # deflate can reach ~1000:1, so a limit of deflate's own maximum lets a bomb through
    n = 1 << 18
    payload = struct.pack("<IIIBBBB", 0x5053474E, 3, n, 3, 12, 0, 0) + bytes(65 * n)
    data = gzip.compress(payload, compresslevel=9, mtime=0)
    assert len(payload) > 500 * len(data)
    path = write(tmp_path / "bomb.spz", data)
    with bounded_memory(), pytest.raises(GaussianFormatError, match=r"bomb\.spz: .*compression ratio"):
        load_gaussians(path)


def test_spz_compression_ratio_limit_is_a_reader_option(tmp_path):
    pytest.importorskip("zstandard")
    path = write(tmp_path / "zeros.spz", spz_v4_bomb(4096, sh_degree=0))  # 80 KB of zeros in 162 bytes
    with pytest.raises(GaussianFormatError, match=r"above the limit of 64:1"):
        load_gaussians(path)
    assert load_gaussians(path, max_compression_ratio=1000).num_gaussians == 4096


def test_spz_memory_error_is_a_typed_error_naming_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "c.spz", encode_spz(random_format_cloud(20, 0), version=3))

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(spz_module, "_decode", out_of_memory)
    with pytest.raises(GaussianFormatError, match=r"c\.spz: not enough memory") as info:
        load_gaussians(path)
    assert not isinstance(info.value, MemoryError)


def test_spz_zstd_out_of_memory_names_the_stream_and_the_reason(tmp_path, monkeypatch):
    pytest.importorskip("zstandard")
    path = write(tmp_path / "c.spz", encode_spz(random_format_cloud(20, 0), version=4))

    def backend(_path):
        def decompress(frame, limit):
            raise MemoryError  # what zstd bindings raise, with an empty message

        return decompress

    monkeypatch.setattr(spz_module, "_zstd_backend", backend)
    with pytest.raises(GaussianFormatError, match=r"c\.spz: not enough memory .*'positions'"):
        load_gaussians(path)


# ============================================================================ load_gaussians: PLY
END_HEADER_LOOKALIKES = ["comment end_header", "obj_info xend_header", "comment this is not end_header"]


@pytest.mark.parametrize("line", END_HEADER_LOOKALIKES)
@pytest.mark.parametrize("where", ["before_elements", "after_properties"])
@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_ply_end_header_must_be_a_whole_line(tmp_path, line, where, byte_order):
    cloud = random_format_cloud(12, 1, sh_degree=1)
    data = ply_bytes(tmp_path, cloud, byte_order=byte_order)
    if where == "after_properties":
        data = data.replace(b"\nend_header\n", f"\n{line}\nend_header\n".encode(), 1)
    else:
        data = data.replace(b"\nelement vertex", f"\n{line}\nelement vertex".encode(), 1)
    loaded = load_gaussians(write(tmp_path / "c.ply", data))
    assert_same_cloud(
        loaded, load_gaussians(write(tmp_path / "plain.ply", ply_bytes(tmp_path, cloud, byte_order=byte_order)))
    )


@pytest.mark.parametrize("line", END_HEADER_LOOKALIKES)
def test_compressed_ply_end_header_must_be_a_whole_line(tmp_path, line):
    data = encode_compressed_ply(random_format_cloud(300, 4, sh_degree=1))
    expected = load_gaussians(write(tmp_path / "plain.compressed.ply", data))
    data = data.replace(b"\nend_header\n", f"\n{line}\nend_header\n".encode(), 1)
    assert_same_cloud(load_gaussians(write(tmp_path / "c.compressed.ply", data)), expected)


def test_ply_binary_data_beyond_the_declared_count_is_refused(tmp_path):
    data = ply_bytes(tmp_path, random_format_cloud(12, 1, sh_degree=1))
    row = 26 * 4  # 26 float properties at SH degree 1
    with pytest.raises(GaussianFormatError, match=r"extra\.ply: 104 bytes of data beyond what the PLY header declares"):
        load_gaussians(write(tmp_path / "extra.ply", data + data[-row:]))


def test_ply_ascii_rows_beyond_the_declared_count_are_refused(tmp_path):
    data = ply_bytes(tmp_path, random_format_cloud(4, 2), ascii=True)
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert load_gaussians(write(tmp_path / "blank.ply", data + b"\n  \n")).num_gaussians == 4  # blank lines are fine
    with pytest.raises(GaussianFormatError, match=r"extra\.ply: data beyond the 4 rows"):
        load_gaussians(write(tmp_path / "extra.ply", data + last + b"\n"))


def test_compressed_ply_data_beyond_the_declared_count_is_refused(tmp_path):
    data = encode_compressed_ply(random_format_cloud(300, 4))
    with pytest.raises(GaussianFormatError, match=r"extra\.compressed\.ply: 16 bytes of data beyond"):
        load_gaussians(write(tmp_path / "extra.compressed.ply", data + bytes(16)))


def test_ply_second_vertex_element_is_refused(tmp_path):
    data = ply_bytes(tmp_path, random_format_cloud(6, 3))
    head, body = data.split(b"end_header\n", 1)
    first = head.index(b"element vertex")
    block = head[first:]
    doubled = head + block + b"end_header\n" + body + body
    with pytest.raises(
        GaussianFormatError, match=r"twice\.ply: PLY header declares the element 'vertex' more than once"
    ):
        load_gaussians(write(tmp_path / "twice.ply", doubled))


@pytest.mark.parametrize(("name", "dtype", "type_name"), [("opacity", "u1", "uchar"), ("scale_0", "i4", "int")])
def test_ply_integer_gaussian_property_is_refused(tmp_path, name, dtype, type_name):
    cols = gaussian_columns(5, 0)
    cols[name] = np.array([200, 3, 0, 255, 17], dtype=dtype)
    path = write_vertex_ply(tmp_path / "q.ply", cols)
    with pytest.raises(GaussianFormatError, match=rf"q\.ply: vertex property '{name}' has type {type_name}"):
        load_gaussians(path)


def test_ply_list_element_is_refused(tmp_path):
    faces = np.array([([0, 1, 2],)], dtype=[("vertex_indices", "i4", (3,))])
    path = write_vertex_ply(
        tmp_path / "faces.ply", gaussian_columns(5, 0), extra_elements=[plyfile.PlyElement.describe(faces, "face")]
    )
    with pytest.raises(GaussianFormatError, match=r"faces\.ply: element 'face' has list properties"):
        load_gaussians(path)


def test_ply_other_scalar_element_is_reported(tmp_path):
    camera = np.array([(1.0, 2.0)], dtype=[("fx", "f4"), ("fy", "f4")])
    path = write_vertex_ply(
        tmp_path / "cam.ply", gaussian_columns(5, 0), extra_elements=[plyfile.PlyElement.describe(camera, "camera")]
    )
    with pytest.warns(
        UnknownPropertiesWarning, match=r"cam\.ply: ignoring 1 element other than 'vertex': \['camera'\]"
    ):
        assert load_gaussians(path).num_gaussians == 5


def test_ply_log_scale_overflowing_float32_is_refused(tmp_path):
    cols = gaussian_columns(5, 0)
    cols["scale_1"][3] = 200.0
    with pytest.raises(GaussianFormatError, match=r"s\.ply: 1 value\(s\) of vertex property 'scale_1' .*index 3"):
        load_gaussians(write_vertex_ply(tmp_path / "s.ply", cols))


def test_compressed_ply_log_scale_bound_of_200_is_refused(tmp_path):
    data = bytearray(encode_compressed_ply(random_format_cloud(300, 4)))
    start = data.index(b"end_header\n") + len(b"end_header\n")
    max_scale_x = 9  # min_x..max_z, min_scale_x..z, then max_scale_x
    data[start + 4 * max_scale_x : start + 4 * max_scale_x + 4] = struct.pack("<f", 200.0)
    with pytest.raises(GaussianFormatError, match=r"s\.compressed\.ply: .*chunk property 'max_scale_x'"):
        load_gaussians(write(tmp_path / "s.compressed.ply", bytes(data)))


def test_splat_scale_overflowing_float32_is_refused(tmp_path):
    path = tmp_path / "s.splat"
    write_splat(random_format_cloud(4, 5), path)
    data = bytearray(path.read_bytes())
    data[32 + 12 : 32 + 16] = struct.pack("<f", 1e30)  # Gaussian 1, linear scale x: log 69
    with pytest.raises(GaussianFormatError, match=r"s\.splat: .*of scale lie outside the log-scale range .*index 1"):
        load_gaussians(write(path, bytes(data)))


# ============================================================================ clip-gs info
@pytest.mark.parametrize("name", ["cloud.ply", "cloud.splat", "cloud.spz", "mesh.obj"])
def test_info_on_a_fifo_fails_fast_without_opening_it(tmp_path, capsys, name):
    fifo = make_fifo(tmp_path / name)
    with fifo_watchdog(fifo) as watch:
        status = main(["info", str(fifo)])
    assert not watch["opened"], "the FIFO was opened (a reader would block on it)"
    assert status == 2
    err = capsys.readouterr().err
    assert f"{name}: not a regular file: it is a FIFO" in err


@pytest.mark.parametrize("name", ["cloud.splat", "cloud.ply", "cloud.spz"])
def test_info_on_a_symlink_to_dev_zero_is_refused(tmp_path, capsys, name):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    link = tmp_path / name
    link.symlink_to("/dev/zero")
    with bounded_memory():
        status = main(["info", str(link)])
    assert status == 2
    err = capsys.readouterr().err
    assert f"{name}: not a regular file (a symlink to /dev/zero): it is a character device" in err


def test_load_gaussians_refuses_a_folder_named_like_a_file(tmp_path):
    (tmp_path / "cloud.ply").mkdir()
    with pytest.raises(GaussianFormatError, match=r"cloud\.ply: not a regular file: it is a folder"):
        load_gaussians(tmp_path / "cloud.ply", format="ply")


# ============================================================================ mesh_to_gaussians: OBJ materials
TRIANGLE_OBJ = "mtllib {mtl}\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nusemtl red\nf 1/1 2/2 3/3\n"
RED_MTL = "newmtl red\nKd 1 0 0\n{map}"


def textured_folder(tmp_path: Path, mtl: str = "tri.mtl", texture: str | None = "tex.png") -> Path:
    """tri.obj naming ``mtl``, whose material is Kd red with ``map_Kd texture``; writes tri.mtl."""
    (tmp_path / "tri.mtl").write_text(RED_MTL.format(map=f"map_Kd {texture}\n" if texture else ""))
    return write(tmp_path / "tri.obj", TRIANGLE_OBJ.format(mtl=mtl).encode())


def colour_warnings(path: Path) -> tuple[GaussianCloud, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cloud = mesh_to_gaussians(path, num_gaussians=32)
    return cloud, [str(w.message) for w in caught if issubclass(w.category, MeshColorWarning)]


def test_missing_mtllib_warns_naming_the_mesh_and_the_file(tmp_path):
    _, messages = colour_warnings(textured_folder(tmp_path, mtl="absent.mtl"))
    assert any("tri.obj: material library 'absent.mtl' named by the mesh is missing" in m for m in messages), messages


def test_unreadable_mtllib_warns(tmp_path):
    (tmp_path / "folder.mtl").mkdir()
    _, messages = colour_warnings(textured_folder(tmp_path, mtl="folder.mtl"))
    assert any("tri.obj: material library 'folder.mtl' named by the mesh cannot be read" in m for m in messages)


def test_mtllib_fifo_is_never_opened(tmp_path):
    fifo = make_fifo(tmp_path / "pipe.mtl")
    path = textured_folder(tmp_path, mtl="pipe.mtl")
    with fifo_watchdog(fifo) as watch:
        _, messages = colour_warnings(path)
    assert not watch["opened"]
    assert any("'pipe.mtl' named by the mesh cannot be read" in m and "FIFO" in m for m in messages), messages


def test_missing_map_kd_warns_and_falls_back_to_kd(tmp_path):
    cloud, messages = colour_warnings(textured_folder(tmp_path, texture="absent.png"))
    assert any("tri.obj: texture 'absent.png' named by the mesh is missing" in m for m in messages), messages
    assert torch.allclose(cloud.rgb, torch.tensor([1.0, 0.0, 0.0]).expand_as(cloud.rgb), atol=1e-6)


def test_undecodable_texture_warns_and_falls_back_to_kd(tmp_path):
    write(tmp_path / "tex.png", b"this is not an image")
    cloud, messages = colour_warnings(textured_folder(tmp_path))
    assert any("texture 'tex.png' named by the mesh cannot be decoded" in m for m in messages), messages
    assert torch.allclose(cloud.rgb, torch.tensor([1.0, 0.0, 0.0]).expand_as(cloud.rgb), atol=1e-6)


def test_truncated_texture_warns_and_falls_back_to_kd(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    image.save(tmp_path / "full.png")
    write(tmp_path / "tex.png", (tmp_path / "full.png").read_bytes()[:200])  # header fine, pixels cut
    cloud, messages = colour_warnings(textured_folder(tmp_path))
    assert any("texture 'tex.png' named by the mesh cannot be decoded" in m for m in messages), messages
    assert torch.allclose(cloud.rgb, torch.tensor([1.0, 0.0, 0.0]).expand_as(cloud.rgb), atol=1e-6)


# ============================================================================ fuzz
FUZZ_EXAMPLES = 60
MESH_FUZZ_EXAMPLES = 30
MAX_PEAK_BYTES = 64 << 20
"""Seeds are a few KB; more than this means a reader trusted a corrupted size."""

COMMENT_TEXTS = [
    "end_header", "xend_header", "end_header ", "a end_header b", "element vertex 1", "property float x",
    "format ascii 1.0", "", "ply", "end_headers",
]  # fmt: skip
header_edit = st.one_of(
    st.tuples(
        st.just("line"), st.integers(0, 60), st.sampled_from(["comment", "obj_info"]), st.sampled_from(COMMENT_TEXTS)
    ),
    st.tuples(st.just("trailing"), st.binary(min_size=1, max_size=64)),
)


def _edit_header(data: bytes, ops) -> bytes:
    """Insert comment / obj_info lines anywhere after the magic line, or append bytes."""
    out = data
    for op in ops:
        if op[0] == "trailing":
            out = out + op[1]
            continue
        end = out.index(b"\nend_header\n")
        starts = [i + 1 for i in range(3, end + 1) if out[i] == 0x0A]  # line starts after "ply\n"
        at = starts[op[1] % len(starts)]
        out = out[:at] + f"{op[2]} {op[3]}\n".encode() + out[at:]
    return out


@pytest.mark.parametrize("seed", ["ply_binary", "ply_big_endian", "compressed_ply"])
def test_fuzz_header_comments_never_change_the_data(tmp_path_factory, seed):
    """Comments and obj_info lines carry no data: a PLY with any of them added loads as the same
    cloud; bytes after the declared data are refused. Never a different cloud."""
    folder = tmp_path_factory.mktemp(f"fuzz_comments_{seed}")
    cloud = random_format_cloud(300 if seed == "compressed_ply" else 12, 12, sh_degree=1)
    if seed == "compressed_ply":
        name, data = "seed.compressed.ply", encode_compressed_ply(cloud)
    else:
        name, data = "seed.ply", ply_bytes(folder, cloud, byte_order=">" if seed == "ply_big_endian" else "<")
    path = write(folder / name, data)
    expected = load_gaussians(path)

    @settings(max_examples=FUZZ_EXAMPLES, deadline=2000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(ops=st.lists(header_edit, min_size=1, max_size=3))
    def run(ops):
        write(path, _edit_header(data, ops))
        try:
            loaded = load_gaussians(path)
        except GaussianFormatError:
            return
        assert_same_cloud(loaded, expected)

    run()


fraction = st.floats(0.0, 1.0, exclude_max=True)
texture_mutation = st.one_of(
    st.tuples(st.just("truncate"), fraction),
    st.tuples(st.just("flip"), fraction, st.integers(0, 7)),
    st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("remove")),
)


def _mutate_file(path: Path, seed: bytes, ops) -> None:
    content = bytearray(seed)
    for op in ops:
        if op[0] == "remove":
            path.unlink(missing_ok=True)
            return
        at = int(op[1] * len(content))
        if op[0] == "truncate":
            del content[at:]
        elif op[0] == "flip" and at < len(content):
            content[at] ^= 1 << op[2]
        elif op[0] == "insert":
            content[at:at] = op[2]
    write(path, bytes(content))


def test_fuzz_obj_material_files(tmp_path_factory):
    """A textured OBJ whose PNG texture is mutated (or removed) and whose MTL may be removed: every
    outcome is a cloud or a MeshError within the memory bound, and a cloud whose colours differ
    from the intact files' comes with a MeshColorWarning (no silent fallback colour)."""
    folder = tmp_path_factory.mktemp("fuzz_obj")
    obj = textured_folder(folder)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "tex.png")
    seed_png, seed_mtl = (folder / "tex.png").read_bytes(), (folder / "tri.mtl").read_bytes()
    expected, messages = colour_warnings(obj)
    assert messages == []

    @settings(max_examples=MESH_FUZZ_EXAMPLES, deadline=4000, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(ops=st.lists(texture_mutation, min_size=1, max_size=3), remove_mtl=st.booleans())
    def run(ops, remove_mtl):
        _mutate_file(folder / "tex.png", seed_png, ops)
        (folder / "tri.mtl").unlink(missing_ok=True)
        if not remove_mtl:
            write(folder / "tri.mtl", seed_mtl)

        def convert():
            try:
                return colour_warnings(obj)
            except MeshError:
                return None, []

        (cloud, messages), peak = peak_bytes(convert)
        assert peak < MAX_PEAK_BYTES, f"peak allocation {peak:,} bytes"
        if cloud is not None and not messages:
            assert torch.equal(cloud.rgb, expected.rgb), "colours changed without a MeshColorWarning"

    run()
