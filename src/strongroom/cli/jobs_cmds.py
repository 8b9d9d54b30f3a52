"""`strongroom jobs` and `strongroom machines`: what the vault recorded, no passphrase needed."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table

from strongroom.cli.common import (
    emit_json,
    home,
    human_bytes,
    iso,
    json_option,
    out_console,
)


def _short_time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _duration(job: dict) -> str:
    if job["ended_ns"] is None:
        return "running"
    return f"{(job['ended_ns'] - job['started_ns']) / 1e9:.1f} s"


@click.command("jobs")
@click.option("--machine", metavar="NAME", help="Only this machine's jobs (default: every machine's).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
@click.pass_context
def jobs(ctx: click.Context, machine: str | None, limit: int, as_json: bool) -> None:
    """Backup and restore jobs as the vault recorded them, newest first."""
    rows = [j.to_dict() for j in home(ctx).vault().jobs(machine, limit)]
    if as_json:
        emit_json(rows)
        return
    table = Table()
    for name in ("Job", "Machine", "Kind", "Status", "Started", "Took", "Files", "Bytes"):
        table.add_column(name, no_wrap=name in ("Job", "Started"))
    for j in rows:
        kind = j["kind"] + (f" from {j['source_machine']}" if j["source_machine"] else "")
        status = j["status"].replace("_", " ") + (f" ({len(j['failed'])} failed)" if j["failed"] else "")
        table.add_row(j["id"], j["machine"], kind, status, _short_time(j["started_ns"]), _duration(j),
                      str(j["files"]), human_bytes(j["bytes"]))
    out_console.print(table)
    for j in rows:
        if j["message"]:
            click.echo(f"{j['id']}: {j['message']}")


@click.command("machines")
@json_option
@click.pass_context
def machines(ctx: click.Context, as_json: bool) -> None:
    """Machines registered with the vault: points, last backup, space their data takes."""
    rows = home(ctx).vault().machines()
    if as_json:
        emit_json([{**r, "last_backup": iso(r["last_backup_ns"]) if r["last_backup_ns"] else None} for r in rows])
        return
    table = Table()
    for name in ("Machine", "Registered", "Points", "Last backup", "Stored"):
        table.add_column(name)
    for r in rows:
        table.add_row(r["name"], _short_time(r["registered"] * 10**9), str(r["points"]),
                      _short_time(r["last_backup_ns"]) if r["last_backup_ns"] else "never",
                      human_bytes(r["stored_bytes"]))
    out_console.print(table)


def add_to(cli: click.Group) -> None:
    cli.add_command(jobs)
    cli.add_command(machines)
