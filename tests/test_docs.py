"""The README and the documentation site: what a visitor needs first stays in the README, every page of
the site's navigation exists, and the generated references cover the package and the command."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
HOOK = DOCS / "hooks" / "reference.py"


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(items) -> list[str]:
    """Every page path named in an mkdocs ``nav`` (nested sections included)."""
    pages: list[str] = []
    for item in items:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += nav_pages(value)
        else:
            pages.append(value)
    return pages


def mkdocs_config() -> dict:
    return yaml.safe_load((REPO / "mkdocs.yml").read_text())


def test_readme_keeps_the_zero_shot_example_the_quick_start_and_the_ci_command():
    text = README.read_text()
    first_screen = "\n".join(text.splitlines()[:60])
    for line in (
        'model = clip_gs.create_model("uni3d-b-no-lvis")',
        'teacher = clip_gs.load_teacher("EVA02-E-14-plus/laion2b_s9b_b144k")',
        "text = zero_shot_weights(teacher, classes)",
        'shape = model.encode("capture.ply")',
        "clip-gs classify capture.ply --model uni3d-b-no-lvis",
    ):
        assert line in first_screen, line
    assert "clip-gs fit --config examples/configs/quickstart.yaml" in text
    assert "hf download BAAI/Uni3D modelzoo/uni3d-b-no-lvis/model.pt" in text
    assert (REPO / "examples" / "configs" / "quickstart.yaml").is_file()
    assert "## Licence" in text
    assert len(text.splitlines()) <= 250, "the README is the first screen; the guide pages hold the rest"


def test_the_ci_command_installs_the_docs_builds_the_site_strictly_and_runs_pytest():
    """`.ci/run` runs the fenced line after the marker; the site's output goes outside the repository; pytest
    runs everything (no selection) with files kept whole per worker (what the shared fixtures' grouping needs)."""
    lines = README.read_text().splitlines()
    marker = lines.index("<!-- ci: test command -->")
    assert lines[marker + 1] == "```bash"
    command = lines[marker + 2]
    assert '".[test,docs]"' in command
    assert command.split("&&")[-1].split() == ["python", "-m", "pytest", "-n", "2", "--dist", "loadfile"], command
    assert "mkdocs build --strict" in command
    words = shlex.split(command)
    site = words[words.index("--site-dir") + 1]
    assert site.startswith("$(mktemp"), site


def test_every_page_of_the_navigation_exists():
    config = mkdocs_config()
    hook = load_hook()
    generated = {hook.CLI_PAGE}
    pages = nav_pages(config["nav"])
    assert {"index.md", "getting-started.md", "architecture.md", "testing.md", "benchmarks.md"} <= set(pages)
    for page in pages:
        assert page in generated or (DOCS / page).is_file(), page
    assert config["hooks"] == ["docs/hooks/reference.py"] and HOOK.is_file()


def test_docs_images_and_relative_links_resolve():
    """Links between pages and to images name files that exist (the strict build checks anchors too)."""
    hook = load_hook()
    generated = {hook.CLI_PAGE} | {hook.page_path(parts) for parts in hook.public_modules()}
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert target in generated or (DOCS / target).is_file(), (page.name, target)
    for target in re.findall(r"\]\((docs/[^)#\s]+)", README.read_text()):
        assert (REPO / target).is_file(), target


def test_the_guide_speaks_of_the_software_not_of_its_history():
    for page in [README, *DOCS.glob("*.md")]:
        text = page.read_text()
        assert not re.search(r"issue #?\d+|/work/|\.\./shared", text), page.name


def test_the_api_reference_covers_every_public_module():
    hook = load_hook()
    modules = hook.public_modules()
    names = {".".join(parts) for parts in modules}
    assert {"clip_gs", "clip_gs.model", "clip_gs.gaussians", "clip_gs.cli"} <= names
    assert not any(part.startswith("_") for parts in modules for part in parts)
    package = REPO / "src" / "clip_gs"
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if not any(p.startswith("_") for p in parts) and (path.parent / "__init__.py").is_file():
            assert ("clip_gs", *parts) in modules, path
    paths = [hook.page_path(parts) for parts in modules]
    assert len(set(paths)) == len(paths)
    assert hook.api_page(("clip_gs", "model")) == "# `clip_gs.model`\n\n::: clip_gs.model\n"


def test_the_cli_reference_is_generated_from_the_parsers():
    from clip_gs.cli import build_parser

    page = load_hook().cli_markdown()
    assert page.startswith("# CLI reference")
    assert "usage: clip-gs" in page
    for name in load_hook().subcommands(build_parser()):
        assert f"\n### `clip-gs {name}` {{#clip-gs-{name}}}\n" in page, name
    for flag in ("--min-caption-coverage", "--zeroshot-protocol", "--label-set", "--repo-id"):
        assert flag in page, flag



def test_the_modules_and_names_the_docs_mention_exist():
    """A dotted ``clip_gs....`` name in the README or a guide page is a module, or a name defined in one
    (read from the source, nothing imported), so a moved module shows here as well as in the API reference."""
    package = REPO / "src"
    for page in [README, *DOCS.glob("*.md")]:
        for dotted in set(re.findall(r"`(clip_gs(?:\.\w+)+)", page.read_text())):
            parts = dotted.split(".")
            module = package.joinpath(*parts)
            if module.with_suffix(".py").is_file() or (module / "__init__.py").is_file():
                continue
            parent = package.joinpath(*parts[:-1])
            source = parent.with_suffix(".py") if parent.with_suffix(".py").is_file() else parent / "__init__.py"
            assert source.is_file() and re.search(rf"\b{parts[-1]}\b", source.read_text()), (page.name, dotted)
