"""`strongroom agent cache show|move`: where the agent's cache folder is, and moving it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from strongroom.agent import cachedir
from strongroom.cli.agent_cmds import agent_group
from strongroom.cli.common import echo, emit_json, home, human_bytes, json_option


@click.group("cache")
def cache_group() -> None:
    """The cache folder (blob index, scratch): deleting it costs speed, never correctness."""


@cache_group.command("show")
@json_option
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Where the cache folder is, what it holds and the room around it."""
    info = cachedir.describe(home(ctx))
    if as_json:
        emit_json(info)
        return
    echo(f"Cache folder: {info['path']}{'' if info['configured'] else ' (the default, in the agent home)'}"
         f"{'' if info['exists'] else _absent(Path(info['path']))}")
    echo(f"Holds {human_bytes(info['used_bytes'])}; {human_bytes(info['free_bytes'])} free on its file system "
         f"(a backup may need {human_bytes(info['needed_bytes'])}).")


def _absent(folder: Path) -> str:
    if os.path.lexists(folder):
        return " (not a folder: something else is in its place; move it away or the folder elsewhere)"
    return " (not there yet: made at the next backup)"


@cache_group.command("move")
@click.argument("directory", type=click.Path(path_type=Path))
@click.pass_context
def move(ctx: click.Context, directory: Path) -> None:
    """Move the cache folder to DIRECTORY, a new folder (not while a backup runs)."""
    agent = home(ctx)
    old = agent.cache_path
    new = cachedir.move(agent, directory)
    echo(f"The cache folder is now {new} (was {old}).")


def add_to(cli: click.Group) -> None:
    agent_group.add_command(cache_group)
