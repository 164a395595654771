"""``clip-gs prepare --config FILE``: a YAML file of prepare's options, typed by the command's own parser.

The file is a mapping from option names (``fit-iterations`` or ``fit_iterations``) to values; every
value is converted and checked exactly as the same flag on the command line would be, and flags
given on the command line override the file. ``--print-config`` prints the options in effect, in
the same form, and exits. The source and ``--out`` are named on the command line, not in the file
(a config is a recipe, used on many inputs). ``examples/configs/prepare-paper.yaml`` and
``prepare-quickstart.yaml`` are the shipped recipes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from clip_gs.errors import ConfigError

NOT_IN_CONFIG = ("source", "out", "config", "print_config", "help")
"""Options a config file may not set (named on the command line)."""

MAX_CONFIG_BYTES = 1 << 20


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_CONFIG}


def config_argv(path: str | os.PathLike, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line tokens that the config file ``path`` stands for (to be put before the user's).

    Raises:
        ConfigError: an unreadable or non-mapping file, an unknown option, an option a config may not
            set, or a value the option's type refuses (names the file, the option and the value).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than a config file may be ({MAX_CONFIG_BYTES:,} bytes)")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if values is None:
        return []
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config is a mapping of option names to values, got a {type(values).__name__}")
    actions = _actions(parser)
    tokens: list[str] = []
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest in NOT_IN_CONFIG:
            raise ConfigError(f"{path}: {key!r} is given on the command line, not in a config file")
        if dest not in actions:
            raise ConfigError(
                f"{path}: unknown option {key!r}; options are {sorted(a.replace('_', '-') for a in actions)}"
            )
        action, flag = actions[dest], actions[dest].option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key} is true or false, got {value!r}")
            tokens += [flag] if value else []
            continue
        if value is None:
            continue
        if isinstance(value, (dict, list)) or isinstance(value, bool) != (action.type is bool):
            raise ConfigError(
                f"{path}: {key} takes one {getattr(action.type, '__name__', 'text')} value, got {value!r}"
            )
        text = str(value)
        try:
            converted = action.type(text) if action.type is not None else text
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{path}: {key}: {value!r} is not a valid value ({exc})") from exc
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(f"{path}: {key} must be one of {list(action.choices)}, got {value!r}")
        tokens.append(f"{flag}={text}")
    return tokens


def expand_config(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` (after the sub-command) with each ``--config FILE`` replaced by its tokens, placed first so
    that the command line's own flags win."""
    argv, files, rest, i = list(argv), [], [], 0
    while i < len(argv):
        if argv[i] == "--config" and i + 1 < len(argv):
            files.append(argv[i + 1])
            i += 2
        elif argv[i].startswith("--config="):
            files.append(argv[i].split("=", 1)[1])
            i += 1
        else:
            rest.append(argv[i])
            i += 1
    return [token for f in files for token in config_argv(f, parser)] + rest


def print_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The options in effect as a config file (what ``--print-config`` prints)."""
    import yaml

    values = {dest.replace("_", "-"): getattr(args, dest) for dest in _actions(parser) if hasattr(args, dest)}
    values = {k: (",".join(str(x) for x in v) if isinstance(v, (tuple, list)) else v) for k, v in values.items()}
    return yaml.safe_dump(values, sort_keys=False)


def settings_from_args(args: argparse.Namespace):
    """The :class:`~clip_gs.data.prepare_settings.PrepareSettings` of parsed ``clip-gs prepare`` options."""
    from clip_gs.data.prepare_settings import PrepareSettings

    return PrepareSettings(
        views=args.views, elevation_deg=args.elevation, image_size=args.image_size, background=args.background,
        up=args.up, mesh_gaussians=args.mesh_gaussians, synthetic_gaussians=args.synthetic_gaussians,
        synthetic_pose=args.synthetic_pose, gaussians=args.gaussians, fit_iterations=args.fit_iterations,
        fit_views=args.fit_views, fit_size=args.fit_size, render_samples=args.render_samples,
        max_gaussians=args.max_gaussians,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
    )  # fmt: skip


__all__ = ["config_argv", "expand_config", "print_config", "settings_from_args"]
