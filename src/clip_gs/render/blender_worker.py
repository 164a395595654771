"""The Blender side of :class:`clip_gs.render.blender.BlenderRenderer`: a resident child process,
``python -m clip_gs.render.blender_worker``, that renders object after object.

It imports only ``bpy`` (Blender as a Python module, ``pip install clip-gs[render]``), the standard
library and nothing of clip_gs, so Blender's bundled libraries never meet PyTorch's in one process.

Protocol, one JSON object per line:

- The parent writes a job on stdin: the mesh, a 4 x 4 world transform, the cameras as Blender
  camera-to-world matrices with lens and shift, the image size, the Cycles settings and ``device``
  (``"cpu"`` or ``"gpu"``), and the folder ``out``.
- The worker writes ``view_000.png``... (RGBA, 8 bit, straight alpha) into ``out`` and answers with
  one line ``clip-gs-blender-done: {...}`` (views, the Cycles device used, import and render
  seconds), or ``clip-gs-blender-error: {"kind": "mesh" | "render", "message": ...}`` for a job it
  cannot render; then it waits for the next job (after a ``render`` fault it exits instead, and the
  parent starts a fresh process for the next job). End of input ends the process. Blender's own output goes to stdout too: the parent
  reads only the lines that start with ``clip-gs-blender-``.

The scene template (render settings, the light, the camera) is built once; between jobs the
previous object, its materials and images are removed, so a render does not depend on what the
process rendered before.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DONE = "clip-gs-blender-done:"
ERROR = "clip-gs-blender-error:"
READY = "clip-gs-blender-ready:"


class JobError(Exception):
    """A job this worker cannot render (the message goes back to the parent)."""


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
        raise JobError(f"{path}: Blender cannot import {suffix or 'files without a suffix'} (glb, gltf, obj, ply, stl)")


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


class Scene:
    """The scene template: Cycles settings, a uniform environment light and one camera, kept
    between jobs; :meth:`render` swaps the object."""

    def __init__(self, bpy, mathutils) -> None:
        self.bpy, self.mathutils = bpy, mathutils
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = self.scene = bpy.context.scene
        scene.render.engine = "CYCLES"
        scene.cycles.max_bounces = 4
        scene.render.resolution_percentage = 100
        scene.render.film_transparent = True
        scene.render.threads_mode = "FIXED"
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGBA"
        scene.render.image_settings.color_depth = "8"
        scene.view_settings.view_transform = "Standard"  # colours as stored (sRGB), no filmic curve
        scene.view_settings.look = "None"
        environment = bpy.data.worlds.new("clip-gs-light")
        environment.use_nodes = True
        environment.use_fake_user = True
        self.background = environment.node_tree.nodes["Background"]
        self.background.inputs["Strength"].default_value = 1.0
        scene.world = environment
        self.camera_data = bpy.data.cameras.new("clip-gs-camera")
        self.camera_data.use_fake_user = True
        self.camera = bpy.data.objects.new("clip-gs-camera", self.camera_data)
        scene.collection.objects.link(self.camera)
        scene.camera = self.camera
        self.camera_data.sensor_width = self.camera_data.sensor_height = 36.0
        self.devices: dict[str, str] = {}

    def use_device(self, device: str) -> str:
        """Cycles on the GPU for ``device == "gpu"`` (OptiX, else CUDA, whichever this build offers),
        else the CPU; returns what is used (``"CPU"``, ``"OPTIX"``, ``"CUDA"``)."""
        if device not in self.devices:
            used = "CPU"
            if device == "gpu":
                prefs = self.bpy.context.preferences.addons["cycles"].preferences
                for kind in ("OPTIX", "CUDA"):
                    try:
                        prefs.compute_device_type = kind
                        prefs.get_devices()
                    except (TypeError, ValueError, RuntimeError):
                        continue
                    found = [d for d in prefs.devices if d.type == kind]
                    if found:
                        for d in prefs.devices:
                            d.use = d.type == kind
                        used = kind
                        break
            self.devices[device] = used
        used = self.devices[device]
        self.scene.cycles.device = "CPU" if used == "CPU" else "GPU"
        return used

    def clear(self) -> None:
        """Remove the previous object and everything only it used (meshes, materials, images)."""
        bpy = self.bpy
        for obj in list(bpy.data.objects):
            if obj is not self.camera:
                bpy.data.objects.remove(obj, do_unlink=True)
        bpy.data.orphans_purge(do_local_ids=True, do_linked_ids=True, do_recursive=True)

    def render(self, job: dict) -> dict:
        bpy, mathutils, scene = self.bpy, self.mathutils, self.scene
        self.clear()
        out = Path(job["out"])
        mesh = Path(job["mesh"])
        start = time.perf_counter()
        try:
            _import(bpy, mesh)
        except RuntimeError as exc:
            raise JobError(f"{mesh}: Blender could not import it: {str(exc).strip().splitlines()[-1]}") from exc
        meshes = [obj for obj in bpy.data.objects if obj.type == "MESH"]
        if not meshes or not any(len(obj.data.polygons) for obj in meshes):
            raise JobError(f"{mesh}: no faces to render")
        _use_vertex_colors(bpy)
        # Put the file's own coordinates (those trimesh reads) through the job's transform. The glTF
        # importer turns glTF's +Y up into +Z up: undo that first.
        axes = mathutils.Matrix.Rotation(-1.5707963267948966, 4, "X") if mesh.suffix.lower() in (".glb", ".gltf") else None
        world = mathutils.Matrix(job["world"])
        root = bpy.data.objects.new("clip-gs-root", None)
        scene.collection.objects.link(root)
        for obj in bpy.data.objects:
            if obj.parent is None and obj not in (root, self.camera):
                obj.parent = root
        root.matrix_world = world @ axes if axes is not None else world
        imported = time.perf_counter()

        device = self.use_device(job.get("device", "cpu"))
        scene.cycles.samples = int(job["samples"])
        scene.cycles.use_denoising = bool(job["denoise"])
        scene.cycles.seed = int(job["seed"])
        scene.render.resolution_x, scene.render.resolution_y = int(job["width"]), int(job["height"])
        scene.render.threads = int(job["threads"])
        self.background.inputs["Color"].default_value = (*job["light"], 1.0)
        data = self.camera_data
        data.sensor_fit = "HORIZONTAL" if job["width"] >= job["height"] else "VERTICAL"
        for index, view in enumerate(job["cameras"]):
            self.camera.matrix_world = mathutils.Matrix(view["c2w"])
            data.lens = view["lens"]
            data.shift_x, data.shift_y = view["shift"]
            data.clip_start, data.clip_end = view["clip"]
            scene.render.filepath = str(out / f"view_{index:03d}.png")
            bpy.ops.render.render(write_still=True)
        done = time.perf_counter()
        return {"views": len(job["cameras"]), "device": device, "import_s": imported - start,
                "render_s": done - imported}  # fmt: skip


def _answer(prefix: str, value) -> None:
    sys.stdout.write(f"{prefix} {json.dumps(value)}\n")
    sys.stdout.flush()


def main() -> None:
    try:
        import bpy
        import mathutils
    except ImportError as exc:
        _answer(ERROR, {"kind": "dependency",
                        "message": f"Blender's Python module is not installed (pip install clip-gs[render]): {exc}"})
        sys.exit(3)
    scene = Scene(bpy, mathutils)
    _answer(READY, {})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            _answer(DONE, scene.render(json.loads(line)))
        except JobError as exc:
            _answer(ERROR, {"kind": "mesh", "message": str(exc)})
        except Exception as exc:  # Blender's state is unknown after this: answer, then end the process
            _answer(ERROR, {"kind": "render", "message": f"{type(exc).__name__}: {exc}"})
            sys.exit(3)


if __name__ == "__main__":
    main()
