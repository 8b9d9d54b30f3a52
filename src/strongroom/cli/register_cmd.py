"""`strongroom register`: register this machine with a vault and set its passphrase."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import click

from strongroom.agent.home import check_private
from strongroom.agent.passphrase import read_passphrase
from strongroom.cli.common import echo, home, passphrase_option
from strongroom.credentials import Credentials
from strongroom.crypto import MasterKey, unwrap_key, wrap_key
from strongroom.errors import UsageError
from strongroom.vault.client import check_plain_http
from strongroom.names import check_machine_name
from strongroom.vault.connect import connect


@click.command("register")
@click.option("--credentials", "cred_file", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The vault credentials file.")
@click.option("--machine", default=None, help="This machine's name in the vault (default: the host name).")
@click.option("--replace", "replace", default=None, metavar="NAME",
              help="Take back the name, key and history of machine NAME (a rebuilt machine), with its passphrase.")
@click.option("--insecure-http", is_flag=True,
              help="Allow a plain http:// vault URL that is not on this machine (secrets then cross the "
                   "network unencrypted); kept for every later command.")
@click.option("--cache", "cache", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="The cache folder (blob index, scratch), if not the agent home's cache/.")
@passphrase_option
@click.pass_context
def register(ctx: click.Context, cred_file: Path, machine: str | None, replace: str | None, insecure_http: bool,
             cache: Path | None, passphrase_file: Path | None) -> None:
    """Register this machine with a vault and set the encryption passphrase."""
    agent = home(ctx)
    if agent.registered:
        raise UsageError(f"this agent home ({agent.path}) is already registered; use another --home")
    if replace is not None and machine is not None and machine != replace:
        raise UsageError("--replace NAME takes NAME back: leave --machine out")
    creds = Credentials.load(cred_file)
    check_plain_http(creds.vault_url, insecure_http)  # before the passphrase is asked for
    name = check_machine_name(replace or machine or socket.gethostname())
    if agent.path.exists():  # one made by hand, or a shared folder given as --home
        check_private(agent.path, os.stat(agent.path), "the agent home", "give another with --home")
    if cache is not None:  # made now: a folder that cannot be must not cost a registration
        try:
            cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UsageError(f"cannot make the cache folder {cache}: {exc.strerror or exc}") from None
        check_private(cache, os.stat(cache), "the cache folder", "give another with --cache")
    vault = connect(creds.vault_url, creds.fingerprint, insecure_http)
    if replace is not None:
        # Nothing changes in the vault until the passphrase has opened the machine's key here.
        keyfile = vault.replace_keyfile(creds, name)
        key = unwrap_key(keyfile, read_passphrase(passphrase_file, prompt=f"Encryption passphrase of {name}: "))
        token = vault.replace_machine(creds, name, key.replace_proof().hex())
        agent.save_registration(creds.vault_url, name, token, keyfile, creds.fingerprint, insecure_http,
                                cache.absolute() if cache else None)
        echo(f"This machine is {name!r} again in vault {creds.vault_id}: its points and history are its own; "
             "the token of the machine it replaces no longer works.")
        return
    passphrase = read_passphrase(passphrase_file, confirm=True, prompt="New encryption passphrase (16+ characters): ")
    key = MasterKey.generate()
    keyfile = wrap_key(key, passphrase)
    token = vault.register(creds, name, keyfile, key.key_check())
    agent.save_registration(creds.vault_url, name, token, keyfile, creds.fingerprint, insecure_http,
                            cache.absolute() if cache else None)
    echo(f"Registered machine {name!r} with vault {creds.vault_id}.")
    echo("Keep the passphrase safe: it never leaves this machine, and without it the "
         "backups cannot be restored by anyone.", err=True)


def add_to(cli: click.Group) -> None:
    cli.add_command(register)
