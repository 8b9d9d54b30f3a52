"""Consistent views of the sources: where a source lies on btrfs, a backup reads it from a
read-only snapshot of its subvolume, so the point is one picture even while files change.

    with consistent_view(sources, agent.cache, home_tag(agent.path)) as view:
        view[source]        # where to read that source from (itself when read live)
        view.kind           # "btrfs" (all from snapshots), "btrfs-partial", or None
        view.warnings       # (path, why): sources read live after all, stale snapshots kept
        view.translate(p)   # where any path under a source is read from

The caller holds the agent home's lock (`AgentHome.lock()`): this home's snapshots that exist
when the view opens are stale, and are deleted first.

A snapshot lives in `.strongroom-snapshots/` at the root of its subvolume (a snapshot must
be on the same file system), named `strongroom-<tag>-<pid>-<hex>`: the tag is one agent
home's, so a home only ever deletes its own. Each one is noted in `snapshots.json` in the
cache folder before it is taken, so one left by a killed backup is deleted at the next start
(`remove_stale`), and the folders of the sources' subvolumes are searched as well in case
the cache folder is gone. The snapshot folder is removed when empty, and the times of the
directory holding it are put back, so the backed-up tree shows nothing of this.

Inside a snapshot, a nested subvolume is an empty directory (inode 2) and a mount point is the
directory under the mount: `read_instead` says where to read those (a snapshot of the nested
subvolume, taken when the walk reaches it; the mount live).
LVM snapshots need device-mapper, which the test machines lack: there is no LVM code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from strongroom.agent import btrfs
from strongroom.fsutil import write_private

SNAPSHOT_DIR = b".strongroom-snapshots"
RECORD_FILE = "snapshots.json"
_PREFIX = b"strongroom-"


def home_tag(home: Path) -> str:
    """A short, stable tag of one agent home, part of its snapshots' names."""
    return hashlib.blake2b(os.fsencode(os.path.realpath(home)), digest_size=4).hexdigest()


class View(dict[bytes, bytes]):
    """Source path -> the path to read it from (the same path when it is read live)."""

    def __init__(self, take: Callable[[bytes], bytes] | None = None) -> None:
        super().__init__()
        self.kind: str | None = None
        self.warnings: list[tuple[bytes, str]] = []
        self.mounts: set[bytes] = set()  # mount points inside snapshotted subvolumes
        self.snapshot_devs: set[int] = set()
        self.hidden: set[tuple[int, int]] = set()  # our snapshot folders, as seen inside snapshots
        self._roots: list[tuple[bytes, bytes]] = []  # (subvolume root, its snapshot)
        self._take = take

    def translate(self, path: bytes) -> bytes:
        """Where `path` (under a snapshotted subvolume or not) is read from: the innermost
        snapshotted subvolume holding it decides."""
        holding = [(root, snap) for root, snap in self._roots
                   if path == root or path.startswith(root.rstrip(b"/") + b"/")]
        if not holding:
            return path
        root, snap = max(holding, key=lambda rs: len(rs[0]))
        return snap + path[len(root.rstrip(b"/")):]

    def add(self, root: bytes, snap: bytes) -> None:
        if (root, snap) in self._roots:
            return
        self._roots.append((root, snap))
        self.snapshot_devs.add(os.stat(snap).st_dev)
        with suppress(OSError):
            st = os.stat(os.path.join(snap, SNAPSHOT_DIR))
            self.hidden.add((st.st_dev, st.st_ino))

    def read_instead(self, path: bytes, st: os.stat_result) -> bytes | None:
        """Where to read the directory `path` from when the snapshot (showing it as `st`) does
        not hold it: a nested subvolume (an empty stand-in there) from a snapshot of its own,
        taken now, else live; a mount point live. None: read it where it was found."""
        if st.st_ino == btrfs.EMPTY_SUBVOL_DIR_OBJECTID and self.translate(path) != path:
            try:
                live = os.stat(path)
            except OSError:
                return None
            # Inode 2 is also the root of an ext4 mounted here, read live already: not a stand-in.
            if (live.st_dev, live.st_ino) != (st.st_dev, st.st_ino) and live.st_ino == btrfs.FIRST_FREE_OBJECTID:
                if any(root == path for root, _snap in self._roots):  # taken on an earlier walk
                    return self.translate(path)
                if self._take is None:
                    return path
                try:
                    self.add(path, self._take(path))
                    return self.translate(path)
                except OSError as exc:
                    self.warnings.append((path, f"read live, not from a snapshot: cannot snapshot nested "
                                                f"subvolume: {exc.strerror or exc}"))
                    return path
        return path if st.st_dev in self.snapshot_devs and path in self.mounts else None


class _Record:
    """The snapshots this home has taken and not yet deleted, kept in the cache folder."""

    def __init__(self, cache: Path) -> None:
        self.path = cache / RECORD_FILE

    def load(self) -> list[tuple[bytes, bytes]]:
        try:
            doc = json.loads(self.path.read_text())
            return [(os.fsencode(d), os.fsencode(n)) for d, n in doc["snapshots"]]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return []

    def save(self, items: list[tuple[bytes, bytes]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        doc = {"snapshots": [[os.fsdecode(d), os.fsdecode(n)] for d, n in items]}
        write_private(self.path, json.dumps(doc).encode())


@contextmanager
def _times_kept(directory: bytes) -> Iterator[None]:
    """Puts back the atime and mtime of `directory` after the body adds or removes an entry."""
    st = os.stat(directory)
    try:
        yield
    finally:
        with suppress(OSError):
            os.utime(directory, ns=(st.st_atime_ns, st.st_mtime_ns))


def _delete(folder: bytes, name: bytes) -> None:
    btrfs.delete_snapshot(folder, name)
    with suppress(OSError), _times_kept(os.path.dirname(folder)):
        os.rmdir(folder)  # only when empty: another home's snapshot may be there


def remove_stale(sources: list[bytes], cache: Path, tag: str, warn: Callable[[bytes, str], None]) -> int:
    """Deletes this home's snapshots that a killed or failed backup left; how many it deleted.
    The caller holds the home's lock, so none of this home's snapshots is in use."""
    record = _Record(cache)
    found = set(record.load())
    mine = _PREFIX + tag.encode() + b"-"
    for src in sources:
        with suppress(OSError):
            if not btrfs.is_btrfs(src):
                continue
            root = btrfs.subvolume_root(src)
            if root is None:
                continue
            folder = os.path.join(root, SNAPSHOT_DIR)
            _check_ours(folder)
            for name in os.listdir(folder):
                if name.startswith(mine):
                    found.add((folder, name))
    removed = 0
    left = []
    for folder, name in sorted(found):
        try:
            _delete(folder, name)
            removed += 1
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue
            left.append((folder, name))
            warn(os.path.join(folder, name), f"cannot delete a snapshot a stopped backup left: {exc.strerror}")
    if found:
        record.save(left)
    return removed


@contextmanager
def consistent_view(paths: list[bytes], cache: Path, tag: str) -> Iterator[View]:
    """Snapshots of the btrfs subvolumes holding `paths` (absolute, normalised), deleted when
    the body ends; `cache` is the agent's cache folder, `tag` its home's (`home_tag`)."""
    record = _Record(cache)
    taken: list[tuple[bytes, bytes]] = []
    view = View(lambda root: _take(root, tag, record, taken))
    remove_stale(paths, cache, tag, lambda path, why: view.warnings.append((path, why)))
    snapshotted = 0
    try:
        by_root: dict[bytes, bytes | str] = {}  # subvolume root -> its snapshot, or why there is none
        for src in paths:
            reason = _why_live(src)
            root = None
            if reason is None:
                try:
                    root = btrfs.subvolume_root(src)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
            if reason is None and root is None:
                reason = "its subvolume's root is not reachable here (a bind mount of a subdirectory?)"
            if root is not None and root not in by_root:
                try:
                    by_root[root] = _take(root, tag, record, taken)
                except OSError as exc:
                    hint = " (no room on the file system)" if exc.errno == errno.ENOSPC else ""
                    by_root[root] = f"cannot snapshot subvolume {os.fsdecode(root)}: {exc.strerror or exc}{hint}"
            snap = by_root[root] if root is not None else reason
            if isinstance(snap, str):
                if snap:  # "" for a file system without snapshots: read live, as always, unsaid
                    view.warnings.append((src, f"read live, not from a snapshot: {snap}"))
                view[src] = src
                continue
            assert root is not None
            view.add(root, snap)
            view[src] = view.translate(src)
            snapshotted += 1
        _note_mounts(view)
        if snapshotted:
            view.kind = "btrfs" if snapshotted == len(paths) else "btrfs-partial"
        yield view
    finally:
        for folder, name in reversed(taken):
            try:
                _delete(folder, name)
            except OSError:
                continue  # kept in the record: the next backup deletes it
            record.save([t for t in record.load() if t != (folder, name)])


def _why_live(src: bytes) -> str | None:
    """Why `src` cannot be read from a snapshot: None when it can be tried, "" when its
    file system has no snapshots (nothing to warn of)."""
    try:
        if not btrfs.is_btrfs(src):
            return ""  # not btrfs: read live, as every other file system is, without a warning
        if os.path.realpath(src) != src:
            return "its path goes through a symbolic link"
        if os.geteuid() != 0 and b"user_subvol_rm_allowed" not in _mount_of(src)[1]:
            # Taken but never deleted, snapshots would pile up: take none.
            return "deleting a snapshot needs root or the mount option user_subvol_rm_allowed"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _take(root: bytes, tag: str, record: _Record, taken: list[tuple[bytes, bytes]]) -> bytes:
    """A read-only snapshot of the subvolume at `root`; its path."""
    folder = os.path.join(root, SNAPSHOT_DIR)
    name = _PREFIX + f"{tag}-{os.getpid()}-{secrets.token_hex(4)}".encode()
    with _times_kept(root):
        with suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    _check_ours(folder)
    # Noted before it exists: a kill between the two leaves a name to try, never a snapshot unknown.
    record.save([*record.load(), (folder, name)])
    taken.append((folder, name))  # before: a SIGTERM just after the ioctl must find it to delete
    try:
        btrfs.create_snapshot(root, folder, name)
    except OSError:
        taken.remove((folder, name))
        record.save([t for t in record.load() if t != (folder, name)])
        with suppress(OSError), _times_kept(root):
            os.rmdir(folder)
        raise
    return os.path.join(folder, name)


def _check_ours(folder: bytes) -> None:
    """The snapshot folder must be a real folder of this user (root's, as a rule), not one
    that someone who can write the subvolume's root made or swapped for a symbolic link."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{os.fsdecode(folder)} is not a folder of this user's alone; "
                                   "move it away to let snapshots be taken")


def _note_mounts(view: View) -> None:
    """The mount points under snapshotted subvolumes (/proc/self/mountinfo, field 5)."""
    for point, _line in _mountinfo():
        for root, _snap in view._roots:
            if point.startswith(root.rstrip(b"/") + b"/"):
                view.mounts.add(point)


def _mountinfo() -> list[tuple[bytes, bytes]]:
    """(mount point, its whole line) of each mount (/proc/self/mountinfo, field 5)."""
    try:
        lines = Path("/proc/self/mountinfo").read_bytes().splitlines()
    except OSError:
        return []
    return [(_unescape(line.split(b" ")[4]), line) for line in lines if line.count(b" ") >= 5]


def _mount_of(path: bytes) -> tuple[bytes, bytes]:
    """The mount that holds `path` (the last of the longest mount points above it)."""
    best = (b"/", b"")
    for point, line in _mountinfo():
        if (path == point or path.startswith(point.rstrip(b"/") + b"/")) and len(point) >= len(best[0]):
            best = (point, line)
    return best


def _unescape(field: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(field):
        if field[i] == 0x5C and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
