"""The package imports without a GPU, lazily, and every public name resolves."""

from __future__ import annotations

import os
import subprocess
import sys

import clip_gs


def test_import_needs_no_gpu_and_loads_heavy_parts_lazily():
    code = (
        "import sys, clip_gs; "
        "heavy = [m for m in ('timm', 'trimesh', 'gsplat', 'lightning', 'clip_gs.render') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == ""


def test_every_public_name_resolves():
    for name in clip_gs.__all__:
        assert getattr(clip_gs, name) is not None, name
    assert clip_gs.CLIPGS.__module__ == "clip_gs.model.clipgs"
    assert issubclass(clip_gs.WeightsUnavailableError, clip_gs.ClipGSError)
    assert len(clip_gs.__all__) <= 15, "the top level is what a user types; reach the rest through its package"


LAYERS = {
    "errors": 0, "strict_json": 1, "state_dicts": 1, "gaussians": 2, "__init__": 3, "storage": 3, "ops": 3, "render": 4, "hub": 4,
    "teachers": 5, "fitting": 5, "model": 6, "data": 7, "cli_flags": 7, "evaluation": 8, "index": 8,
    "offline_teacher": 8, "lightning": 9, "usage": 9, "demo": 10, "cli": 11, "__main__": 12,
}  # fmt: skip
"""The package's layers, bottom up (docs/architecture.md): a module may import its own package and lower layers only."""


def test_imports_run_downward_only():
    """Every import of a ``clip_gs`` module, lazy ones inside functions included, goes to the importer's own
    package or to a lower layer; siblings on one layer do not import each other."""
    import ast
    from pathlib import Path

    root = Path(clip_gs.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        part = path.relative_to(root).parts[0].removesuffix(".py")
        assert part in LAYERS, f"{part}: a new top-level module or package; give it a layer in LAYERS"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                pieces = name.split(".")
                if pieces[0] != "clip_gs":
                    continue
                target = pieces[1] if len(pieces) > 1 else "__init__"
                if target != part and LAYERS[target] >= LAYERS[part]:
                    upward.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    assert not upward, "imports that do not run downward:\n" + "\n".join(upward)
