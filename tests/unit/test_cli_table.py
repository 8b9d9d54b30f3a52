"""The lazily loaded command table of cli/main.py names every command and loads it whole."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import click
import pytest

import strongroom.cli
from strongroom.cli.main import COMMAND_MODULES, cli

# Prints the command tree that `strongroom NAME` sees when NAME is the first command a fresh
# process loads: what a user's shell gets, not what a process that loaded everything sees.
_TREE = """
import json, sys, click
from strongroom.cli.main import cli
def tree(c):
    return {n: tree(s) for n, s in c.commands.items()} if isinstance(c, click.Group) else None
print(json.dumps(tree(cli.get_command(click.Context(cli), sys.argv[1]))))
"""


def _tree(command: click.Command) -> dict | None:
    if isinstance(command, click.Group):
        return {n: _tree(s) for n, s in command.commands.items()}
    return None


def test_every_module_with_commands_is_in_the_table() -> None:
    named = {m for modules in COMMAND_MODULES.values() for m in modules}
    with_add_to = {info.name for info in pkgutil.iter_modules(strongroom.cli.__path__)
                   if hasattr(importlib.import_module(f"strongroom.cli.{info.name}"), "add_to")}
    assert with_add_to == named


def test_table_lists_exactly_the_registered_commands() -> None:
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert cli.get_command(ctx, name) is not None, name
    assert set(cli.commands) == set(COMMAND_MODULES)


@pytest.mark.parametrize("name", [n for n, mods in COMMAND_MODULES.items() if len(mods) > 1])
def test_a_command_loaded_first_has_all_its_subcommands(name: str) -> None:
    ctx = click.Context(cli)
    for every in COMMAND_MODULES:
        cli.get_command(ctx, every)
    alone = subprocess.run([sys.executable, "-c", _TREE, name], capture_output=True, text=True, check=True)
    assert json.loads(alone.stdout) == _tree(cli.commands[name])
