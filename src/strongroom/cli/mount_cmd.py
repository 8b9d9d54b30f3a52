"""`strongroom mount` and `strongroom unmount`: browse every recovery point as a read-only
folder (MARS's Instant Restore) and copy out what is needed with the usual tools."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import click

from strongroom.agent.jobrun import recorded_job
from strongroom.agent.mount import fuse_missing, marker_for, prepare_mountpoint, serve, unmount
from strongroom.agent.mount_content import DISK_BYTES, BlobSource, CachingReader, DiskCache
from strongroom.agent.mount_fs import PointsFS
from strongroom.agent.pointbook import PointBook
from strongroom.cli.common import (
    echo,
    emit_json,
    from_machine_option,
    home,
    human_bytes,
    iso,
    json_option,
    open_agent,
    passphrase_option,
    warn_line,
)
from strongroom.errors import StrongroomError, UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "6h", "2d" or "0" (never)."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd]?)\s*", text)
    if match is None or (match.group(2) == "" and match.group(1) != "0"):
        raise UsageError(f"--unmount-after {text!r}: give a number with s, m, h or d (e.g. 6h), or 0 for never")
    return int(match.group(1)) * _UNITS.get(match.group(2), 0)


@click.command("mount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--unmount-after", "unmount_after", default="6h", show_default=True, metavar="DURATION",
              help="Unmount by itself after this long (s, m, h, d; 0 = never).")
@click.option("--cache-size", type=click.IntRange(0, None), default=DISK_BYTES // 2**20, show_default=True,
              metavar="MIB", help="Bound of the cache of fetched blobs in the agent's cache folder (served vaults).")
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def mount(ctx: click.Context, mountpoint: Path, unmount_after: str, cache_size: int, machine: str | None,
          passphrase_file: Path | None, as_json: bool) -> None:
    """Show every recovery point of this machine (or another's) read only at MOUNTPOINT, until
    the time is up, Ctrl-C, SIGTERM or `strongroom unmount MOUNTPOINT`."""
    seconds = parse_duration(unmount_after)
    missing = fuse_missing()
    if missing:
        raise StrongroomError(f"cannot mount: {missing}")
    agent, vault, key, _reader = open_agent(ctx, passphrase_file, machine)
    path = prepare_mountpoint(mountpoint)
    # An embedded vault is on a local disk already: a cache would only copy it.
    disk = DiskCache(agent.cache, cache_size * 2**20) if not vault.local and cache_size else None
    reader = CachingReader(vault, key, machine, disk)
    source = BlobSource(reader)
    fs = PointsFS(PointBook(agent, vault, key, machine), reader, source, warn_line)
    fs.refresh(force=True)  # a vault that presents bad points is refused before anything is mounted
    ends = time.time() + seconds if seconds else None

    def ready() -> None:
        if as_json:
            return
        until = f"until {iso(int(ends * 1e9))}" if ends else "until unmounted"
        echo(f"Mounted {len(fs.points)} recovery point(s) at {path} (read only), {until}; "
             f"Ctrl-C or `strongroom unmount {path}` ends it.")
        sys.stdout.flush()

    source_machine = machine if machine and machine != vault.machine else None
    try:
        with recorded_job(vault, key, marker_for(agent.path, path), "mount", source_machine) as job:
            job.mode = "mount"
            try:
                reason = serve(fs, path, seconds, ready)
            finally:
                job.files, job.bytes = fs.stats.files_opened, fs.stats.bytes_read
                job.failed = [{"path": str(path), "error": e} for e in fs.stats.errors]
    finally:
        if disk is not None:
            disk.close()
    for note in job.notes:
        warn_line(note)
    ended = {"time": "the time given ran out", "signal": "interrupted", "unmounted": "unmounted"}[reason]
    if as_json:
        emit_json({"mountpoint": str(path), "points": len(fs.points), "ended": reason,
                   "files_opened": fs.stats.files_opened, "bytes_read": fs.stats.bytes_read,
                   "bytes_fetched": reader.fetched_bytes, "read_errors": len(fs.stats.errors)})
    else:
        echo(f"Unmounted {path} ({ended}): {fs.stats.files_opened} files opened, "
             f"{human_bytes(fs.stats.bytes_read)} read, {human_bytes(reader.fetched_bytes)} fetched from the vault.")


@click.command("unmount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def unmount_cmd(ctx: click.Context, mountpoint: Path, as_json: bool) -> None:
    """End the strongroom mount at MOUNTPOINT (also one whose process was killed)."""
    alive = unmount(mountpoint)
    path = os.path.abspath(mountpoint)
    if not alive:
        _fail_stale_job(ctx, Path(path))
    if as_json:
        emit_json({"mountpoint": path, "stale": not alive})
    else:
        echo(f"Unmounted {path}" + ("" if alive else " (its process had died; the stale mount is cleaned)") + ".")


def _fail_stale_job(ctx: click.Context, path: Path) -> None:
    """Records the job of a killed mount as failed, if this home started it."""
    agent = home(ctx)
    marker = marker_for(agent.path, path)
    if not agent.registered or not marker.exists():
        return
    job_id = marker.read_text().strip()
    try:
        agent.vault().finish_job(job_id, "failed", message="the mount process stopped before it was unmounted")
    except StrongroomError as exc:
        warn_line(f"the vault did not record the end of mount job {job_id}: {exc}")
        return
    marker.unlink(missing_ok=True)


def add_to(cli: click.Group) -> None:
    cli.add_command(mount)
    cli.add_command(unmount_cmd)
