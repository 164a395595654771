"""One vocabulary for the ``clip-gs`` command: a flag that several verbs take means the same in each.

The real parser (:func:`clip_gs.cli.build_parser`) is walked verb by verb, nested verbs such as
``teacher build`` included: every flag that appears in more than one verb has the same option
strings, default, choices, type, action and help everywhere, unless listed below with the reason
its meaning differs. Every long option is dashed, ``--output`` / ``-o`` appear nowhere, ``--device``
defaults to ``auto``, ``--precision`` offers :data:`~clip_gs.model.precision.PRECISIONS`, and
``--help`` exits 0 for every verb. The LightningCLI verbs (``fit`` ...) are built by jsonargparse
from the classes' signatures; ``fit --help`` is checked for the options clip-gs declares itself.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from clip_gs.cli import SIGNED_VALUE_OPTIONS, build_parser, join_signed_values, main
from clip_gs.errors import ConfigError

SAME_FLAG_OTHER_MEANING = {
    "--views": "orbit views of a sheet, teacher views per object, views a fit is trained on, build views",
    "--size": "a contact-sheet tile (render) against the size a fit renders and reads views at",
    "--max-gaussians": "prepare resamples objects above it; fit-gaussians caps its densification",
    "--workers": "prepare's worker processes do everything; teacher build / eval's only render",
}
"""Flags whose meaning differs from verb to verb: only the dashed-name rule applies to them."""

OWN_MEANING = {
    ("teacher build", "--batch-size"): "image-caption pairs per optimiser step, not objects per forward pass",
    ("labels", "--batch-size"): "prompts per forward pass of the text tower",
    ("prepare", "--teacher"): "the teacher that makes the dataset, not a replacement for a model's own",
    ("teacher eval", "--teacher"): "the teacher measured (default: the offline one)",
    ("labels", "--teacher"): "the teacher that encodes the labels (instead of a model's)",
    ("search", "--up"): "the axis of a --like file; by default the index's recorded setting",
}
"""``(verb, flag)`` pairs where one verb's flag is not the shared one."""

HELP_PER_VERB = {
    "--out": "every verb writes something else (an image, a dataset, a 3DGS file, an index, a report folder)",
    "--labels": "each verb says what its classes are for (clip_gs.teachers.label_options takes the help)",
    "--label-set": "each verb says what its classes are for (clip_gs.teachers.label_options takes the help)",
}
"""Flags with one meaning whose help names what the verb does with them; everything else must agree."""

SETTINGS_DEFAULTS = {"demo": "clip_gs.demo.settings.DemoSettings"}
"""Verbs whose options default to None so that environment variables apply; the dataclass field of
the same name holds the default, and it must be the shared one."""

LIGHTNING_OWN = {"--ckpt_path", "--lr_scheduler", "--print_config", "--seed_everything", "--weights_only"}
"""LightningCLI's own options (named after Python parameters); clip-gs's own are dashed."""


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(verb path, parser)`` of every verb, nested ones included (not the top level)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, (*path, name))
    if path:
        yield path, parser


def options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def long_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


VERBS = {" ".join(path): parser for path, parser in walk(build_parser())}
FLAGS: dict[str, dict[str, argparse.Action]] = defaultdict(dict)
for _verb, _parser in VERBS.items():
    for _action in options(_parser):
        FLAGS[long_name(_action)][_verb] = _action
SHARED = sorted(flag for flag, verbs in FLAGS.items() if len(verbs) > 1 and flag not in SAME_FLAG_OTHER_MEANING)


def settings_default(verb: str, action: argparse.Action):
    """What a default of None stands for in a verb whose settings supply the defaults."""
    import importlib

    module, _, name = SETTINGS_DEFAULTS[verb].rpartition(".")
    settings = getattr(importlib.import_module(module), name)()
    return getattr(settings, action.dest, None)


def signature(verb: str, action: argparse.Action, help_too: bool) -> dict:
    default = action.default
    if default is None and verb in SETTINGS_DEFAULTS:
        default = settings_default(verb, action)
    return {"option strings": sorted(action.option_strings), "default": default, "choices": action.choices,
            "type": action.type, "action": type(action).__name__, "nargs": action.nargs,
            **({"help": action.help} if help_too else {})}  # fmt: skip


@pytest.mark.parametrize("flag", SHARED)
def test_a_flag_shared_by_verbs_means_the_same_in_each(flag):
    """Same option strings, default, choices, type, action and help in every verb that has the flag."""
    signatures = {verb: signature(verb, action, flag not in HELP_PER_VERB)
                  for verb, action in FLAGS[flag].items() if (verb, flag) not in OWN_MEANING}  # fmt: skip
    first_verb, first = next(iter(signatures.items()))
    differ = {verb: {k: v for k, v in sig.items() if v != first[k]} for verb, sig in signatures.items()}
    differ = {verb: d for verb, d in differ.items() if d}
    assert not differ, f"{flag} differs from {first_verb}'s ({first}) in: {differ}"


def test_the_exceptions_name_real_flags_and_verbs():
    for flag in [*SAME_FLAG_OTHER_MEANING, *HELP_PER_VERB]:
        assert len(FLAGS.get(flag, {})) > 1, f"{flag}: not shared by verbs any more; drop its exception"
    for verb, flag in OWN_MEANING:
        assert verb in FLAGS.get(flag, {}), f"{verb} has no {flag}; drop its exception"


def test_every_long_option_is_dashed_and_none_is_output():
    names = [(verb, s) for verb, parser in VERBS.items() for a in options(parser) for s in a.option_strings]
    assert not [(verb, s) for verb, s in names if s.startswith("--") and "_" in s]
    assert not [(verb, s) for verb, s in names if s in ("--output", "-o")], "output files are --out"


def test_device_defaults_to_auto_and_precision_offers_the_one_set_of_choices():
    from clip_gs.cli_flags import DEVICE
    from clip_gs.model.precision import PRECISIONS

    assert DEVICE == "auto"
    devices = {verb: signature(verb, action, False)["default"] for verb, action in FLAGS["--device"].items()}
    assert devices and set(devices.values()) == {"auto"}, devices
    assert {"prepare", "fit-gaussians", "eval", "classify", "embed", "search", "demo"} <= set(devices)
    precisions = {verb: (action.choices, action.default) for verb, action in FLAGS["--precision"].items()}
    assert {"prepare", "eval"} <= set(precisions)
    assert set(precisions.values()) == {(PRECISIONS, "auto")}, precisions


def test_verbs_that_read_files_take_up_and_mesh_gaussians():
    from clip_gs.gaussians.assets import MESH_GAUSSIANS
    from clip_gs.gaussians.frames import UP_CHOICES

    assert {"render", "prepare", "classify", "embed", "search", "eval", "demo"} <= set(FLAGS["--up"])
    assert all(action.choices == UP_CHOICES for action in FLAGS["--up"].values())
    assert {"info", "render", "prepare", "classify", "embed", "eval"} <= set(FLAGS["--mesh-gaussians"])
    assert {action.default for action in FLAGS["--mesh-gaussians"].values()} == {MESH_GAUSSIANS}
    assert "--num-gaussians" not in FLAGS
    assert {"prepare", "verify", "eval"} <= set(FLAGS["--endpoint-url"])


def fill_required(parser: argparse.ArgumentParser) -> list[str]:
    """Arguments that satisfy ``parser``'s required positionals, options and exclusive groups."""
    argv: list[str] = []
    grouped = set()
    for group in parser._mutually_exclusive_groups:
        grouped.update(id(a) for a in group._group_actions)
        if group.required:
            argv += [group._group_actions[0].option_strings[0], "x"]
    for action in parser._actions:
        if id(action) in grouped or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return argv


@pytest.mark.parametrize("verb", sorted(FLAGS["--up"]))
def test_up_takes_dash_led_values_in_every_verb(verb):
    assert "--up" in SIGNED_VALUE_OPTIONS
    parser = build_parser()
    for value in ("-y", "+z"):
        argv = [*verb.split(), *fill_required(VERBS[verb]), "--up", value]
        assert parser.parse_args(join_signed_values(argv)).up == value


def test_demo_up_and_device_reach_its_settings():
    from clip_gs.demo.cli import settings_from_args
    from clip_gs.demo.settings import DemoSettings

    settings = settings_from_args(build_parser().parse_args(join_signed_values(["demo", "--up", "-z"])))
    assert (settings.up, settings.device) == ("-z", "auto")
    with pytest.raises(ConfigError, match="up must be one of"):
        DemoSettings(up="sideways")


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_exits_0_for_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*verb.split(), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: clip-gs")


def test_fit_help_lists_clip_gs_options_dashed(capsys):
    """LightningCLI's ``fit``: the options clip-gs declares are dashed (``--test-after-fit``); the
    dotted ones (``--trainer.max_epochs``) are config keys named after the classes' parameters."""
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    names = {word.split("=")[0].rstrip(",") for line in capsys.readouterr().out.splitlines()
             for word in line.split() if word.startswith("--")}  # fmt: skip
    top_level = {name for name in names if "." not in name and "[" not in name}
    assert "--test-after-fit" in top_level and "--test_after_fit" not in names
    assert not {name for name in top_level - LIGHTNING_OWN if "_" in name}


def test_clip_gs_help_runs_as_a_command():
    script = Path(sys.executable).with_name("clip-gs")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "clip_gs"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "render" in result.stdout and "prepare" in result.stdout


def test_a_precision_a_consumer_cannot_run_is_refused_by_name():
    """Every choice resolves for a teacher ("auto": fp32 on the CPU); the fused encoder refuses fp16."""
    from clip_gs.model.precision import PRECISIONS, resolve_precision, teacher_precision

    assert [teacher_precision(p, "cpu") for p in PRECISIONS] == ["fp32", "fp32", "bf16", "fp16"]
    with pytest.raises(ConfigError, match="'fp16'"):
        resolve_precision("fp16")
    with pytest.raises(ConfigError, match="'half'"):
        teacher_precision("half", "cpu")
