"""`strongroom points` and `strongroom ls`: what recovery points exist and what is in them."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from strongroom.agent.browse import list_path
from strongroom.agent.pointbook import PointBook
from strongroom.agent.reader import WALK_TREE_CACHE_BYTES
from strongroom.agent.seed import waiting_seeds
from strongroom.cli import kinds_cmds
from strongroom.cli.backup_more import point_filter
from strongroom.cli.common import (
    cells,
    echo,
    emit_json,
    emit_json_list,
    from_machine_option,
    home,
    human_bytes,
    iso,
    json_option,
    open_agent,
    out_console,
    passphrase_option,
)
from strongroom.model import FILE, SYMLINK, TYPE_NAMES, Entry, display_path


@click.group("points", invoke_without_command=True)
@click.option("--deleted", is_flag=True, help="The soft-deleted points instead (recoverable until purged).")
@click.option("--tag", "tags", multiple=True, metavar="TAG[,TAG]",
              help="Only points carrying these tags (a,b: both; repeated: either).")
@click.option("--host", metavar="HOST", help="Only points made on this host name.")
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def points(ctx: click.Context, deleted: bool, tags: tuple[str, ...], host: str | None, machine: str | None,
           passphrase_file: Path | None, as_json: bool) -> None:
    """List this machine's recovery points (or another's), newest first."""
    if ctx.invoked_subcommand is not None:
        return
    agent, vault, key, _reader = open_agent(ctx, passphrase_file, machine)
    book = PointBook(agent, vault, key, machine)
    rows = []
    keep = point_filter(tags, host)
    for p in book.deleted() if deleted else book.live():
        m = p.manifest  # the sealed time, kind and mode (checked to agree with the vault's copies)
        if not keep(m):
            continue
        rows.append({"id": p.id, "created": iso(p.created_ns), "kind": m["kind"], "mode": m["mode"],
                     "mode_reason": m.get("mode_reason", ""),
                     "sources": [display_path(s) for s in m["sources"]], "tags": m.get("tags", []),
                     "host": m.get("host"), "stats": p.record.stats,
                     "snapshot": m.get("snapshot"), **kinds_cmds.kind_fields(m)})  # "btrfs", "btrfs-partial", or None: read live
    if as_json:
        emit_json(rows)
        return
    table = Table()
    table.add_column("ID", no_wrap=True, min_width=16)  # ids are what people copy from here
    table.add_column("Created", no_wrap=True)
    for name in ("Kind", "Snapshot", "Files", "Added"):
        table.add_column(name)
    table.add_column("Sources", overflow="fold")
    table.add_column("Tags", overflow="fold")
    for r in rows:
        s = r["stats"]
        files = s["files_new"] + s["files_changed"] + s["files_unchanged"]
        table.add_row(*cells(r["id"], r["created"], kinds_cmds.kind_cell(r), r["snapshot"] or "-", files, human_bytes(s["bytes_added"]),
                             ", ".join(r["sources"]), ",".join(r["tags"])))
    out_console().print(table)
    if not deleted:
        for job in waiting_seeds(vault) if machine is None else ():
            echo(f"Waiting for seed: point {job.point_id}, written to an offline seed by job {job.id} on "
                 f"{iso(job.ended_ns or job.started_ns)}; it appears here once `strongroom vault import-seed` "
                 "has taken it into the vault.")


@points.command("undelete")
@click.argument("point_id")
@click.pass_context
def undelete(ctx: click.Context, point_id: str) -> None:
    """Bring back a soft-deleted point of this machine (before it is purged)."""
    home(ctx).vault().undelete_point(point_id)
    echo(f"Point {point_id} is back.")


@click.command("ls")
@click.argument("point")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def ls(ctx: click.Context, point: str, path: Path | None, machine: str | None, passphrase_file: Path | None,
       as_json: bool) -> None:
    """List the entries of POINT (id, unique id prefix, or "latest"), under PATH if given."""
    agent, vault, key, reader = open_agent(ctx, passphrase_file, machine)
    reader.tree_cache_bytes = WALK_TREE_CACHE_BYTES  # each tree is read once, depth first
    manifest = PointBook(agent, vault, key, machine).find(point).manifest
    # Rows are written as the walk finds them, never all held: a point of millions of files
    # is listed in the memory of one folder.
    rows = (_ls_row(full, e) for full, e in list_path(reader, manifest["tree"], os.fsencode(path) if path else None))
    if as_json:
        emit_json_list(rows)
        return
    kinds_cmds.echo_summary(manifest)
    for r in rows:
        mode = stat.filemode(r["mode"] | {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(r["type"], stat.S_IFREG))
        owner = f"{r['user'] or r['uid']}/{r['group'] or r['gid']}"
        link = f" -> {r['target']}" if "target" in r else ""
        size = str(r["size"]) if r["type"] == TYPE_NAMES[FILE] else "-"
        echo(f"{mode} {owner:>16} {size:>12} {r['mtime']} {r['path']}{link}")


def _ls_row(full: bytes, e: Entry) -> dict[str, Any]:
    row = {"path": display_path(full), "type": TYPE_NAMES.get(e["t"], e["t"]), "mode": e["m"],
           "size": e.get("s", 0), "mtime": iso(e["mt"]), "uid": e.get("u"), "gid": e.get("g"),
           "user": e.get("U"), "group": e.get("G")}
    if e["t"] == SYMLINK:
        row["target"] = display_path(e["l"])
    return row


def add_to(cli: click.Group) -> None:
    cli.add_command(points)
    cli.add_command(ls)
