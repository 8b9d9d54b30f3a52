"""`strongroom diff`, `find` and `dump`: reading recovery points the way restic and Borg users
expect (what changed, where is a file, give me its bytes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from strongroom.agent.dump import dump_file, dump_tar, entry_at
from strongroom.agent.search import Finder
from strongroom.agent.treediff import Change, diff_points
from strongroom.cli.common import (
    echo,
    emit_json,
    from_machine_option,
    human_bytes,
    iso,
    json_option,
    passphrase_option,
    warn_line,
)
from strongroom.cli.pointref import open_points, resolve
from strongroom.errors import EXIT_FAILURE, UsageError
from strongroom.globmatch import compile_glob
from strongroom.model import FILE, TYPE_NAMES, display_path

_MARKS = {"added": "+", "removed": "-"}


@click.command("diff")
@click.argument("point_a")
@click.argument("point_b")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def diff(ctx: click.Context, point_a: str, point_b: str, path: Path | None, machine: str | None,
         passphrase_file: Path | None, as_json: bool) -> None:
    """What changed from POINT_A to POINT_B (ids, unique prefixes or "latest"), under PATH if given.

    Lines start with + (added), - (removed), M (content changed), U (metadata only) or
    T (type changed). Unchanged folders are not read at all."""
    opened, (a, b) = resolve(ctx, [point_a, point_b], passphrase_file, machine)
    changes = diff_points(opened.reader, a.manifest["tree"], b.manifest["tree"], os.fsencode(path) if path else None)
    summary = {"added": 0, "removed": 0, "modified": 0, "modified_content": 0, "modified_metadata_only": 0,
               "added_bytes": 0, "removed_bytes": 0}
    rows = []  # JSON only: text is printed as the walk goes, so a large diff is not held
    for c in changes:
        summary[c.change] += 1
        if c.change == "modified":
            summary["modified_content" if c.content else "modified_metadata_only"] += 1
        if c.change == "added":
            summary["added_bytes"] += c.size_after or 0
        elif c.change == "removed":
            summary["removed_bytes"] += c.size_before or 0
        if as_json:
            rows.append(c.to_dict())
        else:
            echo(_change_line(c))
    if as_json:
        emit_json({"point_a": a.id, "point_b": b.id, "path": display_path(os.fsencode(path)) if path else None,
                   "changes": rows, "summary": summary})
        return
    echo(f"{summary['added']} added ({human_bytes(summary['added_bytes'])}), {summary['removed']} removed "
         f"({human_bytes(summary['removed_bytes'])}), {summary['modified']} modified "
         f"({summary['modified_content']} in content, {summary['modified_metadata_only']} in metadata only)")


def _change_line(c: Change) -> str:
    if c.change in _MARKS:
        size = c.size_after if c.change == "added" else c.size_before
        return f"{_MARKS[c.change]}  {display_path(c.path)}" + (f"  ({human_bytes(size)})" if size is not None else "")
    mark = "T" if "type" in c.metadata else "M" if c.content else "U"
    what = ["content"] if c.content and mark == "M" else []
    what += [m for m in c.metadata if m != "type"]
    sizes = (f", {human_bytes(c.size_before)} -> {human_bytes(c.size_after)}"
             if c.size_before is not None and c.size_after is not None and c.size_before != c.size_after else "")
    kinds = f", {c.type_before} -> {c.type_after}" if mark == "T" else ""
    return f"{mark}  {display_path(c.path)}  ({', '.join(what) or 'type'}{kinds}{sizes})"


@click.command("find")
@click.argument("pattern")
@click.option("--point", "point_refs", multiple=True, metavar="ID",
              help="Search this point (id, unique prefix or latest); repeatable. Else every point.")
@click.option("--newest", type=click.IntRange(min=1), metavar="N", help="Search only the N newest of those points.")
@click.option("-i", "--ignore-case", is_flag=True, help="Match letters regardless of case.")
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def find(ctx: click.Context, pattern: str, point_refs: tuple[str, ...], newest: int | None, ignore_case: bool,
         machine: str | None, passphrase_file: Path | None, as_json: bool) -> None:
    """Which points hold a path or name matching the glob PATTERN.

    A pattern without "/" matches names at any depth ("*.conf"); with "/" it matches whole
    paths ("/etc/**/*.conf"); "*" stays within a folder, "**" crosses folders. Nothing
    found is not an error: an empty list, exit 0."""
    if not pattern:
        raise UsageError("the pattern is empty")
    opened = open_points(ctx, passphrase_file, machine)
    chosen = [opened.find(r) for r in point_refs] if point_refs else opened.live
    chosen = list({p.id: p for p in chosen}.values())  # a point named twice is searched once
    chosen.sort(key=lambda p: p.created_ns, reverse=True)
    if newest:
        chosen = chosen[:newest]
    finder = Finder(opened.reader, compile_glob(os.fsencode(pattern), ignore_case=ignore_case))
    rows = []
    for p in chosen:
        for full, e in finder.matches(p.manifest["tree"]):
            rows.append({"point": p.id, "created": iso(p.created_ns), "path": display_path(full),
                         "type": TYPE_NAMES.get(e["t"], e["t"]), "size": e.get("s", 0) if e["t"] == FILE else None,
                         "mtime": iso(e.get("mt", 0))})
    if as_json:
        emit_json({"pattern": pattern, "points_searched": [p.id for p in chosen], "matches": rows})
        return
    if not rows:
        echo(f"Nothing matches {pattern} in {len(chosen)} point(s).")
        return
    last = None
    for r in rows:
        if r["point"] != last:
            echo(f"point {r['point']} ({r['created']}):")
            last = r["point"]
        size = human_bytes(r["size"]) if r["size"] is not None else r["type"]
        echo(f"  {size:>10}  {r['mtime']}  {r['path']}")


@click.command("dump")
@click.argument("point")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--archive", type=click.Choice(["tar"]),
              help="Write PATH (a folder, or anything) as a tar stream (pax: modes, owners, times, links).")
@from_machine_option
@passphrase_option
@click.pass_context
def dump(ctx: click.Context, point: str, path: Path, archive: str | None, machine: str | None,
         passphrase_file: Path | None) -> None:
    """Write the file PATH of POINT to standard output (or, with --archive tar, PATH as a tar stream).

    Every blob is verified as it is read; the bytes are streamed, never held whole.
    Example: strongroom dump latest /etc --archive tar | tar -t"""
    if archive and sys.stdout.isatty():
        raise UsageError("refusing to write a tar stream to a terminal: pipe it (| tar -t) or redirect it (> FILE)")
    opened, (found,) = resolve(ctx, [point], passphrase_file, machine)
    raw = os.fsencode(path)
    entry = entry_at(opened.reader, found.manifest["tree"], raw)
    where = os.path.normpath(os.path.abspath(raw))
    out = sys.stdout.buffer
    try:
        if archive == "tar":
            dump_tar(opened.reader, entry, where if where != b"/" else b"",
                     out, lambda p, why: warn_line(f"{display_path(p)}: {why}"))
        else:
            dump_file(opened.reader, entry, where, out)
        out.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): not worth a message; stdout is closed quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        ctx.exit(EXIT_FAILURE)


def add_to(cli: click.Group) -> None:
    for command in (diff, find, dump):
        cli.add_command(command)
