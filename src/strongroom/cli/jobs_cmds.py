"""`strongroom jobs` and `strongroom machines`: what the vault recorded, no passphrase needed.

The files a job could not handle are sealed in the vault: with the passphrase given (file
or environment) `jobs` opens and lists them; without it, it counts them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from typing import Any

import click
from rich.table import Table

from strongroom.agent.jobrun import open_failed
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError

from strongroom.cli import kinds_cmds
from strongroom.cli.common import (
    cells,
    echo,
    emit_json,
    home,
    human_bytes,
    iso,
    json_option,
    key_if_given,
    out_console,
    passphrase_option,
)


def _short_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: dict) -> str:
    if job["ended_ns"] is None:
        return "running"
    return f"{(job['ended_ns'] - job['started_ns']) / 1e9:.1f} s"


def _shown(job: dict[str, Any], key: MasterKey | None) -> dict[str, Any]:
    """The job as printed: `failed` opened with the key, or null where it cannot be (no key,
    or the data of another machine, as a restore from it handled)."""
    sealed = job.pop("failed_sealed")
    failed: list[dict[str, str]] | None = [] if job["failed_count"] == 0 else None
    if key is not None and sealed is not None:
        try:
            failed = open_failed(key, job["id"], sealed)
        except IntegrityError:
            pass
    return {**job, "failed": failed}


@click.command("jobs")
@click.option("--machine", metavar="NAME", help="Only this machine's jobs (default: every job this machine may see).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@passphrase_option
@json_option
@click.pass_context
def jobs(ctx: click.Context, machine: str | None, limit: int, passphrase_file: Path | None, as_json: bool) -> None:
    """This machine's backup and restore jobs, and restores of its data made elsewhere, as the
    vault recorded them, newest first."""
    agent = home(ctx)
    key = key_if_given(agent, passphrase_file)
    vault = agent.vault()
    rows = [_shown(j.to_dict(), key) for j in vault.jobs(machine, limit)]
    kinds_cmds.add_point_kinds(vault, rows)
    if as_json:
        emit_json(rows)
        return
    table = Table()
    for name in ("Job", "Machine", "Kind", "Status", "Started", "Took", "Files", "Bytes"):
        table.add_column(name, no_wrap=name in ("Job", "Started"))
    for j in rows:
        kind = j["kind"] + (f" ({j['point_kind']})" if j["point_kind"] else "") + \
            (f" from {j['source_machine']}" if j["source_machine"] else "")
        status = j["status"].replace("_", " ") + (f" ({j['failed_count']} failed)" if j["failed_count"] else "")
        table.add_row(*cells(j["id"], j["machine"], kind, status, _short_time(j["started_ns"]), _duration(j),
                             j["files"], human_bytes(j["bytes"])))
    out_console().print(table)
    for j in rows:
        if j["message"]:
            echo(f"{j['id']}: {j['message']}")
        for f in j["failed"] or ():
            echo(f"{j['id']}: {f['path']}: {f['error']}")


@click.group("machines", invoke_without_command=True)
@json_option
@click.pass_context
def machines(ctx: click.Context, as_json: bool) -> None:
    """Machines registered with the vault: points, last backup, space their data takes."""
    if ctx.invoked_subcommand is not None:
        return
    rows = home(ctx).vault().machines()
    if as_json:
        emit_json([{**r, "last_backup": iso(r["last_backup_ns"]) if r["last_backup_ns"] else None} for r in rows])
        return
    table = Table()
    for name in ("Machine", "Registered", "Points", "Last backup", "Stored"):
        table.add_column(name)
    for r in rows:
        table.add_row(*cells(r["name"], _short_time(r["registered"] * 10**9), r["points"],
                             _short_time(r["last_backup_ns"]) if r["last_backup_ns"] else "never",
                             human_bytes(r["stored_bytes"])))
    out_console().print(table)


def add_to(cli: click.Group) -> None:
    cli.add_command(jobs)
    cli.add_command(machines)
