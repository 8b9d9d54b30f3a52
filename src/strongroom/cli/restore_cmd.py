"""`strongroom restore`: bring a point's files back, in place or under another folder."""

from __future__ import annotations

import os
from pathlib import Path

import click

from strongroom.agent.browse import selected_bytes
from strongroom.agent.jobrun import recorded_job
from strongroom.agent.pointbook import PointBook
from strongroom.agent.restore import CONFLICTS, Restore, select_entries
from strongroom.cli import kinds_cmds
from strongroom.cli.common import (
    echo,
    emit_json,
    err_console,
    exit_if_incomplete,
    from_machine_option,
    human_bytes,
    json_option,
    open_agent,
    passphrase_option,
    progress_bar,
    warn_line,
)
from strongroom.errors import UsageError
from strongroom.model import display_path


@click.command("restore")
@click.argument("point")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--target", required=True, metavar="original|DIR",
              help="`original` puts files back where they were; a folder restores under it, keeping their paths.")
@click.option("--conflict", type=click.Choice(CONFLICTS), default="copy", show_default=True,
              help="What to do when a file is already there.")
@kinds_cmds.restore_kind_options
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def restore(ctx: click.Context, point: str, paths: tuple[Path, ...], target: str, conflict: str,
            volume: Path | None, image: bool, force: bool, machine: str | None, passphrase_file: Path | None,
            as_json: bool) -> None:
    """Restore POINT (id, unique id prefix, or "latest"), all of it or the PATHS given; with
    --volume or --image, a point of that kind."""
    agent, vault, key, reader = open_agent(ctx, passphrase_file, machine)
    record = PointBook(agent, vault, key, machine).find(point)  # checked before anything is written
    manifest = record.manifest
    if image or force:
        kinds_cmds.restore_image(ctx, agent, vault, key, reader, record, target, image, force, machine, as_json)
        return
    wanted = kinds_cmds.restore_paths(manifest, [os.fsencode(p) for p in paths], volume, target)
    selections = select_entries(reader, manifest["tree"], wanted, manifest["sources"])
    if target == "original":
        root = b"/"
    else:
        root = os.fsencode(os.path.abspath(target))
        if os.path.lexists(root) and not os.path.isdir(root):
            raise UsageError(f"--target {target} exists and is not a directory")
        os.makedirs(root, exist_ok=True)
    run = Restore(reader, record.created_ns, conflict)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    interactive = not as_json and err_console.is_terminal
    total = selected_bytes(reader, selections) if interactive else 0  # a tree walk: only for the bar
    source = machine if machine and machine != vault.machine else None
    try:
        with (agent.lock(), recorded_job(vault, key, agent.job_marker, "restore", source) as job,
              progress_bar(interactive, "Restoring", total, lambda: run.result.bytes_written)):
            job.point_id = record.id
            result = run.run(root_fd, selections)
            errors = [{"path": display_path(p), "error": m} for p, m in result.errors]
            job.files, job.bytes, job.failed = result.files_restored, result.bytes_written, errors
    finally:
        os.close(root_fd)
    for note in job.notes:
        warn_line(note)
    extra = kinds_cmds.after_restore(manifest, root, target, record.id)
    if as_json:
        emit_json({"point": record.id, "kind": manifest["kind"], "target": target, **extra, "files_restored": result.files_restored,
                   "files_skipped": result.files_skipped, "files_copied": result.files_copied,
                   "bytes_written": result.bytes_written, "errors": errors})
    else:
        echo(f"Restored {result.files_restored} files ({human_bytes(result.bytes_written)}) from point "
             f"{record.id}; {result.files_skipped} skipped, {result.files_copied} written as copies.")
    exit_if_incomplete(ctx, errors, as_json, "could not be restored")


def add_to(cli: click.Group) -> None:
    cli.add_command(restore)
