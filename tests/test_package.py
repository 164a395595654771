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


def _module_imports(root):
    """``{module: [(line, imported module, imported name or None), ...]}`` for every module under
    ``root`` (the ``clip_gs`` folder), lazy imports inside functions included. Relative imports are
    resolved; ``from clip_gs.a import b`` where ``b`` is a submodule names the submodule ``clip_gs.a.b``."""
    import ast

    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = ("clip_gs", *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (path, is_package)
    found = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges += [(node.lineno, alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        edges.append((node.lineno, sub, None))
                    else:
                        edges.append((node.lineno, base, alias.name))
        found[name] = [e for e in edges if e[1] == "clip_gs" or e[1].startswith("clip_gs.")]
    return found


def private_imports(root) -> list[str]:
    """Imports of a private (``_underscore``) name of another ``clip_gs`` module, and uses of one as an
    attribute (``clip_gs.a._x`` after ``import clip_gs.a``)."""
    import ast

    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            chain, inner = [], node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if chain and isinstance(inner, ast.Name) and inner.id == "clip_gs" and isinstance(node.ctx, ast.Load):
                if any(p.startswith("_") and not p.startswith("__") for p in chain):
                    bad.append(f"{path.relative_to(root)}:{node.lineno} uses clip_gs.{'.'.join(reversed(chain))}")
    for module, edges in _module_imports(root).items():
        for line, target, name in edges:
            pieces = target.split(".") + ([name] if name else [])
            private = [p for p in pieces if p.startswith("_") and not p.startswith("__")]
            if private and target != module:
                shown = f"{target} import {name}" if name else target
                bad.append(f"{module}:{line} imports {shown}")
    return bad


def test_no_module_imports_another_modules_private_names():
    """A ``_name`` is its module's own: no other ``clip_gs`` module imports it (``from clip_gs.a import _x``,
    ``import clip_gs._a``), lazy imports inside functions included."""
    from pathlib import Path

    bad = private_imports(Path(clip_gs.__file__).parent)
    assert not bad, "imports of private names:\n" + "\n".join(bad)


def import_cycles(root) -> list[list[str]]:
    """The import cycles among the members of each package (Tarjan's strongly connected components).

    A package's members are its modules and its subpackages, a subpackage standing for everything in
    it: ``gaussians.io`` importing ``gaussians.formats.ply`` and ``gaussians.formats.ply`` importing
    ``gaussians.io`` is the cycle ``gaussians.formats <-> gaussians.io``. Every import counts, lazy ones
    inside functions included. A package's ``__init__`` is no member of its own package: it gathers its
    members' names for users, so its imports of them, and their imports of names from it, are no edge
    (each member would otherwise form a cycle with it); inside its parent package it belongs to its
    subpackage. Imports that leave a package are the layer test's business
    (:func:`test_imports_run_downward_only`)."""
    imports = _module_imports(root)
    packages = {m for m in imports if (root.joinpath(*m.split(".")[1:]) / "__init__.py").exists()}

    def member(module, package):
        """The member of ``package`` that ``module`` lies in (None: outside it, or its ``__init__``)."""
        if module == package or not module.startswith(package + "."):
            return None
        return package + "." + module[len(package) + 1 :].split(".")[0]

    graph = {}
    for package in packages:
        for module, edges in imports.items():
            source = member(module, package)
            if source is None:
                continue
            for _, target, _ in edges:
                destination = member(target, package)
                if destination is not None and destination != source:
                    graph.setdefault(source, set()).add(destination)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle_inside_a_package():
    """The modules of one package import each other in one direction only (see :func:`import_cycles`)."""
    from pathlib import Path

    cycles = import_cycles(Path(clip_gs.__file__).parent)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
