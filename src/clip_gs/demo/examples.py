"""The demo's one-click examples: a few small 3DGS files and a mesh, written once into the cache on
first start (nothing binary ships in the package), so a visitor sees a result before uploading.

:data:`EXAMPLES` lists them: synthetic objects (:func:`~clip_gs.data.synthetic.make_object`,
upright, one solid colour) saved as a 3DGS ``.ply`` and ``.splat``, and a coloured mesh made with
``trimesh`` (a ``.glb`` cone with vertex colours, turned from trimesh's +Z up to the glTF +Y up).
Each file is a deterministic function of its entry and the seed; ``examples.json`` records the
recipe, so a folder made with another one is rewritten and an unchanged one is kept.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

EXAMPLES_FILE = "examples.json"
"""The recipe of a built examples folder (``{"seed", "gaussians", "examples": [...]}``)."""

EXAMPLE_GAUSSIANS = 2048
"""Gaussians per synthetic example (a ``.ply`` of about 140 KB, a ``.splat`` of 64 KB)."""


@dataclass(frozen=True)
class ExampleItem:
    """One example: its file name, what it is (``shape`` of the synthetic set, or ``"cone"`` for the
    mesh), its ``color`` and how the page labels it."""

    file: str
    shape: str
    color: str
    label: str


EXAMPLES: tuple[ExampleItem, ...] = (
    ExampleItem("red-torus.ply", "torus", "red", "red torus (3DGS .ply)"),
    ExampleItem("blue-mug.splat", "mug", "blue", "blue mug (3DGS .splat)"),
    ExampleItem("green-star-prism.ply", "star_prism", "green", "green star prism (3DGS .ply)"),
    ExampleItem("orange-cone.glb", "cone", "orange", "orange cone (mesh .glb)"),
)
"""The examples, in the order the page shows them."""


def _seed(seed: int, file: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{file}".encode()).digest()[:4], "little")


def _write_mesh(item: ExampleItem, path: Path) -> None:
    import numpy as np
    import trimesh

    from clip_gs.data.synthetic import PALETTE

    mesh = trimesh.creation.cone(radius=0.5, height=1.0, sections=48)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))  # +Z up -> +Y up
    rgb = np.array(PALETTE[item.color]) * 255
    mesh.visual.vertex_colors = np.tile(np.append(rgb, 255).astype(np.uint8), (len(mesh.vertices), 1))
    mesh.export(path)


def build_examples(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write :data:`EXAMPLES` into ``folder`` (kept when already there with the same recipe); returns
    their paths, in order."""
    from clip_gs.data.synthetic import make_object
    from clip_gs.gaussians.assets import save_asset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"seed": seed, "gaussians": EXAMPLE_GAUSSIANS, "examples": [asdict(e) for e in EXAMPLES]}
    listing = folder / EXAMPLES_FILE
    try:
        same = json.loads(listing.read_text(encoding="utf-8")) == record
    except (OSError, ValueError):
        same = False
    paths = []
    for item in EXAMPLES:
        path = folder / item.file
        paths.append(path)
        if same and path.is_file():
            continue
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the writer picks the format by the suffix
        if path.suffix == ".glb":
            _write_mesh(item, tmp)
        else:
            obj = make_object(item.shape, seed=_seed(seed, item.file), num_gaussians=EXAMPLE_GAUSSIANS,
                              color=item.color, pattern="solid", pose="upright")  # fmt: skip
            save_asset(obj.cloud, tmp)  # upright: they stand +y
        tmp.replace(path)
    listing.write_text(json.dumps(record, indent=1), encoding="utf-8")
    return paths


__all__ = ["EXAMPLES", "EXAMPLES_FILE", "EXAMPLE_GAUSSIANS", "ExampleItem", "build_examples"]
