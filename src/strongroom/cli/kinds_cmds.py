"""The kinds of recovery point beyond files: the options `backup` and `restore` take for them
(`--volume`, `--system-state`, `--image`), how their results are shown, and the commands of
their own (`export`, `system-state apply`).

backup_cmd.py and restore_cmd.py call in here through a few hooks, so that each kind's
logic stays in agent/volume.py, agent/system_state.py and agent/image.py.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from strongroom.cli.backup_more import Extras, parse_tags
from strongroom.cli.selection_opts import Chosen

from strongroom.agent.home import AgentHome
from strongroom.agent.image import ImageWriter, check_device_target, image_entry
from strongroom.agent.jobrun import recorded_job
from strongroom.agent.pointbook import OpenedPoint, PointBook
from strongroom.vhd import vhd_footer, vhd_size
from strongroom.agent.reader import BlobReader
from strongroom.agent.system_state import INDEX, STATE_DIR, apply_commands, restore_md
from strongroom.agent.volume import VolumeInfo, mount_at
from strongroom.cli.common import (
    echo,
    emit_json,
    err_console,
    from_machine_option,
    human_bytes,
    json_option,
    open_agent,
    passphrase_option,
    progress_bar,
    warn_line,
)
from strongroom.crypto import MasterKey
from strongroom.errors import StrongroomError, UsageError
from strongroom.fsutil import write_all
from strongroom.model import display_path
from strongroom.vault.interface import Vault

KINDS = ("files", "volume", "system-state", "image")


def backup_kind_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `backup` that choose another kind of point than files."""
    for option in reversed((
        click.option("--volume", type=click.Path(path_type=Path, file_okay=False), metavar="MOUNTPOINT",
                     help="Back up the whole filesystem mounted there (kind volume), staying on it."),
        click.option("--allow-tmpfs", is_flag=True, help="With --volume: accept a tmpfs (gone at reboot)."),
        click.option("--system-state", is_flag=True,
                     help="Back up what makes this machine itself (kind system-state): /etc, boot "
                     "configuration, package selections, units, partition tables, ..."),
        click.option("--image", type=click.Path(path_type=Path, dir_okay=False), metavar="DEVICE|FILE",
                     help="Back up a block device or image file block by block (kind image)."),
    )):
        f = option(f)
    return f


def chosen_kind(paths: tuple[Path, ...], volume: Path | None, system_state: bool, image: Path | None) -> str:
    """The kind a `backup` command line asks for; exactly one kind per point (a files backup's
    own checks, PATHS or --files-from or --stdin, are backup_more's)."""
    asked = [k for k, v in (("volume", volume), ("system-state", system_state), ("image", image)) if v]
    if len(asked) > 1:
        raise UsageError(f"--{asked[0]} and --{asked[1]} make different kinds of point: run them one at a time")
    if asked and paths:
        raise UsageError(f"--{asked[0]} takes no PATHS (a point holds one kind)")
    return asked[0] if asked else "files"


def kind_extras(kind: str, more: dict[str, Any], picked: Chosen, offline_seed: Path | None) -> Extras:
    """The further `backup` options a point of another kind takes: --tag, --verbose and --exclude
    (volume and system-state); the rest is refused in one line."""
    if offline_seed is not None:
        raise UsageError(f"--offline-seed takes files only, not --{kind}")
    if more["stdin_name"] is not None or more["stdin_from_command"]:
        raise UsageError(f"--stdin makes a files point: run it apart from --{kind}")
    if more["dry_run"]:
        raise UsageError(f"--dry-run applies to files; --{kind} has no dry run")
    if picked.rules or picked.listed or picked.missing:
        raise UsageError(f"of the selection options, --{kind} takes --exclude and --exclude-from only")
    return Extras(verbose=more["verbose"], tags=parse_tags(more["tags"]))


def kind_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    """A point's kind-specific fields, for JSON (points, backup)."""
    out: dict[str, Any] = {}
    if "volume" in manifest:
        out["volume"] = VolumeInfo.shown(manifest["volume"])
        out["not_crossed"] = [display_path(p) for p in manifest.get("not_crossed", ())]
    if "system_state" in manifest:
        ss = manifest["system_state"]
        out["system_state"] = {"dir": display_path(ss["dir"]), "real_sources": [display_path(p) for p in ss["real_sources"]]}
    if "image" in manifest:
        out["image"] = {**manifest["image"], "source": display_path(manifest["image"]["source"])}
    return out


def add_point_kinds(vault: Vault, jobs: list[dict[str, Any]]) -> None:
    """Sets each job's `point_kind`: the kind of the point it made or restored, from the vault's
    plaintext list of points (null when the point is gone or not the vault's to show here)."""
    kinds: dict[str, str] = {}
    def owner(job: dict[str, Any]) -> str:
        return job.get("source_machine") or job["machine"]  # a restore from another machine: its point

    for machine in {owner(j) for j in jobs if j.get("point_id")}:
        try:
            kinds.update({p.id: p.kind for p in vault.points(None if machine == vault.machine else machine)})
        except StrongroomError:
            continue
    for j in jobs:
        j["point_kind"] = kinds.get(j.get("point_id") or "")


def kind_cell(row: dict[str, Any]) -> str:
    """The Kind column of `points`: the kind, and what a volume or image point is of."""
    if "volume" in row:
        v = row["volume"]
        return f"volume ({v['fstype']}, UUID {v['uuid'] or '-'}, label {v['label'] or '-'}, {human_bytes(v['size'])})"
    if "image" in row:
        return f"image ({human_bytes(row['image']['size'])})"
    return row["kind"]


def kind_summary(manifest: dict[str, Any]) -> list[str]:
    """Lines that say what a point of this kind holds, for people."""
    lines = []
    if "volume" in manifest:
        v = manifest["volume"]
        lines.append(f"Volume {display_path(v['mount'])}: {v['fstype']} on {v['device']}, "
                     f"UUID {v['uuid'] or '-'}, label {v['label'] or '-'}, {human_bytes(v['size'])} "
                     f"({human_bytes(v['used'])} used).")
        crossed = manifest.get("not_crossed", ())
        lines.append("Stayed on this filesystem; nested mounts not crossed: "
                     + (", ".join(display_path(p) for p in crossed) if crossed else "none") + ".")
    if "image" in manifest:
        i = manifest["image"]
        lines.append(f"Image of {'device' if i['device'] else 'file'} {display_path(i['source'])}: "
                     f"{human_bytes(i['size'])}.")
    return lines


def echo_summary(manifest: dict[str, Any]) -> None:
    for line in kind_summary(manifest):
        echo(line)


def restore_kind_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `restore` for points of other kinds."""
    for option in reversed((
        click.option("--volume", type=click.Path(path_type=Path, file_okay=False), metavar="MOUNTPOINT",
                     help="Restore a volume point of the filesystem mounted there (PATHS: folders of it)."),
        click.option("--image", is_flag=True, help="Restore an image point to the device or file --target names."),
        click.option("--force", is_flag=True, help="With --image: write over an existing unmounted device or file."),
    )):
        f = option(f)
    return f


def restore_paths(manifest: dict[str, Any], paths: list[bytes], volume: Path | None, target: str) -> list[bytes]:
    """The paths a files-like restore selects: for a volume, PATHS are inside it (relative to
    it, or absolute under it) and the whole volume by default."""
    kind = manifest["kind"]
    if kind == "image":
        raise UsageError("this is an image point: restore it with --image --target DEVICE|FILE, or export it")
    if kind == "system-state" and not paths and volume is None:
        # to a folder: the generated pieces too; in place, only the real files (never /system-state)
        real = list(manifest["sources"])
        return real if target == "original" else real + [manifest["system_state"]["dir"]]
    if volume is None:
        return paths
    if kind != "volume":
        raise UsageError(f"--volume restores a volume point; this point is of kind {kind}")
    recorded = manifest["volume"]["mount"]
    asked = os.path.realpath(os.path.abspath(os.fsencode(volume))) if os.path.exists(volume) \
        else os.path.normpath(os.path.abspath(os.fsencode(volume)))
    if asked != recorded:
        raise UsageError(f"this point is of the volume mounted at {display_path(recorded)}, "
                         f"not {display_path(asked)}")
    if target == "original" and mount_at(recorded) is None:
        raise UsageError(f"no volume is mounted at {display_path(recorded)}: mount it (or its replacement) "
                         "there first, or restore to a folder")
    out = []
    for p in paths:
        full = os.path.normpath(p if p.startswith(b"/") else os.path.join(recorded, p))
        if full != recorded and not full.startswith(recorded.rstrip(b"/") + b"/"):
            raise UsageError(f"{display_path(p)} is not on the volume {display_path(recorded)}")
        out.append(full)
    return out or [recorded]


def after_restore(manifest: dict[str, Any], root: bytes, target: str, point_id: str) -> dict[str, Any]:
    """What a restore of this kind adds once its files are in place (JSON fields): a system
    state restored to a folder gets its RESTORE.md."""
    if manifest["kind"] != "system-state" or target == "original":
        return {}
    folder = Path(os.fsdecode(root))
    if not (folder / STATE_DIR.decode() / INDEX).is_file():
        return {}  # only some files were restored
    guide = folder / "RESTORE.md"
    text = restore_md(folder, point_id).encode()
    write_file_atomically(os.fsencode(guide), True, lambda fd: write_all(fd, text))
    return {"restore_md": str(guide)}


def restore_image(ctx: click.Context, agent: AgentHome, vault: Vault, key: MasterKey, reader: BlobReader,
                  point: OpenedPoint, target: str, image: bool, force: bool, machine: str | None,
                  as_json: bool) -> None:
    """`restore POINT --image --target DEVICE|FILE`."""
    if not image:
        raise UsageError("--force goes with --image (a volume or files restore has --conflict)")
    entry = image_entry(reader, point.manifest)
    size = entry["s"]
    path = os.fsencode(os.path.abspath(target))
    st = os.lstat(path) if os.path.lexists(path) else None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{target} is a symlink: give the device or file it points to "
                         f"({display_path(os.path.realpath(path))})")
    device = st is not None and stat.S_ISBLK(st.st_mode)
    if path.startswith(b"/dev/") and not device:
        raise UsageError(f"{target} is not a block device (a file under /dev is refused: a mistyped device name)")
    writer = ImageWriter(reader, entry)
    source = machine if machine and machine != vault.machine else None
    with (agent.lock(), recorded_job(vault, key, agent.job_marker, "restore", source) as job,
          progress_bar(not as_json and err_console().is_terminal, "Restoring the image", size,
                       lambda: writer.written)):
        job.point_id = point.id
        if device:
            fd = check_device_target(path, size, force)
            try:
                writer.to_device(fd)
            except BaseException:
                warn_line(f"the restore of {target} did not finish: the device is incomplete (its first MiB "
                          "is zeroed, so it does not look whole); run the restore again")
                raise
            finally:
                os.close(fd)
        else:
            write_file_atomically(path, force, writer.to_file)
        job.files, job.bytes = 1, writer.written
    for note in job.notes:
        warn_line(note)
    if as_json:
        emit_json({"point": point.id, "kind": "image", "target": target, "device": bool(device), "size": size,
                   "bytes_written": writer.written})
    else:
        echo(f"Restored the image of point {point.id} ({human_bytes(size)}) to "
             f"{'device' if device else 'file'} {target}; {human_bytes(writer.written)} written.")


def write_file_atomically(path: bytes, force: bool, fill: Callable[[int], None]) -> None:
    """Writes a new file through `fill(fd)` under a temporary name in its folder, then renames it
    into place: an interrupted write leaves only a file named as incomplete."""
    shown = display_path(path)
    if os.path.lexists(path):
        if os.path.isdir(path) or os.path.islink(path):
            raise UsageError(f"{shown} is a folder or a symlink: give a file name")
        if not force:
            raise UsageError(f"{shown} exists: add --force to replace it")
    folder, name = os.path.split(path)
    if not os.path.isdir(folder):
        raise UsageError(f"the folder of {shown} does not exist")
    tmp = os.path.join(folder, b"." + name + b".strongroom-incomplete-" + os.urandom(4).hex().encode())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fill(fd)
        os.fsync(fd)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@click.command("export")
@click.argument("point")
@click.option("--vhd", "vhd", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write the image as a fixed VHD (the format MARS builds its backups in).")
@click.option("--raw", "raw", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write the image as a raw disk image (sparse where the image has holes).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@from_machine_option
@passphrase_option
@json_option
@click.pass_context
def export(ctx: click.Context, point: str, vhd: Path | None, raw: Path | None, force: bool, machine: str | None,
           passphrase_file: Path | None, as_json: bool) -> None:
    """Write image POINT (id, unique id prefix, or "latest") to a file: --vhd or --raw."""
    if (vhd is None) == (raw is None):
        raise UsageError("give one of --vhd FILE or --raw FILE")
    agent, vault, key, reader = open_agent(ctx, passphrase_file, machine)
    opened = PointBook(agent, vault, key, machine).find(point)
    entry = image_entry(reader, opened.manifest)
    writer = ImageWriter(reader, entry)
    out = vhd or raw
    assert out is not None
    size = entry["s"]

    def fill(fd: int) -> None:
        writer.to_file(fd)
        if vhd is not None:
            padded = vhd_size(size)
            os.ftruncate(fd, padded)
            os.pwrite(fd, vhd_footer(padded), padded)

    source = machine if machine and machine != vault.machine else None
    with (agent.lock(), recorded_job(vault, key, agent.job_marker, "restore", source) as job,
          progress_bar(not as_json and err_console().is_terminal, "Exporting", size, lambda: writer.written)):
        job.point_id = opened.id
        write_file_atomically(os.fsencode(os.path.abspath(out)), force, fill)
        job.files, job.bytes = 1, writer.written
    fmt = "vhd" if vhd is not None else "raw"
    if as_json:
        emit_json({"point": opened.id, "format": fmt, "file": str(out.absolute()), "size": size,
                   "bytes_written": writer.written})
    else:
        echo(f"Exported the image of point {opened.id} ({human_bytes(size)}) as {fmt} to {out.absolute()}.")


@click.group("system-state")
def system_state_group() -> None:
    """A restored system state: apply its package selections and units."""


@system_state_group.command("apply")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--dry-run", is_flag=True, help="Print the commands; run nothing.")
@json_option
def apply_cmd(folder: Path, dry_run: bool, as_json: bool) -> None:
    """Reinstall the package selections and re-enable the units of the system state restored
    to FOLDER (by `strongroom restore POINT --target FOLDER`)."""
    commands = apply_commands(folder.absolute())
    ran = []
    for c in commands:
        shown = " ".join(shlex.quote(a) for a in c["argv"]) + (f" < {shlex.quote(c['stdin'])}" if c["stdin"] else "")
        if dry_run:
            if not as_json:
                echo(shown)
            continue
        if not as_json:
            echo(f"Running: {shown}")
        stdin = open(c["stdin"], "rb") if c["stdin"] else subprocess.DEVNULL
        try:
            res = subprocess.run(c["argv"], stdin=stdin, check=False)
        finally:
            if c["stdin"]:
                stdin.close()
        ran.append({**c, "exit": res.returncode})
        if res.returncode != 0:
            raise StrongroomError(f"{c['what']}: {c['argv'][0]} exited {res.returncode}; the commands after it "
                                  "were not run")
    if as_json:
        emit_json({"folder": str(folder.absolute()), "dry_run": dry_run, "commands": commands, "ran": ran})
    elif not commands:
        echo("Nothing to apply: the restored system state lists no packages or units.")


def add_to(cli: click.Group) -> None:
    cli.add_command(export)
    cli.add_command(system_state_group)
