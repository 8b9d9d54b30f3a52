"""`strongroom passphrase change`, `strongroom machines remove|rename`: acts on a registration.

A passphrase change rewraps the same master key (the data is not re-encrypted) and replaces
both copies of the key file, the vault's and this home's, so that a crash at any step leaves
the old or the new passphrase working, never neither:

1. the new key file is written beside the old one (`key.json.new`); from then on either
   passphrase opens the key here (AgentHome.master_key);
2. the vault's copy is replaced (its machine record, then its catalog row, in one catalog
   transaction) and the change is recorded as a critical event in the machine's jobs;
3. `key.json.new` is renamed over `key.json`: the old passphrase opens nothing any more.

A change cut short is finished by running it again, with either passphrase as the current one.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import click

from strongroom.agent.passphrase import read_passphrase
from strongroom.cli.common import echo, emit_json, home, json_option, passphrase_option
from strongroom.crypto import wrap_key
from strongroom.keyfile import check_passphrase_strength
from strongroom.errors import UsageError
from strongroom.fsutil import write_private
from strongroom.names import check_machine_name
from strongroom.testhook import hook

NEW_PASSPHRASE_ENV = "STRONGROOM_NEW_PASSPHRASE"


def _new_passphrase(file: Path | None) -> str:
    if file is not None:
        return read_passphrase(file)
    text = os.environ.get(NEW_PASSPHRASE_ENV)
    if text is None:
        if not sys.stdin.isatty():
            raise UsageError(f"no new passphrase: use --new-passphrase-file or set ${NEW_PASSPHRASE_ENV}")
        text = getpass.getpass("New encryption passphrase (16+ characters): ")
        if getpass.getpass("Repeat the new passphrase: ") != text:
            raise UsageError("the two new passphrases differ")
    check_passphrase_strength(text)
    return text


@click.group("passphrase")
def passphrase_group() -> None:
    """The encryption passphrase of this machine."""


@passphrase_group.command("change")
@passphrase_option
@click.option("--new-passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help=f"Read the new passphrase from this file (else ${NEW_PASSPHRASE_ENV}, else a prompt).")
@json_option
@click.pass_context
def change(ctx: click.Context, passphrase_file: Path | None, new_passphrase_file: Path | None, as_json: bool) -> None:
    """Rewrap this machine's key with a new passphrase, here and in the vault; the old one stops working."""
    agent = home(ctx)
    vault = agent.vault()
    old = read_passphrase(passphrase_file, prompt="Current encryption passphrase: ")
    key = agent.master_key(old)  # refused with one line if wrong: nothing changed
    new = _new_passphrase(new_passphrase_file)
    if new == old:
        raise UsageError("the new passphrase is the current one; nothing changed")
    keyfile = wrap_key(key, new)
    with agent.lock():
        write_private(agent.pending_keyfile_path, keyfile.encode())
        _sync_dir(agent.path)
        hook("passphrase-pending")
        vault.change_keyfile(keyfile, key.replace_proof().hex())
        hook("passphrase-vault")
        os.replace(agent.pending_keyfile_path, agent.keyfile_path)
        _sync_dir(agent.path)
        hook("passphrase-local")
    if as_json:
        emit_json({"machine": vault.machine, "changed": True})
    else:
        echo(f"The passphrase of machine {vault.machine} is changed, here and in the vault; the old one no "
             "longer opens the key. Machines restoring this one's data need the new passphrase.")


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_admin_vault = click.option("--vault", "admin_vault", metavar="FOLDER|URL",
                            help="Act as the vault's admin (its folder, or its URL with --admin-token-file) "
                                 "instead of with a PIN from this machine.")
_admin_token = click.option("--admin-token-file", type=click.Path(path_type=Path, dir_okay=False),
                            help="With --vault URL: the vault's admin token.")
_fingerprint = click.option("--fingerprint", help="With --vault https://...: the certificate fingerprint to pin.")
_pin = click.option("--pin", help="A PIN the vault admin made for that machine and this act (`strongroom vault pin`).")


def _acting(func: object) -> object:
    """The options of a command that acts on a machine: a PIN, or the vault's admin."""
    for decorate in reversed((_pin, _admin_vault, _admin_token, _fingerprint, json_option, click.pass_context)):
        func = decorate(func)
    return func


def _as_admin(vault: str, token_file: Path | None, fingerprint: str | None) -> object:
    from strongroom.cli.vault_cmds import _admin
    from strongroom.vault import privacy
    privacy.private_umask()  # as every vault command: what it creates in a vault folder is private
    return _admin(vault, token_file, fingerprint, False)


@click.command("remove")
@click.argument("name")
@_acting
def remove(ctx: click.Context, name: str, pin: str | None, admin_vault: str | None, admin_token_file: Path | None,
           fingerprint: str | None, as_json: bool) -> None:
    """Remove machine NAME: revoke its token and soft-delete its points (recoverable during the
    soft-delete period). Needs a PIN for NAME and `remove-machine`, or the vault's admin."""
    if admin_vault:
        deleted = _as_admin(admin_vault, admin_token_file, fingerprint).admin_remove_machine(name)  # type: ignore[attr-defined]
    else:
        deleted = home(ctx).vault().remove_machine(name, pin)
    if as_json:
        emit_json({"machine": name, "removed": True, "points_deleted": deleted})
    else:
        echo(f"Machine {name} is removed: its token no longer works, and its {deleted} points are soft-deleted "
             "(recoverable during the soft-delete period, after `register --replace`).")


@click.command("rename")
@click.argument("old")
@click.argument("new")
@_acting
def rename(ctx: click.Context, old: str, new: str, pin: str | None, admin_vault: str | None,
           admin_token_file: Path | None, fingerprint: str | None, as_json: bool) -> None:
    """Rename machine OLD to NEW, keeping its points. Needs a PIN for OLD and `rename-machine`,
    or the vault's admin."""
    check_machine_name(new)  # here too: the same one line, embedded or served
    if admin_vault:
        _as_admin(admin_vault, admin_token_file, fingerprint).admin_rename_machine(old, new)  # type: ignore[attr-defined]
    else:
        home(ctx).vault().rename_machine(old, new, pin)
    if as_json:
        emit_json({"machine": new, "former_name": old})
    else:
        echo(f"Machine {old} is now {new}; its points are kept.")


def add_to(cli: click.Group) -> None:
    cli.add_command(passphrase_group)
    machines = cli.commands["machines"]
    assert isinstance(machines, click.Group), "jobs_cmds registers `machines` as a group"
    machines.add_command(remove)
    machines.add_command(rename)
