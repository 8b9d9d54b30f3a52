"""`strongroom backup`: back up paths now, on demand."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from strongroom.agent.cachedir import space_note
from strongroom.agent.jobrun import prepare_backup, run_backup_job
from strongroom.agent.kinds import prepare_kind_backup
from strongroom.agent.seed import WAITING, prepare_seed
from strongroom.agent.selection import Selection
from strongroom.cli.backup_more import Extras, dry_run, more_options, prepare_stdin
from strongroom.cli import handover, kinds_cmds
from strongroom.cli.common import (
    echo,
    emit_json,
    exit_if_incomplete,
    human_bytes,
    iso,
    json_option,
    live_status,
    open_agent,
    passphrase_option,
    warn_line,
)
from strongroom.cli.selection_opts import chosen, pop_options, selection_options
from strongroom.errors import UsageError
from strongroom.model import display_path


@click.command("backup")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
              help="Leave out matching paths (a pattern without / matches names). Repeatable.")
@click.option("--retain-until", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Keep this point at least until that day ends, whatever the policy says.")
@click.option("--offline-seed", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="Write this first backup to DIR (a disk to ship to the vault's site, where "
              "`strongroom vault import-seed` takes it in) instead of sending it.")
@click.option("--unoptimized", is_flag=True,
              help="Scan every file, whatever the change journal says (as the first backup does).")
@selection_options
@more_options
@kinds_cmds.backup_kind_options
@passphrase_option
@json_option
@click.pass_context
def backup(ctx: click.Context, paths: tuple[Path, ...], excludes: tuple[str, ...], retain_until: datetime | None,
           offline_seed: Path | None, unoptimized: bool, volume: Path | None, allow_tmpfs: bool,
           system_state: bool, image: Path | None, passphrase_file: Path | None, as_json: bool,
           **more: Any) -> None:
    """Back up PATHS now (on demand, outside the schedule) and record a recovery point; or, with
    --volume, --system-state or --image, a point of that kind."""
    if retain_until is not None and retain_until.date() < date.today():
        raise UsageError("--retain-until is in the past")
    kind = kinds_cmds.chosen_kind(paths, volume, system_state, image)
    picked = chosen(excludes, pop_options(more))
    extra = kinds_cmds.kind_extras(kind, more, picked, offline_seed) if kind != "files" \
        else Extras.from_options(more, paths, picked, offline_seed)
    agent, vault, key, _reader = open_agent(ctx, passphrase_file)
    if short := space_note(agent.cache):  # said before the backup starts, not after it failed
        warn_line(short)
    sources = [os.fsencode(p) for p in paths] + picked.listed
    selection = Selection(picked.rules)
    if extra.dry_run:
        return dry_run(ctx, agent, vault, key, sources, picked, extra, as_json)
    if kind != "files":
        run = prepare_kind_backup(agent, vault, key, kind, picked.excludes, volume, allow_tmpfs, image)
    elif extra.stdin_name is not None:
        run = prepare_stdin(agent, vault, key, extra, [os.fsdecode(p) for p in paths])
    elif offline_seed is not None:
        run = prepare_seed(agent, vault, key, sources, picked.excludes, offline_seed, selection)
    else:
        run = prepare_backup(agent, vault, key, sources, picked.excludes, selection)
    extra.apply(run, picked, as_json)
    run.unoptimized = unoptimized
    if retain_until is not None:  # to the end of that day, local time
        run.retain_until_ns = int((retain_until + timedelta(days=1)).astimezone().timestamp() * 1e9)
    c = run.counters

    def status() -> str:
        return (f"Backing up: {c.files_new + c.files_changed + c.files_unchanged} files, "
                f"{human_bytes(c.bytes_read)} read")

    with live_status(not as_json, status):
        result, warnings, notes = run_backup_job(agent, vault, run, WAITING if offline_seed else None)
    for note in notes:
        warn_line(note)
    s = result.stats
    if as_json:
        seed = {"offline_seed": str(offline_seed.absolute()), "status": WAITING} if offline_seed else {}
        emit_json({"id": result.point.id, "created": iso(result.point.created_ns), "kind": result.point.kind,
                   "mode": result.point.mode, "mode_reason": result.mode_reason, **kinds_cmds.kind_fields(run.manifest_extra),
                   "snapshot": run.view.kind if run.view else None, "sources": [display_path(s) for s in run.sources],
                   "tags": extra.tags, "stats": result.stats,
                   "warnings": warnings, **seed, **_via()})
    elif offline_seed is not None:
        echo(f"Recovery point {result.point.id} written to the offline seed {offline_seed.absolute()}: "
             f"{s['files_new']} files, {human_bytes(s['bytes_added'])} in {s['packs_added']} packs.")
        echo("The vault waits for it: take the disk to the vault's host and run there "
             f"`strongroom vault import-seed VAULT {offline_seed.absolute()}`.")
    else:
        snap = f", read from a {run.view.kind} snapshot" if run.view and run.view.kind else ""
        echo(f"Recovery point {result.point.id} created ({result.point.kind}, {result.point.mode} mode: "
             f"{result.mode_reason}{snap}).")
        kinds_cmds.echo_summary(run.manifest_extra)
        if result.point.kind == "image":
            echo(f"Data: {human_bytes(s['image_data_bytes'])} in {s['image_extents']} extent(s); "
                 "holes and zero runs not stored.")
        else:
            echo(f"Files: {s['files_new']} new, {s['files_changed']} changed, "
                 f"{s['files_unchanged']} unchanged; {s['dirs']} directories.")
        echo(f"Read {human_bytes(s['bytes_read'])} of {human_bytes(s['bytes_total'])}; "
             f"added {human_bytes(s['bytes_added'])} to the vault in {s['duration_s']:.1f} s"
             f"{' (run by the agent daemon)' if handover.VIA[0] == 'daemon' else ''}.")
    exit_if_incomplete(ctx, warnings, as_json, "were not backed up as they were")


def _via() -> dict[str, str]:
    """How the backup ran: "daemon" (handed to `strongroom agent run`) or "in-process", and why."""
    how, why = handover.VIA
    return {"via": how, **({"via_reason": why} if why else {})}


def add_to(cli: click.Group) -> None:
    cli.add_command(backup)
