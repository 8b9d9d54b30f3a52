"""The agent's cache folder (MARS's scratch folder): where it is, how much room it has, moving it.

It holds the index of the vault's blobs (`blobs.sqlite`), a backup's spool of its refs, the
record of snapshots taken, and the offline seed's scratch. Nothing in it is needed for
correctness: a deleted cache folder is made again and refilled from the vault, slower once.
Its place is the agent home's `cache/` unless `register --cache DIR` or `agent cache move DIR`
chose another (kept as "cache" in the home's config.json).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from strongroom.agent.home import AgentHome
from strongroom.agent.snapshot import home_tag
from strongroom.errors import StrongroomError, UsageError

MiB = 1024 * 1024
# A backup's room in the cache: the blob index may grow by as much as it holds (a first sync,
# a re-fetch after a prune), and the refs spool of a point is about as large again; plus a floor.
_FLOOR = 64 * MiB


def used_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: Path) -> int:
    """Free bytes for this user on the file system that holds (or will hold) `folder`."""
    st = os.statvfs(_existing_ancestor(folder))
    return st.f_bavail * st.f_frsize


def needed_bytes(folder: Path) -> int:
    """What a backup may need in the cache folder: twice the blob index, at least 64 MiB."""
    index = sum(os.path.getsize(p) for p in folder.glob("blobs.sqlite*") if p.is_file()) if folder.is_dir() else 0
    return _FLOOR + 2 * index


def space_note(folder: Path) -> str | None:
    """A warning line when the cache folder's file system is short of room, else None."""
    try:
        free, needed = free_bytes(folder), needed_bytes(folder)
    except OSError:
        return None  # the backup itself will say what is wrong with the folder
    if free >= needed:
        return None
    return (f"the cache folder {folder} has {free / MiB:.1f} MiB free, less than the {needed / MiB:.1f} MiB a "
            "backup may need there: it may fail for want of room; free some or move the folder with "
            "`strongroom agent cache move DIR`")


def describe(agent: AgentHome) -> dict[str, Any]:
    folder = agent.cache_path
    return {"path": str(folder), "configured": agent.config().get("cache") is not None,
            "exists": folder.is_dir(), "used_bytes": used_bytes(folder) if folder.is_dir() else 0,
            "free_bytes": free_bytes(folder), "needed_bytes": needed_bytes(folder),
            "snapshot_tag": home_tag(agent.path)}


def move(agent: AgentHome, target: Path) -> Path:
    """Moves the cache folder to `target` (a new folder), under the home's lock (no backup
    runs meanwhile). The config names the new place only once everything is copied; a kill
    before leaves the old folder in use and a partial new one, which a next try refuses."""
    config = agent.config()
    target = Path(os.path.abspath(target))
    old = agent.cache_path
    if target == Path(os.path.abspath(old)):
        raise UsageError(f"the cache folder is {old} already")
    if os.path.lexists(target):
        raise UsageError(f"{target} already exists; give a folder that does not exist yet")
    if target.is_relative_to(old):
        raise UsageError(f"{target} is inside the cache folder {old}")
    with agent.lock():
        try:
            os.mkdir(target, 0o700)
        except FileNotFoundError:
            raise UsageError(f"cannot make {target}: its parent folder does not exist") from None
        except OSError as exc:
            hint = " (not writable)" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
            raise UsageError(f"cannot make {target}: {exc.strerror}{hint}") from None
        try:
            if old.is_dir():
                shutil.copytree(old, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("refs-*"))
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise StrongroomError(f"cannot copy the cache folder to {target}: {exc.strerror or exc}; "
                                  f"it stays at {old}") from None
        config["cache"] = str(target)
        agent.save_config(config)
        shutil.rmtree(old, ignore_errors=True)  # only scratch: what cannot be removed is harmless
    return target
