"""The resident Blender renderer: one process renders object after object, each render independent
of what came before, and a preparation run starts Blender once per worker."""

from __future__ import annotations

import pytest
import torch

from clip_gs.errors import MeshError, RenderError
from clip_gs.render import blender
from clip_gs.render.blender import BlenderRenderer, blender_available
from clip_gs.render.cameras import sphere_cameras

requires_blender = pytest.mark.skipif(not blender_available(), reason="Blender's Python module (bpy) is not installed")


def _meshes(folder):
    import trimesh

    shapes = {"box": trimesh.creation.box(), "ball": trimesh.creation.icosphere(subdivisions=2),
              "can": trimesh.creation.cylinder(radius=0.4, height=1.2)}  # fmt: skip
    paths = {}
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, shape) in enumerate(shapes.items()):
        shape.visual.vertex_colors = [200 - 60 * index, 60 + 60 * index, 40, 255]
        paths[name] = folder / f"{name}.glb"
        shape.export(paths[name])
    return paths


@requires_blender
def test_one_process_renders_object_after_object_as_fresh_ones_would(tmp_path):
    paths = _meshes(tmp_path)
    cams = sphere_cameras(2, width=24, height=24)
    world = torch.eye(4, dtype=torch.float64) * 0.6
    world[3, 3] = 1.0
    faceless = tmp_path / "points.obj"
    faceless.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with BlenderRenderer() as renderer:
        first = renderer.render(paths["box"], cams, world, samples=4, denoise=False)
        ball = renderer.render(paths["ball"], cams, world, samples=4, denoise=False)
        with pytest.raises(MeshError, match="no faces"):  # a bad object does not end the process
            renderer.render(faceless, cams, world, samples=4, denoise=False)
        again = renderer.render(paths["box"], cams, world, samples=4, denoise=False)
        assert renderer.launches == 1
        assert renderer.last["views"] == 2 and renderer.last["device"] == "CPU"
    assert torch.equal(first, again)  # nothing of the ball or the failed import stays behind
    assert not torch.equal(first, ball)
    with BlenderRenderer() as fresh:  # and equal to what a new process renders
        assert torch.equal(fresh.render(paths["box"], cams, world, samples=4, denoise=False), first)


@requires_blender
def test_a_blender_that_died_or_hung_is_replaced_for_the_next_object(tmp_path):
    paths = _meshes(tmp_path)
    cams = sphere_cameras(1, width=16, height=16)
    with BlenderRenderer() as renderer:
        renderer.start()
        renderer.process.kill()  # died between objects: the next object starts a new process
        renderer.process.wait()
        assert renderer.render(paths["ball"], cams, samples=2, denoise=False).shape == (1, 16, 16, 4)
        assert renderer.launches == 2
        with pytest.raises(RenderError, match="did not answer"):  # hung: stopped, this object fails
            renderer.render(paths["box"], sphere_cameras(8, width=64, height=64), samples=64, timeout=0.05)
        assert renderer.process is None
        assert renderer.render(paths["ball"], cams, samples=2, denoise=False).shape == (1, 16, 16, 4)
        assert renderer.launches == 3


@requires_blender
@pytest.mark.slow
def test_fitted_preparation_starts_blender_once_per_worker(tmp_path, monkeypatch):
    from clip_gs.data.prepare import prepare_dataset
    from clip_gs.data.prepare_settings import PrepareSettings
    from clip_gs.teachers import load_teacher

    paths = _meshes(tmp_path / "meshes")
    monkeypatch.setattr(blender, "_DEFAULT", None)  # this test's own process-wide renderer
    settings = PrepareSettings(gaussians="fitted", fit_iterations=10, fit_views=3, fit_size=24, mesh_gaussians=300,
                               max_gaussians=300, val_fraction=0.0)  # fmt: skip
    summary = prepare_dataset(str(tmp_path / "meshes"), tmp_path / "out", teacher=load_teacher("synthetic-clip"),
                              settings=settings, progress=False)  # fmt: skip
    assert summary.succeeded == len(paths) == 3
    assert blender.default_renderer().launches == 1
