"""`strongroom vault ...`: create a vault, issue credentials for registering machines, serve it."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from strongroom.cli.common import echo, emit_json, human_bytes, json_option, warn_line
from strongroom.credentials import DEFAULT_VALID_DAYS, Credentials
from strongroom.errors import UsageError, VaultError
from strongroom.vault import privacy, protection, server
from strongroom.vault.client import HttpVault, check_plain_http, is_loopback
from strongroom.vault.embedded import folder_url
from strongroom.vault.server import last_served
from strongroom.vault.service import VaultService
from strongroom.vault.tls import fingerprint_of, normalise_fingerprint, presented_certificate


@click.group("vault")
def vault_group() -> None:
    """Manage a vault (embedded: a folder with packs and an SQLite catalog)."""
    privacy.private_umask()  # all a vault command creates is its owner's alone


_INSECURE_HELP = "With an http:// URL that is not loopback: send the admin token unencrypted anyway."


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
        echo(f"Created vault {service.id} at {folder.resolve()}")
        echo(f"Next: strongroom vault credentials {folder} --out vault.cred")


@vault_group.command("credentials")
@click.argument("vault", metavar="FOLDER|URL")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the credentials file.")
@click.option("--valid-days", type=click.IntRange(1, 365), default=DEFAULT_VALID_DAYS, show_default=True,
              help="Days until the credentials expire.")
@click.option("--url", help="With a FOLDER: the URL machines reach the vault at "
              "(default: the folder itself; `vault serve` remembers its own).")
@click.option("--admin-token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="With a URL: the vault's admin token (admin.token in the vault folder).")
@click.option("--fingerprint", help="The SHA-256 fingerprint of the vault's certificate, as "
              "`vault serve` prints it (needed for a self-signed certificate).")
@click.option("--insecure-http", is_flag=True, help=_INSECURE_HELP)
@json_option
def credentials(vault: str, out: Path, valid_days: int, url: str | None, admin_token_file: Path | None,
                fingerprint: str | None, insecure_http: bool, as_json: bool) -> None:
    """Issue vault credentials for registering machines; they supersede older ones."""
    if "://" in vault:
        creds = _remote_admin(vault, admin_token_file, fingerprint, insecure_http).issue_credentials(valid_days)
    else:
        creds = _credentials_from_folder(Path(vault), url, fingerprint, valid_days)
    creds.dump(out)
    if as_json:
        emit_json({"file": str(out), "vault_id": creds.vault_id, "url": creds.vault_url,
                   "fingerprint": creds.fingerprint, "expires": creds.expires})
    else:
        echo(f"Wrote {out} for {creds.vault_url}: valid {valid_days} days; it supersedes any earlier "
             "credentials. Keep it secret: it lets a machine register.")


def _credentials_from_folder(folder: Path, url: str | None, fingerprint: str | None,
                             valid_days: int) -> Credentials:
    service = VaultService(folder)
    pin = normalise_fingerprint(fingerprint) if fingerprint else None
    served = last_served(folder)
    url = url or served.get("url") or folder_url(folder)
    if url.startswith("https:") and pin is None:
        pin = served.get("fingerprint") if served.get("url") == url else None
        if pin is None:
            raise UsageError(f"no certificate fingerprint known for {url}: pass --fingerprint, or run "
                             "`strongroom vault serve` on this folder first")
    return replace(service.issue_credentials(url, valid_days), fingerprint=pin)


class _LocalAdmin:
    """The admin's calls on a vault folder, answered as a served vault answers them."""

    def __init__(self, folder: Path) -> None:
        self.service = VaultService(folder)

    def prune(self, dry_run: bool, repack_below: float) -> dict[str, Any]:
        from strongroom.vault.prune import prune
        return prune(self.service, dry_run=dry_run, repack_below=repack_below).to_dict()

    def make_pin(self, machine: str, act: str) -> str:
        return protection.make_pin(self.service, machine, act)

    def change_settings(self, soft_delete_days: int | None, immutable: bool | None) -> dict[str, Any]:
        return protection.change_settings(self.service, soft_delete_days, immutable)

    def admin_remove_machine(self, name: str) -> int:
        from strongroom.vault import machine_admin
        return machine_admin.remove_machine(self.service, name, admin=True)

    def admin_rename_machine(self, old: str, new: str) -> None:
        from strongroom.vault import machine_admin
        machine_admin.rename_machine(self.service, old, new, admin=True)


def _admin(vault: str, admin_token_file: Path | None, fingerprint: str | None,
           insecure_http: bool) -> _LocalAdmin | HttpVault:
    """The vault's admin side: in-process for a folder, over HTTPS for a URL."""
    if "://" in vault:
        return _remote_admin(vault, admin_token_file, fingerprint, insecure_http)
    return _LocalAdmin(Path(vault))


def _remote_admin(url: str, admin_token_file: Path | None, fingerprint: str | None,
                  insecure_http: bool = False) -> HttpVault:
    """A client of the served vault at `url` acting as its admin."""
    check_plain_http(url, insecure_http)  # before the admin token is read, let alone sent
    if admin_token_file is None:
        raise UsageError("a vault URL needs --admin-token-file (admin.token in the vault folder)")
    try:
        token = admin_token_file.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read {admin_token_file}: {exc.strerror}") from None
    pin = normalise_fingerprint(fingerprint) if fingerprint else None
    if url.startswith("https:") and pin is None:
        pin = _confirm_fingerprint(url)
    vault = HttpVault(url, pin, insecure_http=insecure_http)
    vault.headers["Authorization"] = f"Bearer {token}"
    return vault


def _confirm_fingerprint(url: str) -> str:
    """Trust on first use, as ssh does, but only with a person at a terminal to compare."""
    parsed = urlparse(url)
    try:
        seen = fingerprint_of(presented_certificate(parsed.hostname or "", parsed.port or 443, 10))
    except ConnectionError as exc:
        raise VaultError(str(exc)) from None
    if not sys.stdin.isatty():
        raise UsageError("pass --fingerprint with the certificate fingerprint that `strongroom vault serve` "
                         "printed: it is how machines will know they reach this vault and no other")
    echo(f"The vault at {url} presents a certificate with SHA-256 fingerprint", err=True)
    echo(f"  {seen}", err=True)
    if not click.confirm("Is this the fingerprint `strongroom vault serve` printed?", err=True):
        raise UsageError("certificate not trusted; nothing was issued")
    return seen


_admin_args = [
    click.argument("vault", metavar="FOLDER|URL"),
    click.option("--admin-token-file", type=click.Path(path_type=Path, dir_okay=False),
                 help="With a URL: the vault's admin token."),
    click.option("--fingerprint", help="With an https URL: the certificate fingerprint to pin."),
    click.option("--insecure-http", is_flag=True, help=_INSECURE_HELP),
]


def _admin_options(func: Any) -> Any:
    for decorate in reversed(_admin_args):
        func = decorate(func)
    return func


@vault_group.command("prune")
@_admin_options
@click.option("--dry-run", is_flag=True, help="Say what would be expired, purged and reclaimed; change nothing.")
@click.option("--repack-below", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Rewrite a pack when less than this share of its bytes is still needed.")
@json_option
def prune_cmd(vault: str, admin_token_file: Path | None, fingerprint: str | None, insecure_http: bool,
              dry_run: bool, repack_below: float, as_json: bool) -> None:
    """Apply retention and reclaim space, without any key: expire points by each machine's
    policy, purge points deleted longer ago than the soft-delete period, delete and repack packs."""
    report = _admin(vault, admin_token_file, fingerprint, insecure_http).prune(dry_run, repack_below)
    if as_json:
        emit_json(report)
        return
    verb = "would be" if dry_run else "were"
    echo(f"{len(report['points_expired'])} points expired (soft-deleted), "
         f"{len(report['points_purged'])} purged; {report['packs_deleted']} packs {verb} deleted, "
         f"{report['packs_repacked']} repacked; vault {human_bytes(report['bytes_before'])} -> "
         f"{human_bytes(report['bytes_after'])}.")
    for name in report["busy_machines"]:
        warn_line(f"machine {name} was busy (a backup running) and was left for the next prune")
    for name in report["damaged_packs"]:
        warn_line(f"pack {name} is damaged (its content does not match its name): not repacked; "
                  "`strongroom check --read-data` reports what it holds")


@vault_group.command("pin")
@_admin_options
@click.option("--machine", required=True, metavar="NAME", help="The machine that may use the PIN.")
@click.option("--act", required=True, type=click.Choice(sorted(protection.ACTS)),
              help="What the PIN allows: `protection stop --delete-data` or `forget`, or a policy that shortens retention.")
def pin_cmd(vault: str, admin_token_file: Path | None, fingerprint: str | None, insecure_http: bool,
            machine: str, act: str) -> None:
    """Make a PIN for one machine and one destructive act, valid 5 minutes."""
    echo(_admin(vault, admin_token_file, fingerprint, insecure_http).make_pin(machine, act))


@vault_group.command("settings")
@_admin_options
@click.option("--soft-delete-days", type=int, help="How long deleted points stay recoverable (14-180).")
@click.option("--immutable", is_flag=True, default=None,
              help="From now on no point may be deleted or shortened before it expires, by anyone. For good.")
@json_option
def settings_cmd(vault: str, admin_token_file: Path | None, fingerprint: str | None, insecure_http: bool,
                 soft_delete_days: int | None, immutable: bool | None, as_json: bool) -> None:
    """Show or change the vault's soft-delete period and immutability."""
    result = _admin(vault, admin_token_file, fingerprint, insecure_http).change_settings(soft_delete_days, immutable)
    if as_json:
        emit_json(result)
    else:
        echo(f"Soft-delete period {result['soft_delete_days']} days; "
             f"{'immutable' if result['immutable'] else 'not immutable'}.")


@vault_group.command("rebuild-catalog")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@json_option
def rebuild_catalog_cmd(folder: Path, as_json: bool) -> None:
    """Rebuild the vault's catalog from its storage (after it was lost, damaged or replaced
    by an older copy); the catalog it replaces is kept beside it."""
    from strongroom.vault.rebuild import rebuild_catalog
    report = rebuild_catalog(folder)
    if as_json:
        emit_json(report.to_dict())
        return
    echo(f"Rebuilt the catalog of {folder}: {report.machines} machines, {report.points} points "
         f"({report.points_deleted} soft-deleted), {report.packs} packs ({report.blobs} blobs), "
         f"{report.policies} policy versions, {report.jobs} jobs.")
    if report.previous_catalog:
        echo(f"The catalog it replaces is kept as {report.previous_catalog}.")
    echo("Credentials are not kept in storage: issue new ones to register more machines.")
    for problem in report.problems:
        what = next(f"{k} {v}" for k, v in problem.items() if k != "error")
        warn_line(f"{what}: {problem['error']}")
    if report.problems:
        warn_line(f"{len(report.problems)} problem(s); everything else was rebuilt")


@vault_group.command("serve")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True)
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Certificate (PEM); without one the vault makes and keeps a self-signed one.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The certificate's private key (PEM).")
@click.option("--no-tls", is_flag=True, help="Plain HTTP on a loopback address, for behind a proxy on this "
              "machine that terminates TLS.")
@click.option("--insecure-http", is_flag=True, help="With --no-tls: allow an address that is not loopback "
              "(registration secrets, tokens and wrapped keys then cross the network unencrypted).")
@click.option("--prune-every", type=click.FloatRange(0, 24 * 365), default=24.0, show_default=True,
              metavar="HOURS", help="Prune at start and then every HOURS (0: never; `vault prune` still works).")
def serve(folder: Path, host: str, port: int, tls_cert: Path | None, tls_key: Path | None, no_tls: bool,
          insecure_http: bool, prune_every: float) -> None:
    """Serve the vault in FOLDER to many machines over HTTPS, until stopped."""
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if insecure_http and not no_tls:
        raise UsageError("--insecure-http goes with --no-tls")
    if no_tls and not insecure_http and not is_loopback(host):
        raise UsageError(f"refusing to serve plain HTTP on {host}: registration secrets, machine tokens and "
                         "wrapped keys would cross the network unencrypted; serve TLS (the default), keep --no-tls "
                         "to a loopback address behind a TLS proxy, or add --insecure-http")
    server.load_limits()  # a mistake in $STRONGROOM_VAULT_LIMITS is reported before anything starts
    service = VaultService(folder)
    from strongroom.vault.trust import ensure_trusted
    ensure_trusted(service)  # never serve (nor prune at start) on a catalog older than storage
    listener = server.prepare(service, host, port, tls_cert, tls_key, not no_tls)
    echo(f"Serving vault {service.id} at {listener.url}", err=True)
    if listener.fingerprint:
        echo(f"Certificate SHA-256 fingerprint: {listener.fingerprint}", err=True)
    echo(f"Credentials for machines: strongroom vault credentials {folder} --out vault.cred", err=True)
    logging.basicConfig(format="strongroom vault: %(message)s", level=logging.WARNING)
    server.run(service, host, port, listener, prune_every * 3600)


def add_to(cli: click.Group) -> None:
    cli.add_command(vault_group)
