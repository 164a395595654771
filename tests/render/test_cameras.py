"""Orbit cameras: the documented OpenCV / +Y-up / azimuth conventions, checked by projecting points."""

from __future__ import annotations

import math

import pytest
import torch

from clip_gs.errors import RenderError
from clip_gs.render import Cameras, look_at_viewmats, orbit_cameras

F64 = torch.float64


def project(cams: Cameras, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``points: [P, 3]`` -> pixel coordinates ``[C, P, 2]`` and camera-space depth ``[C, P]``."""
    homo = torch.cat([points, torch.ones(points.shape[0], 1, dtype=points.dtype)], -1)
    cam = (cams.viewmats @ homo.T).transpose(1, 2)[..., :3]  # [C, P, 3]
    pix = (cams.Ks @ cam.transpose(1, 2)).transpose(1, 2)
    return pix[..., :2] / pix[..., 2:], cam[..., 2]


@pytest.mark.parametrize("up", ["+y", "-y", "+z", "-z", "y", "z"])
def test_origin_at_centre_up_is_up_and_cameras_at_radius(up):
    cams = orbit_cameras(7, radius=2.5, elevation_deg=25.0, width=64, height=48, up=up, dtype=F64)
    axis = {"+y": (0, 1, 0), "y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "z": (0, 0, 1), "-z": (0, 0, -1)}[up]
    up_vec = torch.tensor(axis, dtype=F64)
    pix, depth = project(cams, torch.stack([torch.zeros(3, dtype=F64), 0.3 * up_vec]))
    torch.testing.assert_close(pix[:, 0], torch.tensor([32.0, 24.0], dtype=F64).expand(7, 2))
    assert bool((depth > 0).all())  # the object is in front of every camera
    assert bool((pix[:, 1, 1] < 24.0 - 1.0).all())  # world up -> smaller pixel row (image up)
    torch.testing.assert_close(pix[:, 1, 0], torch.full((7,), 32.0, dtype=F64))  # straight above the centre
    torch.testing.assert_close(cams.centers.norm(dim=-1), torch.full((7,), 2.5, dtype=F64))
    heights = cams.centers @ up_vec
    torch.testing.assert_close(heights, torch.full((7,), 2.5 * math.sin(math.radians(25.0)), dtype=F64))
    rot = cams.viewmats[:, :3, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=F64).expand(7, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(7, dtype=F64))  # right-handed (OpenCV)
    torch.testing.assert_close(cams.viewmats[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=F64).expand(7, 4))


def test_azimuth_convention_for_y_up():
    cams = orbit_cameras(4, radius=3.0, elevation_deg=0.0, dtype=F64)  # azimuths 0, 90, 180, 270
    expected = torch.tensor([[0, 0, 3.0], [3.0, 0, 0], [0, 0, -3.0], [-3.0, 0, 0]], dtype=F64)
    torch.testing.assert_close(cams.centers, expected, atol=1e-12, rtol=0)
    # From the front (+Z), world +X is to the right of the image (larger pixel column).
    pix, _ = project(cams[0], torch.tensor([[0.5, 0.0, 0.0]], dtype=F64))
    assert float(pix[0, 0, 0]) > 112 + 10


def test_azimuth_convention_for_z_up():
    cams = orbit_cameras(4, radius=2.0, elevation_deg=0.0, up="+z", dtype=F64)
    expected = torch.tensor([[0, -2.0, 0], [2.0, 0, 0], [0, 2.0, 0], [-2.0, 0, 0]], dtype=F64)
    torch.testing.assert_close(cams.centers, expected, atol=1e-12, rtol=0)


def test_elevation_start_and_intrinsics():
    cams = orbit_cameras(1, radius=2.0, elevation_deg=30.0, azimuth_start_deg=90.0, fov_deg=60.0,
                         width=100, height=50, dtype=F64)  # fmt: skip
    c = math.cos(math.radians(30.0))
    torch.testing.assert_close(cams.centers[0], torch.tensor([2.0 * c, 1.0, 0.0], dtype=F64), atol=1e-12, rtol=0)
    focal = 25.0 / math.tan(math.radians(30.0))  # vertical fov: (height / 2) / tan(fov / 2)
    torch.testing.assert_close(cams.Ks[0], torch.tensor([[focal, 0, 50.0], [0, focal, 25.0], [0, 0, 1]], dtype=F64))
    assert (cams.width, cams.height, len(cams)) == (100, 50, 1)


def test_default_view_keeps_the_unit_sphere_in_frame():
    cams = orbit_cameras(8, dtype=F64)
    g = torch.Generator().manual_seed(0)
    sphere = torch.randn(2000, 3, generator=g, dtype=F64)
    sphere = sphere / sphere.norm(dim=-1, keepdim=True)
    pix, depth = project(cams, sphere)
    assert bool((depth > 0).all())
    assert bool(((pix >= 0) & (pix <= 224)).all())


def test_random_azimuths_are_seeded():
    a = orbit_cameras(5, random=True, seed=7)
    b = orbit_cameras(5, random=True, seed=7)
    c = orbit_cameras(5, random=True, seed=8)
    assert torch.equal(a.viewmats, b.viewmats)
    assert not torch.allclose(a.viewmats, c.viewmats)
    regular = orbit_cameras(5)
    assert not torch.allclose(a.viewmats, regular.viewmats)
    torch.testing.assert_close(a.centers.norm(dim=-1), torch.full((5,), 3.0))
    with pytest.raises(RenderError, match="seed"):
        orbit_cameras(5, random=True)


def test_look_at_parallel_up_and_bad_arguments_raise():
    with pytest.raises(RenderError, match="parallel"):
        look_at_viewmats(torch.tensor([[0.0, 2.0, 0.0]]), torch.zeros(1, 3), torch.tensor([0.0, 1.0, 0.0]))
    for kwargs, message in [
        (dict(num_views=0), "num_views"),
        (dict(num_views=2, elevation_deg=90.0), "elevation_deg"),
        (dict(num_views=2, up="x"), "up must be"),
        (dict(num_views=2, radius=-1.0), "radius"),
        (dict(num_views=2, fov_deg=180.0), "fov_deg"),
    ]:
        with pytest.raises(RenderError, match=message):
            orbit_cameras(**kwargs)


def test_cameras_validation_and_indexing():
    cams = orbit_cameras(3)
    assert len(cams[1]) == 1 and torch.equal(cams[1].viewmats[0], cams.viewmats[1])
    assert len(cams[-1]) == 1 and torch.equal(cams[-1].viewmats[0], cams.viewmats[2])
    assert cams.to(dtype=F64).viewmats.dtype == F64
    with pytest.raises(RenderError, match="viewmats"):
        Cameras(torch.eye(4), cams.Ks, 224, 224)
    with pytest.raises(RenderError, match="3 viewmats but 2 Ks"):
        Cameras(cams.viewmats, cams.Ks[:2], 224, 224)
    with pytest.raises(RenderError, match="width"):
        Cameras(cams.viewmats, cams.Ks, 0, 224)
