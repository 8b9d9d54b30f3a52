"""`strongroom vault ...`: create a vault, issue credentials for registering machines."""

from __future__ import annotations

from pathlib import Path

import click

from strongroom.cli.common import emit_json, json_option
from strongroom.credentials import DEFAULT_VALID_DAYS
from strongroom.vault.embedded import folder_url
from strongroom.vault.service import VaultService


@click.group("vault")
def vault_group() -> None:
    """Manage a vault (embedded: a folder with packs and an SQLite catalog)."""


@vault_group.command("create")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@json_option
def create(folder: Path, as_json: bool) -> None:
    """Create an embedded vault in FOLDER (new or empty)."""
    service = VaultService.create(folder)
    url = folder_url(folder)
    if as_json:
        emit_json({"id": service.id, "url": url, "path": str(folder.resolve())})
    else:
        click.echo(f"Created vault {service.id} at {folder.resolve()}")
        click.echo(f"Next: strongroom vault credentials {folder} --out vault.cred")


@vault_group.command("credentials")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the credentials file.")
@click.option("--valid-days", type=click.IntRange(1, 365), default=DEFAULT_VALID_DAYS, show_default=True,
              help="Days until the credentials expire.")
@json_option
def credentials(folder: Path, out: Path, valid_days: int, as_json: bool) -> None:
    """Issue vault credentials for registering machines; they supersede older ones."""
    service = VaultService(folder)
    creds = service.issue_credentials(folder_url(folder), valid_days)
    creds.dump(out)
    if as_json:
        emit_json({"file": str(out), "vault_id": creds.vault_id, "expires": creds.expires})
    else:
        click.echo(f"Wrote {out}: valid {valid_days} days; it supersedes any earlier credentials. "
                   "Keep it secret: it lets a machine register.")


def add_to(cli: click.Group) -> None:
    cli.add_command(vault_group)
