"""Synthetic procedural 3DGS set: determinism, labels and captions, patterns, per-class geometry,
disk orientation, the dataset, and rendered silhouettes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_gs.data.synthetic import (
    PALETTE,
    PATTERNS,
    SHAPE_CLASSES,
    SHAPE_NOUNS,
    SyntheticGaussianDataset,
    make_caption,
    make_object,
    object_seed,
)
from clip_gs.data.synthetic_shapes import SHAPE_BUILDERS
from clip_gs.errors import ConfigError

FIELDS = ("means", "sh", "opacity_logits", "log_scales", "quats")


def _colour_groups(obj) -> tuple[torch.Tensor, list[str]]:
    """Per-Gaussian index into the object's colour names (primary 0, secondary 1), checking every
    Gaussian has exactly one of those palette colours."""
    names = [obj.color_name] + ([obj.secondary_color_name] if obj.secondary_color_name else [])
    palette = torch.tensor([PALETTE[n] for n in names])
    dist = (obj.cloud.rgb[:, None, :] - palette[None]).abs().amax(-1)  # [N, colours]
    assert bool((dist.amin(1) < 1e-5).all()), "a Gaussian has a colour outside the recorded ones"
    return dist.argmin(1), names


def _runs_along(obj, groups: torch.Tensor) -> int:
    """Number of constant-colour runs when Gaussians are sorted along the pattern axis."""
    order = torch.argsort(obj.cloud.means.double() @ obj.pattern_axis.double())
    seq = groups[order]
    return int((seq[1:] != seq[:-1]).sum()) + 1


def _canonical(obj) -> torch.Tensor:
    """Means rotated back into the canonical pose (still centred and scaled)."""
    return obj.cloud.means @ obj.rotation  # world = canonical @ R^T


# ---------------------------------------------------------------------------- every class
@pytest.mark.parametrize("shape", SHAPE_CLASSES)
def test_every_class_generates_a_normalised_labelled_cloud(shape):
    obj = make_object(shape, seed=5, num_gaussians=1024)
    cloud = obj.cloud
    assert cloud.num_gaussians == 1024
    assert obj.label == shape and obj.label_index == SHAPE_CLASSES.index(shape)
    assert cloud.source == f"synthetic:{shape}:5"
    assert cloud.means.norm(dim=-1).max().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(cloud.means.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(cloud.opacity, torch.full((1024,), 0.95))
    scales = cloud.scales
    torch.testing.assert_close(scales[:, 2], 0.1 * scales[:, 0])  # flat disks, thin along the normal
    rot = obj.rotation.double()
    torch.testing.assert_close(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.det(rot).item() == pytest.approx(1.0, abs=1e-6)


def test_at_least_twelve_classes_and_nouns():
    assert len(SHAPE_CLASSES) >= 12
    assert len(set(SHAPE_CLASSES)) == len(SHAPE_CLASSES)
    assert set(SHAPE_NOUNS) == set(SHAPE_CLASSES) == set(SHAPE_BUILDERS)  # every class has its shape


def test_the_shipped_synthetic_label_set_is_the_sets_nouns_in_label_order():
    from clip_gs.teachers import synthetic_label_set

    assert synthetic_label_set() == [SHAPE_NOUNS[c] for c in SHAPE_CLASSES]


# ---------------------------------------------------------------------------- determinism
def test_same_seed_is_bitwise_identical_and_seeds_differ():
    a, b = make_object("torus", 11), make_object("torus", 11)
    for name in FIELDS:
        assert torch.equal(getattr(a.cloud, name), getattr(b.cloud, name)), name
    assert (a.caption, a.color_name, a.pattern, a.params) == (b.caption, b.color_name, b.pattern, b.params)
    assert torch.equal(a.rotation, b.rotation)
    c = make_object("torus", 12)
    assert not torch.equal(a.cloud.means, c.cloud.means)
    assert not torch.equal(a.rotation, c.rotation)


def test_fixing_colour_or_pattern_keeps_the_other_draws():
    free = make_object("cylinder", 3, pattern="striped")
    fixed = make_object("cylinder", 3, pattern="striped", color="green")
    assert fixed.color_name == "green"
    assert torch.equal(free.rotation, fixed.rotation)
    assert torch.equal(free.cloud.means, fixed.cloud.means)
    assert free.params == fixed.params


# ---------------------------------------------------------------------------- captions
def test_caption_templates():
    assert make_caption("torus", "blue", "striped", "white") == "a blue torus with white stripes"
    assert make_caption("cube", "orange", "solid", None) == "an orange cube"
    assert make_caption("l_shape", "red", "dotted", "black") == "a red L-shaped block with black dots"
    assert make_caption("star_prism", "green", "two_tone", "yellow") == "a two-tone green and yellow star prism"


def test_captions_match_recorded_colour_pattern_and_class():
    seen_patterns = set()
    for i in range(40):
        shape = SHAPE_CLASSES[i % len(SHAPE_CLASSES)]
        obj = make_object(shape, i, num_gaussians=256)
        seen_patterns.add(obj.pattern)
        assert obj.caption == make_caption(shape, obj.color_name, obj.pattern, obj.secondary_color_name)
        noun = SHAPE_NOUNS[shape]
        assert obj.captions == (obj.caption, make_caption(shape, obj.color_name, "solid", None),
                                f"{'an' if noun[0] in 'aeiouL' else 'a'} {noun}")  # fmt: skip
        assert obj.caption.endswith(SHAPE_NOUNS[shape]) or f"{SHAPE_NOUNS[shape]} with" in obj.caption
        assert obj.color_name in obj.caption.split()
        assert (obj.secondary_color_name is None) == (obj.pattern == "solid")
        if obj.secondary_color_name:
            assert obj.secondary_color_name != obj.color_name
            assert obj.secondary_color_name in obj.caption.split()
        word = {"solid": None, "striped": "stripes", "dotted": "dots", "two_tone": "two-tone"}[obj.pattern]
        if word:
            assert word in obj.caption
    assert seen_patterns == set(PATTERNS)


# ---------------------------------------------------------------------------- patterns
@pytest.mark.parametrize("shape", SHAPE_CLASSES)
def test_solid_has_one_colour(shape):
    obj = make_object(shape, 1, num_gaussians=512, color="purple", pattern="solid")
    torch.testing.assert_close(obj.cloud.rgb, torch.tensor(PALETTE["purple"]).expand(512, 3), atol=1e-5, rtol=0)
    assert obj.pattern_axis is None


@pytest.mark.parametrize("shape", SHAPE_CLASSES)
def test_stripes_alternate_along_the_pattern_axis(shape):
    obj = make_object(shape, 2, num_gaussians=2048, pattern="striped")
    groups, _ = _colour_groups(obj)
    assert set(groups.tolist()) == {0, 1}
    runs = _runs_along(obj, groups)
    # bands are cut along the axis, so sorting by it gives one run per populated band
    assert 3 <= runs <= obj.params["stripes"]
    if shape in ("sphere", "cube", "cylinder"):
        assert runs == obj.params["stripes"]


def test_two_tone_is_split_by_a_plane():
    obj = make_object("capsule", 4, pattern="two_tone")
    groups, _ = _colour_groups(obj)
    assert _runs_along(obj, groups) == 2
    assert 0.2 < groups.float().mean().item() < 0.8


def test_dots_cover_part_of_the_surface_in_patches():
    obj = make_object("sphere", 6, num_gaussians=4096, pattern="dotted")
    groups, _ = _colour_groups(obj)
    share = groups.float().mean().item()
    assert 0.03 < share < 0.6
    # dot Gaussians are close to other dot Gaussians: patches, not salt-and-pepper noise
    dots = obj.cloud.means[groups == 1]
    nearest_dot = torch.cdist(dots, dots).fill_diagonal_(float("inf")).amin(1)
    neighbours = torch.cdist(dots, obj.cloud.means).topk(9, largest=False).indices[:, 1:]
    same = (groups[neighbours] == 1).float().mean().item()
    assert same > 0.7 and nearest_dot.median() < 0.1


# ---------------------------------------------------------------------------- geometry per class
def test_sphere_points_are_equidistant_and_disks_face_outwards():
    obj = make_object("sphere", 0, num_gaussians=2048)
    radius = obj.cloud.means.norm(dim=-1)
    assert radius.min().item() > 0.95 and radius.std().item() < 0.01
    normal_axis = obj.cloud.rotation_matrices[:, :, 2]
    radial = obj.cloud.means / radius[:, None]
    assert (normal_axis * radial).sum(-1).abs().min().item() > 0.95  # thin axis along the normal


def test_torus_has_a_hole_around_its_axis():
    obj = make_object("torus", 0, num_gaussians=2048)
    p = _canonical(obj)
    radial = p[:, :2].norm(dim=-1)
    ratio = (1 - obj.params["minor_radius"]) / (1 + obj.params["minor_radius"])
    assert radial.min().item() / radial.max().item() > ratio - 0.05
    assert int((p.norm(dim=-1) < 0.2).sum()) == 0  # nothing near the centre
    assert p[:, 2].abs().max().item() < 0.5


def test_cube_points_lie_on_its_faces():
    obj = make_object("cube", 9, num_gaussians=2048)
    p = _canonical(obj).double()
    lo, hi = p.amin(0), p.amax(0)
    to_face = torch.minimum((p - lo).abs(), (p - hi).abs()).amin(1)
    assert to_face.max().item() < 1e-4
    extents = (hi - lo) / (hi - lo).max()
    assert extents.min().item() > 0.85 / 1.15 - 1e-3


def test_cylinder_points_lie_on_side_or_caps():
    obj = make_object("cylinder", 3, num_gaussians=2048)
    p = _canonical(obj).double()
    p = p - (p.amax(0) + p.amin(0)) / 2
    r = p[:, :2].norm(dim=-1)
    on_side = (r - r.max()).abs() < 5e-3 * r.max()  # a 48-gon: facets sag by 1 - cos(pi / 48) = 0.2 %
    on_cap = (p[:, 2].abs() - p[:, 2].abs().max()).abs() < 1e-5
    assert bool((on_side | on_cap).all())
    assert on_side.any() and on_cap.any()


def test_canonical_pose_is_kept_and_other_poses_change_only_the_rotation():
    obj = make_object("cone", 0, pose="canonical")
    assert torch.equal(obj.rotation, torch.eye(3))
    for pose in ("random", "upright"):
        posed = make_object("cone", 0, pose=pose)
        torch.testing.assert_close(_canonical(posed), obj.cloud.means, atol=1e-5, rtol=0)
        torch.testing.assert_close(posed.cloud.sh, obj.cloud.sh)
        assert (posed.caption, posed.params) == (obj.caption, obj.params)


def test_upright_pose_stands_the_axis_on_plus_y_with_uniform_turns():
    """The shape's axis (canonical z) maps to +Y; the turn about +Y covers the circle evenly."""
    angles = []
    for seed in range(400):
        rotation = make_object("cone", seed, num_gaussians=64, pose="upright").rotation.double()
        torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
        assert torch.linalg.det(rotation).item() == pytest.approx(1.0, abs=1e-6)
        up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        torch.testing.assert_close(rotation[:, 2], up, atol=1e-6, rtol=0)
        x_axis = rotation[:, 0]  # canonical x, turned in the horizontal plane
        assert abs(x_axis[1].item()) < 1e-6
        angles.append(torch.atan2(x_axis[2], x_axis[0]).item())
    counts = torch.histc(torch.tensor(angles), bins=8, min=-torch.pi, max=torch.pi)
    assert counts.min().item() > 30 and counts.max().item() < 70  # 50 expected per bin
    random = make_object("cone", 0, num_gaussians=64).rotation.double()
    assert abs(random[1, 2].item()) < 0.999  # the random pose does not stand the axis up


# ---------------------------------------------------------------------------- errors
def test_unknown_class_lists_the_classes():
    with pytest.raises(ConfigError, match="unknown synthetic shape class 'dodecahedron'") as info:
        make_object("dodecahedron", 0)
    for name in SHAPE_CLASSES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="torus"):
        SyntheticGaussianDataset(4, classes=["torus", "blob"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"color": "mauve"}, "unknown colour"),
        ({"pattern": "plaid"}, "unknown pattern"),
        ({"pose": "lying"}, "unknown pose .lying.; choose one of random, upright, canonical"),
        ({"num_gaussians": 0}, "num_gaussians"),
    ],
)
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        make_object("sphere", 0, **kwargs)


# ---------------------------------------------------------------------------- dataset
def test_dataset_is_balanced_deterministic_and_order_independent():
    ds = SyntheticGaussianDataset(2 * len(SHAPE_CLASSES), num_gaussians=128, seed=7)
    labels = [ds[i].label for i in range(len(ds))]
    assert sorted(labels) == sorted(list(SHAPE_CLASSES) * 2)
    again = SyntheticGaussianDataset(2 * len(SHAPE_CLASSES), num_gaussians=128, seed=7)
    for i in (5, 0, 17):  # any order
        assert torch.equal(ds[i].cloud.means, again[i].cloud.means)
        assert ds[i].caption == again[i].caption
    assert ds[3].seed == object_seed(7, 3)
    other = SyntheticGaussianDataset(2 * len(SHAPE_CLASSES), num_gaussians=128, seed=8)
    assert not torch.equal(ds[0].cloud.means, other[0].cloud.means)
    assert torch.equal(ds[-1].cloud.means, ds[len(ds) - 1].cloud.means)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_dataset_class_subset_keeps_global_label_indices():
    ds = SyntheticGaussianDataset(4, num_gaussians=64, classes=["mug", "helix"], pattern="solid")
    items = [ds[i] for i in range(4)]
    assert [o.label for o in items] == ["mug", "helix", "mug", "helix"]
    assert [o.label_index for o in items] == [SHAPE_CLASSES.index(n) for n in ("mug", "helix", "mug", "helix")]
    assert all(o.pattern == "solid" for o in items)


# ---------------------------------------------------------------------------- rendered silhouettes
@pytest.mark.parametrize(("shape", "hole"), [("torus", True), ("ring", True), ("sphere", False), ("cube", False)])
def test_rendered_silhouette_from_the_axis(shape, hole):
    from clip_gs import render

    obj = make_object(shape, 0, num_gaussians=2048, pose="canonical", pattern="solid")
    cameras = render.orbit_cameras(1, width=48, height=48, elevation_deg=89.0, up="+z")  # looks down z
    alpha = render.render_cloud(obj.cloud, cameras).alpha[0]
    centre = alpha[20:28, 20:28].mean().item()
    assert alpha.amax().item() > 0.9  # the object is in view
    assert alpha[:3, :3].amax().item() < 0.05  # corners are background
    if hole:
        assert centre < 0.05, f"{shape}: centre alpha {centre:.3f}, expected a hole"
    else:
        assert centre > 0.95, f"{shape}: centre alpha {centre:.3f}, expected a filled silhouette"


def test_rendered_classes_differ_in_silhouette_area():
    from clip_gs import render

    cameras = render.orbit_cameras(1, width=48, height=48, elevation_deg=89.0, up="+z")
    coverage = {
        shape: render.render_cloud(make_object(shape, 0, pose="canonical").cloud, cameras).alpha[0].mean().item()
        for shape in ("sphere", "torus", "star_prism", "helix")
    }
    # a sphere fills its disk; a torus misses its hole; a star misses the gaps between points
    assert coverage["sphere"] > coverage["torus"] + 0.1
    assert coverage["sphere"] > coverage["star_prism"] + 0.1
    assert np.isfinite(list(coverage.values())).all()


def test_caption_variants_by_hand():
    from clip_gs.data.synthetic import make_captions

    assert make_captions("torus", "blue", "striped", "white") == (
        "a blue torus with white stripes",
        "a blue torus",
        "a torus",
    )
    assert make_captions("l_shape", "orange", "two_tone", "red") == (
        "a two-tone orange and red L-shaped block", "an orange L-shaped block", "an L-shaped block")  # fmt: skip
