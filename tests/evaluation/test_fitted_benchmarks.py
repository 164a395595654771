"""Benchmarks on fitted 3DGS (``eval --gaussians fitted``), cached per file, settings and seed, and
Uni3D's ModelNet40 conventions (z-up files brought y-up, colourless meshes in grey 0.4)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import trimesh

from clip_gs.evaluation.benchmarks import MeshConversion, discover, load_item
from clip_gs.gaussians.frames import MODEL_FRAME, to_frame
from clip_gs.render.blender import blender_available


def modelnet(root: Path) -> Path:
    """A ModelNet40-layout folder: a tall box (z-up, as ModelNet's files stand) per class and split."""
    for label in ("chair", "lamp"):
        for split, count in (("train", 1), ("test", 1)):
            (root / label / split).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                box = trimesh.creation.box(extents=(0.3, 0.5, 2.0) if label == "lamp" else (1.0, 0.8, 0.6))
                box.export(root / label / split / f"{label}_{split}_{i:04d}.off")
    return root


@pytest.mark.filterwarnings("ignore::clip_gs.gaussians.mesh.MeshColorWarning")
def test_modelnet_surface_samples_follow_uni3d_conventions(tmp_path):
    root = modelnet(tmp_path / "ModelNet40")
    lamp = next(it for it in discover("modelnet40", root) if it.label == "lamp")
    cloud = load_item(lamp, 2000, 0, tmp_path / "cache", benchmark="modelnet40")
    torch.testing.assert_close(cloud.rgb, torch.full_like(cloud.rgb, 0.4), atol=1e-5, rtol=0)  # grey 0.4
    extent = cloud.means.amax(0) - cloud.means.amin(0)
    assert int(extent.argmax()) == 1  # the lamp's long z axis is the model frame's up (+y)
    plain = load_item(lamp, 2000, 0, tmp_path / "cache")  # no benchmark conventions: a mesh is +y, grey 0.5
    assert int((plain.means.amax(0) - plain.means.amin(0)).argmax()) == 2
    torch.testing.assert_close(to_frame(plain, "+z", MODEL_FRAME).means, cloud.means, atol=1e-5, rtol=0)


@pytest.mark.skipif(not blender_available(), reason="Blender's Python module (bpy) is not installed")
@pytest.mark.slow
def test_fitted_benchmark_objects_are_fitted_once_and_cached(tmp_path, monkeypatch):
    import clip_gs.render.blender as blender

    calls = []
    original = blender.render_mesh
    monkeypatch.setattr(blender, "render_mesh", lambda mesh, *a, **k: calls.append(Path(mesh).name) or original(mesh, *a, **k))
    root = modelnet(tmp_path / "ModelNet40")
    conversion = MeshConversion("fitted", fit_iterations=15, fit_views=4, fit_size=32)
    items = discover("modelnet40", root)
    clouds = [load_item(it, 600, 0, tmp_path / "cache", conversion=conversion, benchmark="modelnet40") for it in items]
    assert sorted(calls) == sorted(it.path.name for it in items)  # one Blender pass per object
    for cloud in clouds:
        assert 0 < cloud.num_gaussians <= 600
        assert float(cloud.means.norm(dim=-1).max()) == pytest.approx(1.0, abs=1e-4)  # normalised like training data
    again = [load_item(it, 600, 0, tmp_path / "cache", conversion=conversion, benchmark="modelnet40") for it in items]
    assert len(calls) == len(items)  # read from the cache: no Blender, no fit
    assert all(torch.equal(a.means, b.means) for a, b in zip(clouds, again))
    other = MeshConversion("fitted", fit_iterations=16, fit_views=4, fit_size=32)
    load_item(items[0], 600, 0, tmp_path / "cache", conversion=other, benchmark="modelnet40")
    assert len(calls) == len(items) + 1  # other settings: fitted again
