"""`strongroom restore`: bring a point's files back, in place or under another folder."""

from __future__ import annotations

import os
from pathlib import Path

import click

from strongroom.agent.browse import selected_bytes
from strongroom.agent.jobrun import recorded_job
from strongroom.agent.pointbook import PointBook
from strongroom.agent.reader import RESTORE_SEALED_TREES_BYTES, WALK_TREE_CACHE_BYTES
from strongroom.agent.restore import CONFLICTS, Restore, select_entries
from strongroom.agent.restore_plan import DryRun, Selector, dry_run, selected, verify
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
from strongroom.errors import EXIT_FAILURE, UsageError, VaultUnreachable
from strongroom.model import FILE, display_path
from strongroom.testhook import hook


@click.command("restore")
@click.argument("point")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--target", required=True, metavar="original|DIR",
              help="`original` puts files back where they were; a folder restores under it, keeping their paths.")
@click.option("--conflict", type=click.Choice(CONFLICTS), default="copy", show_default=True,
              help="What to do when a file is already there.")
@click.option("--include", "includes", multiple=True, metavar="GLOB",
              help="Restore only what matches (a folder with all below it); repeatable.")
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
              help="Leave out what matches (a folder with all below it); repeatable.")
@click.option("--dry-run", "dry_run_only", is_flag=True, help="Say what would be written, skipped or copied; write nothing.")
@click.option("--verify", "verify_after", is_flag=True,
              help="Read back what was written and compare it with the point (exit 1 on a mismatch).")
@kinds_cmds.restore_kind_options
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def restore(ctx: click.Context, point: str, paths: tuple[Path, ...], target: str, conflict: str,
            includes: tuple[str, ...], excludes: tuple[str, ...], dry_run_only: bool, verify_after: bool,
            volume: Path | None, image: bool, force: bool, machine: str | None, passphrase_file: Path | None,
            as_json: bool) -> None:
    """Restore POINT (id, unique id prefix, or "latest"), all of it or the PATHS given; with
    --volume or --image, a point of that kind."""
    if dry_run_only and verify_after:
        raise UsageError("--dry-run writes nothing, so there is nothing to --verify")
    agent, vault, key, reader = open_agent(ctx, passphrase_file, machine)
    # Small: the byte count, the folders made first and the walk each read a tree, and reading
    # it again costs less than holding decoded trees (~5x their blobs: 20 MiB at the default).
    reader.tree_cache_bytes = WALK_TREE_CACHE_BYTES
    reader.sealed_bytes_max = RESTORE_SEALED_TREES_BYTES
    record = PointBook(agent, vault, key, machine).find(point)  # checked before anything is written
    manifest = record.manifest
    if image or force:
        if paths or includes or excludes or dry_run_only or verify_after:
            raise UsageError("--image restores the whole image: no PATHS, --include, --exclude, --dry-run or --verify")
        kinds_cmds.restore_image(ctx, agent, vault, key, reader, record, target, image, force, machine, as_json)
        return
    wanted = kinds_cmds.restore_paths(manifest, [os.fsencode(p) for p in paths], volume, target)
    selections = select_entries(reader, manifest["tree"], wanted, manifest["sources"])
    selector = Selector(includes, excludes)
    if selector.active:
        selections = selector.prepare(reader, selections)
    root = b"/" if target == "original" else os.fsencode(os.path.abspath(target))
    if target != "original" and os.path.lexists(root) and not os.path.isdir(root):
        raise UsageError(f"--target {target} exists and is not a directory")
    if dry_run_only:
        _print_dry_run(dry_run(reader, selector, selections, root, conflict, record.created_ns),
                       record.id, target, as_json)
        return
    os.makedirs(root, exist_ok=True)
    run = Restore(reader, record.created_ns, conflict, selector.keep if selector.active else None,
                  record_written=verify_after)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    interactive = not as_json and err_console().is_terminal
    total = 0
    if interactive:  # a tree walk: only for the bar
        total = (sum(e.get("s", 0) for _p, e in selected(reader, selector, selections) if e["t"] == FILE)
                 if selector.active else selected_bytes(reader, selections))
    source = machine if machine and machine != vault.machine else None
    try:
        with (agent.lock(), recorded_job(vault, key, agent.job_marker, "restore", source) as job,
              progress_bar(interactive, "Restoring", total, lambda: run.result.bytes_written)):
            job.point_id = record.id
            try:
                result = run.run(root_fd, selections)
            except VaultUnreachable as exc:
                raise VaultUnreachable(f"{exc}; the restore stopped after {run.result.files_restored} files: run it "
                                       "again with --conflict overwrite once the vault answers") from None
            errors = [{"path": display_path(p), "error": m} for p, m in result.errors]
            job.files, job.bytes, job.failed = result.files_restored, result.bytes_written, errors
    finally:
        os.close(root_fd)
    for note in job.notes:
        warn_line(note)
    extra = kinds_cmds.after_restore(manifest, root, target, record.id)
    mismatches: list[dict[str, str]] = []
    if run.written is not None:
        hook("restore-written")
        done = [0]
        with progress_bar(interactive, "Verifying", result.bytes_written, lambda: done[0]):
            mismatches = verify(reader, run.written, root, lambda n: done.__setitem__(0, done[0] + n))
    if as_json:
        doc = {"point": record.id, "kind": manifest["kind"], "target": target, **extra,
               "files_restored": result.files_restored,
               "files_skipped": result.files_skipped, "files_copied": result.files_copied,
               "bytes_written": result.bytes_written, "errors": errors}
        if run.written is not None:
            doc["verified"] = len(run.written) - len(mismatches)
            doc["mismatches"] = mismatches
        emit_json(doc)
    else:
        echo(f"Restored {result.files_restored} files ({human_bytes(result.bytes_written)}) from point "
             f"{record.id}; {result.files_skipped} skipped, {result.files_copied} written as copies.")
        if run.written is not None:
            for m in mismatches:
                warn_line(f"{m['path']}: {m['error']}")
            echo(f"Verified {len(run.written) - len(mismatches)} of {len(run.written)} entries written"
                 + (f"; {len(mismatches)} differ from the point." if mismatches else ": all match the point."))
    if mismatches:
        if not as_json:
            for p in errors:
                warn_line(f"{p['path']}: {p['error']}")
        ctx.exit(EXIT_FAILURE)
    exit_if_incomplete(ctx, errors, as_json, "could not be restored")


def _print_dry_run(plan: DryRun, point_id: str, target: str, as_json: bool) -> None:
    c = plan.counts
    if as_json:
        emit_json({"point": point_id, "target": target, "dry_run": True, "files_to_write": c["write"],
                   "files_to_overwrite": c["overwrite"], "files_to_skip": c["skip"], "files_to_copy": c["copy"],
                   "refused": c["refuse"], "bytes_to_write": plan.bytes_to_write, "entries": plan.entries})
        return
    for row in plan.entries:
        extra = f" as {row['as']}" if "as" in row else f" ({row['reason']})" if "reason" in row else ""
        echo(f"{row['action']:<9} {row['path']}{extra}")
    echo(f"Would write {c['write']} new, overwrite {c['overwrite']}, skip {c['skip']}, write {c['copy']} as copies "
         f"({human_bytes(plan.bytes_to_write)}) from point {point_id}"
         + (f"; {c['refuse']} refused" if c["refuse"] else "") + "; nothing was written.")


def add_to(cli: click.Group) -> None:
    cli.add_command(restore)
