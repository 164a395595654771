"""``clip-gs prepare --config FILE``: the file's options typed by prepare's own parser, flags override it,
``--print-config`` prints what is in effect, and the shipped recipes parse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from clip_gs.cli import build_parser, main, subcommand
from clip_gs.data.prepare_config import config_argv, expand_config
from clip_gs.errors import ConfigError

CONFIGS = Path(__file__).parents[2] / "examples" / "configs"


def effective(capsys, *argv) -> dict:
    assert main(["prepare", "SOURCE", "--out", "OUT", *argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_flags_override_the_file_and_print_config_round_trips(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text("gaussians: fitted\nfit_iterations: 5000\nfit-views: 36\nup: -y\noverwrite: true\n")
    values = effective(capsys, "--config", str(config), "--fit-views", "12")
    assert (values["gaussians"], values["fit-iterations"], values["fit-views"]) == ("fitted", 5000, 12)
    assert values["up"] == "-y" and values["overwrite"] is True
    printed = tmp_path / "printed.yaml"
    printed.write_text(yaml.safe_dump(values))
    assert effective(capsys, "--config", str(printed)) == values  # what is printed is a config


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("colour: red\n", "unknown option 'colour'"),
        ("source: objects/\n", "given on the command line"),
        ("gaussians: magic\n", "must be one of"),
        ("fit-iterations: 5.5\n", "fit-iterations: 5.5 is not a valid value"),
        ("overwrite: 1\n", "true or false"),
        ("fit-views: [1, 2]\n", "takes one"),
        ("- a\n- b\n", "a mapping of option names"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_a_bad_config_is_refused_naming_the_file_and_option(tmp_path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        config_argv(config, subcommand(build_parser(), "prepare"))
    assert str(config) in str(info.value)


def test_the_shipped_recipes_parse():
    parser = subcommand(build_parser(), "prepare")
    for name, expected in (("prepare-paper.yaml", {"gaussians": "fitted", "fit_iterations": 5000, "fit_views": 36}),
                           ("prepare-quickstart.yaml", {"gaussians": "fitted", "fit_iterations": 1000})):  # fmt: skip
        args = parser.parse_args(["SRC", "--out", "OUT", *expand_config(["--config", str(CONFIGS / name)], parser)])
        assert {k: getattr(args, k) for k in expected} == expected
