"""`strongroom vault import-seed`: take a machine's offline seed into the vault (vault/seed_import.py)."""

from __future__ import annotations

from pathlib import Path

import click

from strongroom.cli.common import echo, emit_json, human_bytes, json_option


@click.command("import-seed")
@click.argument("vault", type=click.Path(path_type=Path, file_okay=False))
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path, file_okay=False, exists=True))
@json_option
def import_seed_cmd(vault: Path, folder: Path, as_json: bool) -> None:
    """Import the offline seed in DIR (a machine's first backup, written by `backup --offline-seed DIR`)
    into the vault in folder VAULT, on the vault's host. Run it again if it was interrupted."""
    from strongroom.vault.seed_import import import_seed
    report = import_seed(vault, folder)
    if as_json:
        emit_json(report.to_dict())
    elif report.already_imported:
        echo(f"Point {report.point} of machine {report.machine} was imported already; nothing to do.")
    else:
        echo(f"Imported point {report.point} of machine {report.machine}: {report.packs_imported} packs "
             f"({human_bytes(report.bytes_imported)}) stored, {report.packs_skipped} already in the vault.")
        echo("It is a recovery point like any other now; the machine's next backup sends only what changed.")


def add_to(cli: click.Group) -> None:
    vault_group = cli.commands["vault"]
    assert isinstance(vault_group, click.Group)
    vault_group.add_command(import_seed_cmd)
