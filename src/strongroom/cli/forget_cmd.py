"""`strongroom forget`: delete chosen recovery points by hand (soft: `points undelete` brings
them back until the vault's soft-delete period ends), with a PIN, as every destructive act."""

from __future__ import annotations

from pathlib import Path

import click

from strongroom.cli.common import echo, emit_json, json_option, passphrase_option
from strongroom.cli.pointref import resolve
from strongroom.testhook import hook


@click.command("forget")
@click.argument("points", nargs=-1, required=True, metavar="POINT...")
@click.option("--pin", help="Deleting points needs a PIN from `strongroom vault pin VAULT --machine NAME "
              "--act delete-data`.")
@passphrase_option
@json_option
@click.pass_context
def forget(ctx: click.Context, points: tuple[str, ...], pin: str | None, passphrase_file: Path | None,
           as_json: bool) -> None:
    """Delete POINTs of this machine (ids, unique prefixes or "latest").

    They stay recoverable with `strongroom points undelete ID` for the vault's soft-delete
    period (14 days unless the vault says more); then a prune purges them and frees what
    only they kept. A machine's last point cannot be forgotten; an immutable vault refuses
    points whose retention has not ended."""
    opened, chosen = resolve(ctx, list(points), passphrase_file)
    ids = list(dict.fromkeys(p.id for p in chosen))
    machine = opened.book.machine
    remaining = [p for p in opened.live if p.id not in ids]
    seen = opened.agent.newest_point(machine)
    if seen is not None and seen.id in ids:
        # Recorded before asking the vault: a kill between the two must not leave this home
        # taking a lawful deletion for a rollback. A refusal costs nothing: the next listing
        # records the newest point again.
        opened.agent.note_point(machine, remaining[0].seen() if remaining else None, replace=True)
    hook("forget.noted")
    result = opened.vault.forget_points(ids, pin)
    hook("forget.done")
    if as_json:
        emit_json({"forgotten": result["deleted"], "soft_delete_days": result["soft_delete_days"]})
        return
    echo(f"Forgot {len(result['deleted'])} point(s): {', '.join(result['deleted'])}. `strongroom points undelete "
         f"ID` brings one back within {result['soft_delete_days']} days; after that a prune purges them.")


def add_to(cli: click.Group) -> None:
    cli.add_command(forget)
