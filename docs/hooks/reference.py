"""MkDocs hook: generates the API reference and the CLI reference at build time.

The API reference has one page per public module or package under ``src/clip_gs`` (a name with a
leading underscore is private and left out), each rendered by mkdocstrings from the code. The CLI
reference is the help text of every ``clip-gs`` subcommand, taken from the argparse parsers that
``clip_gs.cli.build_parser`` builds. Both are walked afresh on every build, so a module that is
added, moved or renamed needs no edit here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "clip_gs"
API_SECTION = "API reference"
CLI_PAGE = "cli.md"
TRAINING_COMMANDS_NOTE = (
    "`clip-gs fit`, `validate`, `test` and `predict` are LightningCLI's: `clip-gs fit --help` lists every "
    "option of the model, the data module and the trainer, and `clip-gs fit --config FILE.yaml --print_config` "
    "prints a complete, typed configuration (see [Training](training.md))."
)


def public_modules(package: Path = PACKAGE) -> list[tuple[str, ...]]:
    """Dotted paths (as tuples) of every public module and package under ``package``, sorted.

    A package is named by its folder (``("clip_gs", "model")``); ``__init__.py`` and ``__main__.py``
    and any name starting with ``_`` are left out.
    """
    found: set[tuple[str, ...]] = set()
    for path in package.rglob("*.py"):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        if not all((package.joinpath(*parts[1:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue  # a folder that is no package (data files, scripts)
        found.add(parts)
    return sorted(found)


def page_path(parts: tuple[str, ...]) -> str:
    """Docs path of a module's or package's page: ``reference/clip_gs/model/factory.md``.

    A package's page sits beside its folder (``reference/clip_gs/model.md``), so a module named
    ``index`` cannot collide with it.
    """
    return "/".join(("reference", *parts)) + ".md"


def api_nav(modules: list[tuple[str, ...]]) -> list:
    """The API reference's navigation: one section per package, its modules inside it."""

    def children(prefix: tuple[str, ...]) -> list:
        items: list = []
        for parts in modules:
            if len(parts) != len(prefix) + 1 or parts[: len(prefix)] != prefix:
                continue
            sub = children(parts)
            name = ".".join(parts)
            if sub:
                items.append({name: [page_path(parts), *sub]})
            else:
                items.append({name: page_path(parts)})
        return items

    return [page_path(("clip_gs",)), *children(("clip_gs",))]


def api_page(parts: tuple[str, ...]) -> str:
    name = ".".join(parts)
    return f"# `{name}`\n\n::: {name}\n"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by name, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_sections(parser: argparse.ArgumentParser, path: tuple[str, ...], level: int = 2) -> list[str]:
    """Markdown sections with the help of ``parser`` and, recursively, of its subcommands."""
    title = " ".join(path)
    anchor = "-".join(path)
    out = [f"{'#' * level} `{title}` {{#{anchor}}}\n", "```text", parser.format_help().rstrip(), "```\n"]
    for name, sub in subcommands(parser).items():
        out += help_sections(sub, (*path, name), min(level + 1, 4))
    return out


def cli_markdown() -> str:
    """The CLI reference page: ``clip-gs --help`` and the help of every subcommand."""
    import os

    from clip_gs.cli import build_parser

    os.environ.setdefault("COLUMNS", "110")  # a stable wrap width for argparse, whatever the terminal
    parser = build_parser()
    lines = [
        "# CLI reference\n",
        "Generated at build time from the `clip-gs` command's argparse parsers: what follows is exactly what "
        "`clip-gs --help` and `clip-gs COMMAND --help` print.\n",
        TRAINING_COMMANDS_NOTE + "\n",
    ]
    lines += help_sections(parser, ("clip-gs",))
    return "\n".join(lines) + "\n"


def on_config(config, **kwargs):
    nav = config.nav
    if nav is not None and not any(isinstance(item, dict) and API_SECTION in item for item in nav):
        nav.append({API_SECTION: api_nav(public_modules())})
    return config


def on_files(files, config, **kwargs):
    for parts in public_modules():
        files.append(File.generated(config, page_path(parts), content=api_page(parts)))
    files.append(File.generated(config, CLI_PAGE, content=cli_markdown()))
    return files
