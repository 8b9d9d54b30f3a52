"""The one way a command turns POINT arguments (an ID, a unique ID prefix, or `latest`) into
verified recovery points: the agent home, its vault and key, a blob reader, and the points,
each resolved by `agent.points.find_point` after the whole list was checked by PointBook.
An unknown or ambiguous prefix is one line and exit 2, before any data is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from strongroom.agent.home import AgentHome
from strongroom.agent.pointbook import OpenedPoint, PointBook
from strongroom.agent.points import find_point
from strongroom.agent.reader import BlobReader
from strongroom.cli.common import open_agent
from strongroom.crypto import MasterKey
from strongroom.vault.interface import Vault


@dataclass
class PointsOpened:
    agent: AgentHome
    vault: Vault
    key: MasterKey
    reader: BlobReader
    book: PointBook
    live: list[OpenedPoint]  # every live point, newest first

    def find(self, ref: str) -> OpenedPoint:
        return find_point(self.live, ref)


def open_points(ctx: click.Context, passphrase_file: Path | None, machine: str | None = None) -> PointsOpened:
    """This machine's (or `machine`'s) verified live points, ready to resolve POINT arguments."""
    agent, vault, key, reader = open_agent(ctx, passphrase_file, machine)
    book = PointBook(agent, vault, key, machine)
    return PointsOpened(agent, vault, key, reader, book, book.live())


def resolve(ctx: click.Context, refs: list[str], passphrase_file: Path | None,
            machine: str | None = None) -> tuple[PointsOpened, list[OpenedPoint]]:
    """The points named by `refs`, in the order given."""
    opened = open_points(ctx, passphrase_file, machine)
    return opened, [opened.find(r) for r in refs]
