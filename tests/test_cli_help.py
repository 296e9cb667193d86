"""Every option of every ``servetune`` command has help text (walks the real click tree)."""

from __future__ import annotations

import subprocess

import click
import pytest
from _helpers_data import servetune_command

from servetune.cli._main import cli

# data/collect/_command.py (owned by the collector) still has options without help: remove
# the entry once they have it (strict: the test then fails to say so)
KNOWN_GAPS: set[str] = set()  # sub-commands known to lack help (none now)


def _commands(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), f"{path} {name}")


COMMANDS = dict(_commands(cli, "servetune"))


def _missing_help(prefix: str) -> list[str]:
    return [f"{path}: {'/'.join(p.opts)}" for path, command in COMMANDS.items()
            if path == prefix or path.startswith(prefix + " ")
            for p in command.params if isinstance(p, click.Option) and not (p.help or "").strip()]


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="options defined outside "
                                               "servetune.cli lack help"))
    if f"servetune {name}" in KNOWN_GAPS else name
    for name in sorted({p.split()[1] for p in COMMANDS if " " in p})])
def test_every_option_has_help(name):
    assert _missing_help(f"servetune {name}") == []


def test_the_walk_reaches_nested_commands_and_the_global_options():
    assert {"servetune tune", "servetune validate", "servetune studies ls",
            "servetune studies show", "servetune data ls", "servetune models ls"} <= set(COMMANDS)
    assert _missing_help("servetune") == _missing_help("servetune collect")  # only the gap
    opts = {o for p in COMMANDS["servetune studies ls"].params for o in p.opts}
    assert {"--workspace", "-v", "--json"} <= opts


@pytest.mark.parametrize("option, words", [
    ("--gpus-per-node", ["0: not set", "every GPU"]),
    ("--timeout", ["Seconds", "else 1800 s"]),
    ("--health-timeout", ["Seconds", "else 600 s"]),
    ("--retries", ["0: none", "else 2"]),
    ("--slo-ttft-ms", ["(ms)"]),
    ("--qps", ["req/s"]),
])
def test_validate_help_states_units_and_what_0_or_none_mean(option, words):
    help_text = next(p.help for p in COMMANDS["servetune validate"].params
                     if option in getattr(p, "opts", ()))
    for word in words:
        assert word in help_text, help_text
    out = subprocess.run([*servetune_command(), "validate", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert " ".join(help_text.split()) in " ".join(out.stdout.split())  # as the user sees it
