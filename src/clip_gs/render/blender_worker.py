"""The Blender side of :func:`clip_gs.render.blender.render_mesh`: run as
``python -m clip_gs.render.blender_worker JOB.json`` in a child process.

It imports only ``bpy`` (Blender as a Python module, ``pip install clip-gs[render]``), the standard
library and nothing of clip_gs, so Blender's bundled libraries never meet PyTorch's in one process.
The job (JSON, written by the parent) names the mesh, a 4 x 4 world transform, the cameras as
Blender camera-to-world matrices with lens and shift, the image size and the Cycles settings; the
worker writes ``view_000.png``... (RGBA, 8 bit, straight alpha) into the job's folder and
``done.json`` last. Any failure prints one line ``clip-gs-blender-error: <message>`` and exits 3.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fail(message: str) -> None:
    print(f"clip-gs-blender-error: {message}", flush=True)
    sys.exit(3)


def _import(bpy, path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        bpy.ops.import_scene.gltf(filepath=str(path))
    elif suffix == ".obj":
        # Keep the file's own axes (the importer's default turns +Y up into Blender's +Z up).
        bpy.ops.wm.obj_import(filepath=str(path), forward_axis="Y", up_axis="Z")
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(path), forward_axis="Y", up_axis="Z")
    elif suffix == ".stl":
        bpy.ops.wm.stl_import(filepath=str(path), forward_axis="Y", up_axis="Z")
    else:
        _fail(f"{path}: Blender cannot import {suffix or 'files without a suffix'} (glb, gltf, obj, ply, stl)")


def _use_vertex_colors(bpy) -> None:
    """Materials of meshes that carry a colour attribute but whose shader ignores it (OBJ/PLY
    importers, or no material at all) get a Principled BSDF fed by that attribute."""
    for obj in bpy.data.objects:
        if obj.type != "MESH" or not obj.data.color_attributes:
            continue
        name = obj.data.color_attributes.active_color_name or obj.data.color_attributes[0].name
        materials = [slot.material for slot in obj.material_slots if slot.material] or [None]
        for index, material in enumerate(materials):
            if material is not None and material.use_nodes:
                nodes = material.node_tree.nodes
                if any(node.type in ("VERTEX_COLOR", "ATTRIBUTE") for node in nodes):
                    continue  # the importer already wired it (glTF COLOR_0)
                if any(node.type == "TEX_IMAGE" for node in nodes):
                    continue  # a texture gives the colour
            if material is None:
                material = bpy.data.materials.new(f"{obj.name}-vertex-colours")
                obj.data.materials.append(material)
            material.use_nodes = True
            nodes, links = material.node_tree.nodes, material.node_tree.links
            bsdf = next((node for node in nodes if node.type == "BSDF_PRINCIPLED"), None)
            if bsdf is None:
                bsdf = nodes.new("ShaderNodeBsdfPrincipled")
                output = next(node for node in nodes if node.type == "OUTPUT_MATERIAL")
                links.new(bsdf.outputs["BSDF"], output.inputs["Surface"])
            attribute = nodes.new("ShaderNodeVertexColor")
            attribute.layer_name = name
            links.new(attribute.outputs["Color"], bsdf.inputs["Base Color"])
            if index == 0 and not obj.material_slots:
                obj.data.materials.append(material)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(job["out"])
    try:
        import bpy
        import mathutils
    except ImportError as exc:
        _fail(f"Blender's Python module is not installed (pip install clip-gs[render]): {exc}")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    mesh = Path(job["mesh"])
    try:
        _import(bpy, mesh)
    except RuntimeError as exc:
        _fail(f"{mesh}: Blender could not import it: {str(exc).strip().splitlines()[-1]}")
    meshes = [obj for obj in bpy.data.objects if obj.type == "MESH"]
    if not meshes or not any(len(obj.data.polygons) for obj in meshes):
        _fail(f"{mesh}: no faces to render")
    _use_vertex_colors(bpy)

    # Put the file's own coordinates (those trimesh reads) through the job's transform. The glTF
    # importer turns glTF's +Y up into +Z up: undo that first.
    axes = mathutils.Matrix.Rotation(-1.5707963267948966, 4, "X") if mesh.suffix.lower() in (".glb", ".gltf") else None
    world = mathutils.Matrix(job["world"])
    root = bpy.data.objects.new("clip-gs-root", None)
    bpy.context.scene.collection.objects.link(root)
    for obj in bpy.data.objects:
        if obj.parent is None and obj is not root:
            obj.parent = root
    root.matrix_world = world @ axes if axes is not None else world

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = int(job["samples"])
    scene.cycles.use_denoising = bool(job["denoise"])
    scene.cycles.seed = int(job["seed"])
    scene.cycles.max_bounces = 4
    scene.render.resolution_x, scene.render.resolution_y = int(job["width"]), int(job["height"])
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.threads_mode = "FIXED"
    scene.render.threads = int(job["threads"])
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"  # colours as stored (sRGB), no filmic curve
    scene.view_settings.look = "None"
    environment = bpy.data.worlds.new("clip-gs-light")
    environment.use_nodes = True
    background = environment.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (*job["light"], 1.0)
    background.inputs["Strength"].default_value = 1.0
    scene.world = environment

    data = bpy.data.cameras.new("clip-gs-camera")
    camera = bpy.data.objects.new("clip-gs-camera", data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    data.sensor_fit = "HORIZONTAL" if job["width"] >= job["height"] else "VERTICAL"
    data.sensor_width = data.sensor_height = 36.0
    for index, view in enumerate(job["cameras"]):
        camera.matrix_world = mathutils.Matrix(view["c2w"])
        data.lens = view["lens"]
        data.shift_x, data.shift_y = view["shift"]
        data.clip_start, data.clip_end = view["clip"]
        scene.render.filepath = str(out / f"view_{index:03d}.png")
        bpy.ops.render.render(write_still=True)
    (out / "done.json").write_text(json.dumps({"views": len(job["cameras"])}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        _fail("usage: python -m clip_gs.render.blender_worker JOB.json")
    main(sys.argv[1])
