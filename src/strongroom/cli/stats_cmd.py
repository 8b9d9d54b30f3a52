"""`strongroom stats`: what a point or this machine holds (files, logical bytes), what is
left after deduplication and after compression, and what forgetting one point would free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from strongroom.agent.tally import Tally
from strongroom.cli.common import echo, emit_json, human_bytes, json_option, live_status, passphrase_option
from strongroom.cli.pointref import open_points


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 3) if b else None


@click.command("stats")
@click.argument("point", required=False)
@passphrase_option
@json_option
@click.pass_context
def stats(ctx: click.Context, point: str | None, passphrase_file: Path | None, as_json: bool) -> None:
    """Sizes of POINT (id, unique prefix or "latest"), or of all of this machine's points.

    Files and logical size are what a restore would write (for the machine: summed over its
    points); unique size is the content left after deduplication; stored size is what the
    vault holds for it after compression and encryption. For one point, "freed if
    forgotten" is what only that point keeps in the vault."""
    opened = open_points(ctx, passphrase_file)
    chosen = [opened.find(point)] if point else opened.live
    with Tally(opened.reader, opened.agent.cache) as tally, \
            live_status(not as_json, lambda: f"Counting {len(chosen)} point(s)"):
        files = logical = 0
        for p in chosen:
            f, s = tally.point(p.manifest["tree"])
            files, logical = files + f, logical + s
        unique, estimated = tally.unique_bytes(), tally.estimated
    stored = opened.vault.usage(chosen[0].id if point else None)
    doc: dict[str, Any] = {"point": chosen[0].id} if point else {"machine": opened.book.machine,
                                                                   "points": len(chosen)}
    doc.update({"files": files, "logical_bytes": logical, "unique_bytes": unique,
                "unique_bytes_estimated": estimated, "stored_bytes": stored["stored_bytes"],
                "data_stored_bytes": stored["data_stored_bytes"], "blobs": stored["blobs"],
                "data_blobs": stored["data_blobs"], "dedup_ratio": _ratio(logical, unique),
                "compression_ratio": _ratio(unique, stored["data_stored_bytes"]),
                "missing_blobs": stored["missing_blobs"]})
    if point:
        doc.update({"freed_if_forgotten_bytes": stored["exclusive_stored_bytes"],
                    "freed_if_forgotten_blobs": stored["exclusive_blobs"]})
    else:
        doc["packs_bytes"] = stored["packs_bytes"]
    if as_json:
        emit_json(doc)
        return
    about = f"Point {doc['point']}" if point else f"Machine {doc['machine']} ({doc['points']} points)"
    echo(f"{about}:")
    echo(f"  files:             {files}")
    echo(f"  logical size:      {human_bytes(logical)}" + ("  (summed over the points)" if not point else ""))
    echo(f"  unique size:       {human_bytes(unique)}" + ("  (estimated: see README)" if estimated else "")
         + (f"  (dedup ratio {doc['dedup_ratio']})" if doc["dedup_ratio"] else ""))
    echo(f"  stored size:       {human_bytes(doc['stored_bytes'])}  ({doc['blobs']} blobs; content "
         f"{human_bytes(doc['data_stored_bytes'])}, compression ratio {doc['compression_ratio'] or '-'})")
    if point:
        echo(f"  freed if forgotten: {human_bytes(doc['freed_if_forgotten_bytes'])}  "
             f"({doc['freed_if_forgotten_blobs']} blobs only this point keeps)")
    else:
        echo(f"  packs in the vault: {human_bytes(doc['packs_bytes'])}  (including what the next prune reclaims)")
    if doc["missing_blobs"]:
        echo(f"  {doc['missing_blobs']} referenced blob(s) are missing from the vault: run `strongroom check`")


def add_to(cli: click.Group) -> None:
    cli.add_command(stats)
