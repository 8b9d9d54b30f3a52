"""`strongroom check`: verify the vault's structure and, with --read-data, every blob."""

from __future__ import annotations

from pathlib import Path

import click

from strongroom.agent.check import check
from strongroom.agent.pointbook import PointBook
from strongroom.agent.subset import parse_subset
from strongroom.cli.common import (
    echo,
    emit_json,
    json_option,
    live_status,
    open_agent,
    passphrase_option,
)
from strongroom.errors import EXIT_FAILURE


@click.command("check")
@click.option("--read-data", is_flag=True, help="Read, decrypt and verify every blob of this machine.")
@click.option("--read-data-subset", "subset_text", metavar="N/M|P%",
              help="Read only a subset of the packs: group N of M (M runs cover every pack) or a random P%.")
@passphrase_option
@json_option
@click.pass_context
def check_cmd(ctx: click.Context, read_data: bool, subset_text: str | None, passphrase_file: Path | None,
              as_json: bool) -> None:
    """Verify this machine's backups in the vault."""
    subset = parse_subset(subset_text) if subset_text is not None else None  # before the passphrase
    read_data = read_data or subset is not None
    agent, vault, key, reader = open_agent(ctx, passphrase_file)
    with live_status(not as_json, lambda: "Checking..."):
        report = check(reader, PointBook(agent, vault, key).live(), read_data, subset)
    if as_json:
        doc = {"ok": report.ok, "points_checked": report.points_checked, "packs_checked": report.packs_checked,
               "blobs_checked": report.blobs_checked, "orphan_packs": len(report.orphan_packs),
               "errors": report.errors}
        if subset is not None:
            doc.update(subset=subset_text, packs_total=report.packs_total)
        emit_json(doc)
    else:
        for e in report.errors:
            where = " ".join(f"{k} {e[k]}" for k in ("point", "pack", "blob") if k in e)
            echo(f"error: {where + ': ' if where else ''}{e['error']}", err=True)
            for f in e.get("files", [])[:20]:
                echo(f"  affects {f}", err=True)
            if len(e.get("files", [])) > 20:
                echo(f"  ... and {len(e['files']) - 20} more files", err=True)
        if report.orphan_packs:
            echo(f"note: {len(report.orphan_packs)} pack(s) in storage are not indexed (left by an "
                 "interrupted backup); they hold no data of any point and will be reclaimed by pruning.")
        status = "no errors found" if report.ok else f"{len(report.errors)} error(s) found"
        echo(f"Checked {report.points_checked} points"
             + (f", {report.packs_checked} packs, {report.blobs_checked} blobs" if read_data else "")
            + (f" (subset {subset_text} of {report.packs_total} packs)" if subset is not None else "")
             + f": {status}.")
    if not report.ok:
        ctx.exit(EXIT_FAILURE)


def add_to(cli: click.Group) -> None:
    cli.add_command(check_cmd)
