"""The clip-gs command (info, render) and load_asset's 3DGS-or-mesh dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from clip_gs import load_asset, save_gaussians
from clip_gs.cli import main
from clip_gs.data.synthetic import make_object
from clip_gs.errors import GaussianFormatError, UnsupportedFormatError
from tests.conftest import real_file


@pytest.fixture
def torus_ply(tmp_path):
    obj = make_object("torus", seed=1, num_gaussians=3000, color="red", pattern="solid")
    return save_gaussians(obj.cloud, tmp_path / "torus.ply")


def test_info_prints_count_degree_and_statistics(torus_ply, capsys):
    assert main(["info", str(torus_ply)]) == 0
    out = capsys.readouterr().out
    assert "gaussians:   3,000" in out and "sh degree:   0" in out
    assert "opacity" in out and "rgb[r]" in out and "bounds min" in out


def test_render_writes_a_contact_sheet(torus_ply, tmp_path, capsys):
    target = tmp_path / "sub" / "sheet.png"
    assert main(["render", str(torus_ply), "--out", str(target), "--views", "2", "--size", "48"]) == 0
    image = np.asarray(Image.open(target).convert("RGB")).astype(float) / 255
    assert image.shape[0] == 48 + 4 and image.shape[1] == 2 * 48 + 6  # one row of two tiles, 2 px padding
    # a red torus on white: some pixels are clearly red, and the background is white
    red = (image[..., 0] > 0.6) & (image[..., 1] < 0.4) & (image[..., 2] < 0.4)
    assert red.mean() > 0.05
    assert (image.min(axis=-1) > 0.95).mean() > 0.3
    assert "wrote" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clip-gs info: error:") and "bad.ply" in err and err.count("\n") == 1


def test_load_asset_converts_meshes_and_reads_3dgs(tmp_path, torus_ply):
    assert len(load_asset(torus_ply)) == 3000
    box = trimesh.creation.box()
    box.export(tmp_path / "box.ply")  # a mesh .ply: falls through to the mesh converter
    box.export(tmp_path / "box.stl")
    for name in ("box.ply", "box.stl"):
        cloud = load_asset(tmp_path / name, mesh_gaussians=500, seed=0)
        assert len(cloud) == 500
        assert cloud.means.norm(dim=-1).max().item() == pytest.approx(1.0, abs=1e-5)
    (tmp_path / "x.bin").write_bytes(b"\x01" * 64)
    with pytest.raises(UnsupportedFormatError):
        load_asset(tmp_path / "x.bin")
    truncated = tmp_path / "t.ply"
    truncated.write_bytes(torus_ply.read_bytes()[:-100])
    with pytest.raises(GaussianFormatError, match="truncated"):
        load_asset(truncated)


def test_render_real_duck_is_yellow(tmp_path):
    duck = real_file("trimesh-models/Duck.glb")
    target = tmp_path / "duck.png"
    assert (
        main(["render", str(duck), "--out", str(target), "--views", "2", "--size", "64", "--mesh-gaussians", "8000"])
        == 0
    )
    image = np.asarray(Image.open(target).convert("RGB")).astype(float) / 255
    body = image[image.min(axis=-1) < 0.9]  # not background
    r, g, b = body.mean(axis=0)
    assert r > 0.8 and g > 0.6 and b < 0.35


def test_background_option(torus_ply, tmp_path):
    from clip_gs.cli import parse_background

    assert parse_background("grey") == (0.5, 0.5, 0.5)
    assert parse_background("0.1,0.2,0.3") == (0.1, 0.2, 0.3)
    with pytest.raises(Exception, match="background must be"):
        parse_background("1,2")
    target = tmp_path / "black.png"
    assert (
        main(["render", str(torus_ply), "--out", str(target), "--views", "1", "--size", "32", "--background", "black"])
        == 0
    )
    image = np.asarray(Image.open(target).convert("RGB"))[2:-2, 2:-2]
    assert image[0, 0].tolist() == [0, 0, 0]  # a corner of the view is background


def two_colour_cloud():
    """Red Gaussians above y = 0, blue below: tells which way up a render is."""
    import torch

    from clip_gs import GaussianCloud

    g = torch.Generator().manual_seed(0)
    means = torch.rand(3000, 3, generator=g) * 2 - 1
    top = (means[:, 1] > 0).float()[:, None]
    rgb = top * torch.tensor([0.9, 0.05, 0.05]) + (1 - top) * torch.tensor([0.05, 0.05, 0.9])
    return GaussianCloud.from_activated(
        means, rgb, torch.full((3000,), 0.9), torch.full((3000, 3), 0.05), torch.tensor([1.0, 0, 0, 0]).expand(3000, 4)
    )


def red_above_blue(path) -> bool:
    image = np.asarray(Image.open(path).convert("RGB")).astype(float)
    rows = np.arange(image.shape[0])[:, None]
    red = (image[..., 0] > 150) & (image[..., 2] < 100)
    blue = (image[..., 2] > 150) & (image[..., 0] < 100)
    assert red.sum() > 50 and blue.sum() > 50
    return (rows * red).sum() / red.sum() < (rows * blue).sum() / blue.sum()


def test_render_up_axis_option_and_auto_default(tmp_path, capsys):
    capture = save_gaussians(two_colour_cloud(), tmp_path / "capture.ply")  # declares nothing: a y-down capture
    declared = save_gaussians(two_colour_cloud(), tmp_path / "declared.ply", up_axis="+y")
    out = tmp_path / "sheet.png"
    common = ["--views", "1", "--size", "48", "--elevation", "0"]
    # `--up -y` used to be rejected by argparse ("expected one argument")
    assert main(["render", str(capture), "--out", str(out), "--up", "-y", *common]) == 0
    assert not red_above_blue(out)  # -y up: the blue half (y < 0) is on top
    assert main(["render", str(capture), "--out", str(out), "--up", "+y", *common]) == 0
    assert red_above_blue(out)
    assert main(["render", str(capture), "--out", str(out), *common]) == 0  # auto: INRIA captures are y-down
    assert not red_above_blue(out) and "up -y (auto)" in capsys.readouterr().out
    assert main(["render", str(declared), "--out", str(out), *common]) == 0  # auto: the declared axis
    assert red_above_blue(out) and "up +y (auto)" in capsys.readouterr().out


def test_default_up_axis_by_kind_of_file(tmp_path):
    from clip_gs.gaussians.frames import default_up_axis

    assert default_up_axis(real_file("playcanvas-splats/guitar.compressed.ply")) == "-y"
    assert default_up_axis(real_file("playcanvas-splats/biker.spz")) == "-y"
    assert default_up_axis(real_file("trimesh-models/Duck.glb")) == "+y"
    assert default_up_axis(real_file("trimesh-models/bunny.ply")) == "+y"  # a mesh ply
    cloud = two_colour_cloud()
    assert default_up_axis(save_gaussians(cloud, tmp_path / "x.ply", up_axis="+z")) == "+z"
    assert default_up_axis(save_gaussians(cloud, tmp_path / "x.splat")) == "-y"
