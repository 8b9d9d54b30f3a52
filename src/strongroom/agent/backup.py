"""Backup: walk the sources, read only what changed, store new blobs, record a recovery point.

The walk runs in the calling thread, relative to open directory descriptors. Files larger
than one chunk are read, chunked, hashed, compressed and encrypted on a thread pool (the
libraries release the GIL); small files are read and hashed by the walker itself and
sealed in batches by the packer's encoder thread (measured faster than handing each one
to a pool). Directory trees are finalised from a bounded queue, each once its files are read
and its subfolders' trees made (a folder still reading a large file holds up none listed after
it), so the pool never waits for the walk and memory does not grow with the size of the tree.

Change detection (unoptimized mode): a file whose size, mtime, ctime and inode equal those
in the parent point is not read; its entry, content IDs and all, is carried over, and a
directory whose entries all are the parent's keeps the parent's tree. In
optimized mode (optimized.py) only the directories a change journal names are listed; the
hooks that do it are marked "optimized mode".
"""

from __future__ import annotations

import gc
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from strongroom import blobs, chunker, testhook
from strongroom.agent import optimized
from strongroom.agent.arenas import cap_arenas, give_back
from strongroom.agent.blobcache import KnownBlobs
from strongroom.agent.finished import Finished
from strongroom.agent.fsmeta import (
    DIR_FLAGS,
    entry_from_stat,
    entry_type,
    proc_path,
    read_xattrs,
)
from strongroom.agent.packer import Packer
from strongroom.agent.pointbook import OpenedPoint, PointBook
from strongroom.agent.reader import WALK_TREE_CACHE_BYTES, BlobReader
from strongroom.agent.selection import Selection, change_base
from strongroom.agent.snapshot import View, consistent_view, home_tag
from strongroom.agent.sparse import ExtentReader, data_extents
from strongroom.crypto import MasterKey
from strongroom.errors import StrongroomError, UsageError, VaultError
from strongroom.globmatch import compile_globs
from strongroom.model import DIR, FILE, SYMLINK, Entry, encode_tree, join, split_abs
from strongroom.packs import KIND_DATA, KIND_TREE
from strongroom.vault.interface import Vault
from strongroom.vault.shapes import PointRecord

_MAX_IN_FLIGHT = 256
# Folders whose tree waits for its files' reads, and their entries: a bound in folders alone
# let 32 folders of 1,000 small files each hold 32,000 entries (~30 MiB) at once.
_MAX_PENDING_DIRS = 32
_MAX_PENDING_ENTRIES = 4096
_READ_ATTEMPTS = 3
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_GC_THRESHOLD = 20_000
_FS_ENCODING = sys.getfilesystemencoding()  # what os.fsencode uses, without its call per name
_EUID = os.geteuid()  # O_NOATIME is allowed to the file's owner and to root only


@dataclass
class Counters:
    """Live figures of a run, read by the progress display while the run goes on."""

    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, nbytes: int) -> None:
        with self.lock:
            self.bytes_read += nbytes

    def read_by_walker(self, nbytes: int) -> None:
        """`read` for the walking thread's own reads: every other thread takes the lock, and
        this += runs under the GIL, so it cannot interleave with theirs halfway."""
        self.bytes_read += nbytes


@dataclass
class BackupResult:
    point: PointRecord
    stats: dict[str, Any]
    warnings: list[tuple[bytes, str]]
    mode_reason: str = ""
    notes: list[str] = field(default_factory=list)  # said after the summary; the point is whole


class _PendingDir:
    __slots__ = ("entry", "items", "tree_id", "parent_tree", "parent_entries", "ready_upto")

    def __init__(self, items: list[Any], parent_tree: bytes | None,
                 parent_entries: dict[bytes, Entry] | None = None) -> None:
        self.entry: Entry | None = None
        self.items = items
        self.tree_id: bytes | None = None
        self.parent_tree = parent_tree  # the same directory's tree in the parent point
        self.parent_entries = parent_entries  # that tree's entries by name (when the walk read them)
        self.ready_upto = 0  # its first items known read or made (they stay so): checked once each

    def ready(self) -> bool:
        """Whether its tree can be made without waiting: every file read, every subfolder's tree made."""
        items = self.items
        for i in range(self.ready_upto, len(items)):
            item = items[i]
            kind = type(item)
            if (kind is _FileJob and not item.future.done()) or (kind is _PendingDir and item.tree_id is None):
                self.ready_upto = i
                return False
        self.ready_upto = len(items)
        return True


class _FileJob:
    __slots__ = ("future", "name")

    def __init__(self, future: Future | Finished, name: bytes) -> None:
        self.future, self.name = future, name


def _unchanged(prev: Entry | None, st: os.stat_result) -> bool:
    return (prev is not None and prev["t"] == FILE and prev.get("s") == st.st_size
            and prev["mt"] == st.st_mtime_ns and prev["ct"] == st.st_ctime_ns and prev.get("i") == st.st_ino)


def _dir_entry(name: bytes, st: os.stat_result, xattrs_of: bytes | None = None) -> Entry:
    """A directory's entry without its atime: listing a directory moves it, and a tree that
    changed with every backup would cost new tree blobs all the way up, day after day.
    With `xattrs_of` (a proc path of it), its extended attributes too."""
    entry = entry_from_stat(name, st)
    del entry["at"]
    if xattrs_of is not None and (xattrs := read_xattrs(xattrs_of)):
        entry["x"] = xattrs
    return entry


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return ((a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino, a.st_dev)
            == (b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino, b.st_dev))


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Collects cyclic garbage less often during a walk. Every file costs a few dicts and the
    default threshold (700 allocations) ran a collection every few files, which scanned the
    whole young heap each time: 6 % of the walker's samples. The objects made so far (modules,
    the parent's trees) are frozen out of the scans; garbage cycles are rare here."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(_GC_THRESHOLD, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


# The walker drops the GIL at each of its six system calls per small file, and at each waits
# for the encoder's or a reader's Python to hand it back, which CPython forces only after the
# switch interval (5 ms). At 0.5 ms a first backup of 50,010 files took 4.19 against 4.33 s
# (medians of 42 alternating pairs, faster in 31), for the same CPU (bench/README "Where a
# first backup's wall time goes").
_SWITCH_INTERVAL_S = 0.0005


@contextmanager
def _quicker_switches() -> Iterator[None]:
    """The switch interval short while the backup's threads share the GIL (see above)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def normalise_sources(paths: list[bytes]) -> list[bytes]:
    """Absolute, normalised, existing sources, without any that another one contains."""
    out: list[bytes] = []
    for raw in paths:
        path = os.path.normpath(os.path.abspath(raw))
        try:
            os.lstat(path)
        except FileNotFoundError:
            raise UsageError(f"path does not exist: {raw.decode('utf-8', 'backslashreplace')}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {raw.decode('utf-8', 'backslashreplace')}: {exc.strerror}") from None
        out.append(path)
    out = sorted(set(out))
    return [p for p in out if not any(p != q and (q == b"/" or p.startswith(q + b"/")) for q in out)]


def parent_of_kind(points: list[OpenedPoint], kind: str, sources: list[bytes]) -> OpenedPoint | None:
    """The parent of a new point: the newest of its kind with the same sources (a volume backup
    must never take a files point, or another volume's, as parent). Files points fall back on
    the newest files point: paths they share are still carried over unread."""
    same_kind = [p for p in points if p.manifest["kind"] == kind]
    fallback = same_kind[0] if same_kind and kind == "files" else None
    return next((p for p in same_kind if p.manifest["sources"] == sources), fallback)


class Backup:
    def __init__(self, vault: Vault, key: MasterKey, sources: list[bytes], excludes: list[str],
                 skip_dirs: list[bytes], cache: Path, *, book: PointBook, selection: Selection | None = None) -> None:
        self.vault, self.key, self.book = vault, key, book
        self.cache = cache  # the agent's cache folder: the known-blob index, the refs spool
        self.sources = normalise_sources(sources)
        self.selection = selection or Selection()  # agent/selection.py: what the walk leaves out
        self.selection.sources = self.sources
        self.manifest_extra: dict[str, Any] = {}  # more sealed manifest fields (tags, stdin, selection)
        if self.selection.active:
            self.manifest_extra["selection"] = self.selection.rules.to_doc()
        self.on_file: Any = None  # called (status, path, size) for each new or changed file: --verbose
        self.excludes = [os.fsencode(e) for e in excludes]
        self.excluded = compile_globs(self.excludes)
        self.retain_until_ns: int | None = None  # an on-demand backup's own retention
        self.unoptimized = False  # `backup --unoptimized`: scan everything whatever the journal says
        self.plan = optimized.Plan(optimized.UNOPTIMIZED, "")
        self.skip_dirs = skip_dirs
        self.skip: set[tuple[int, int]] = set()
        self._note_skips(None)
        self.view: View | None = None  # where each source is read from (a snapshot or itself)
        self.view_warnings = 0  # how many of self.warnings the view gave (kept if the walk starts again)
        self.counters = Counters()
        self.warnings: list[tuple[bytes, str]] = []
        self.reader = BlobReader(vault, key, tree_cache_bytes=WALK_TREE_CACHE_BYTES)
        self.pending: deque[_PendingDir] = deque()
        self.pending_entries = 0
        self.in_flight = threading.BoundedSemaphore(_MAX_IN_FLIGHT)
        self.hardlinks: dict[tuple[int, int], Future | Finished] = {}
        self.local = threading.local()
        # Other kinds of point (agent/volume.py, system_state.py, image.py) set these.
        self.kind = "files"
        self.before_point: list[Callable[[], None]] = []  # last checks of a kind; raise to record no point
        self.stats_extra: dict[str, Any] = {}  # plaintext figures of the kind (counts, never paths)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> BackupResult:
        started = time.monotonic()
        points = change_base(self.book.live())  # checked: a swapped or rolled-back parent is refused here
        parent = parent_of_kind(points, self.kind, self.sources)
        parent_root = parent.manifest["tree"] if parent else None
        known = KnownBlobs(self.cache)
        self.plan = optimized.plan_backup(self, parent, self.unoptimized)
        self.refs = optimized.RefCounts(self.cache, self.reader, fresh=not self.plan.optimized,
                                        persist=self.plan.keeps_records)
        try:
            with consistent_view(self.sources, self.cache, home_tag(self.book.home.path)) as self.view:
                self.warnings.extend(self.view.warnings)
                self.view_warnings = len(self.warnings)
                self.view.warnings = self.warnings  # those of nested subvolumes, met on the way
                self._note_skips(self.view)
                self.plan.read_from(self.view, self.sources)
                self.selection.read_at = self.view
                with _fewer_collections(), _quicker_switches():
                    return self._run(started, parent, parent_root, known)
        finally:
            self.refs.close()
            known.close()

    def _note_skips(self, view: View | None) -> None:
        # Never back up the vault or the agent home into themselves, nor our own snapshots.
        self.skip |= view.hidden if view else set()
        for d in self.skip_dirs:
            for where in {d, view.translate(d) if view else d}:
                try:
                    st = os.stat(where)
                    self.skip.add((st.st_dev, st.st_ino))
                except OSError:
                    pass

    def _run(self, started: float, parent: OpenedPoint | None, parent_root: bytes | None,
             known: KnownBlobs) -> BackupResult:
        cap_arenas()  # before the packer and the pool start their threads
        self.packer = Packer(self.vault, self.key, known)
        workers = min(8, os.cpu_count() or 2)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="reader") as self.pool:
                root = self._walk(parent_root)
                if self.plan.fallback:  # optimized mode met what only a full scan gets right
                    self.plan.unoptimize(self.plan.fallback)
                    self.refs.close()
                    self.refs = optimized.RefCounts(self.cache, self.reader, fresh=True,
                                                    persist=self.plan.keeps_records)
                    self.counters.__init__()  # type: ignore[misc]
                    del self.warnings[self.view_warnings:]  # the view's own stay: its snapshots do
                    self.hardlinks.clear()
                    root = self._walk(parent_root)
            self.refs.prepare()  # what the point's record needs of it, worked out while the packer closes
            self.packer.close()
        except BaseException:
            self.packer.abort()
            raise
        give_back()  # the readers' and the packer's memory, freed, before the point's record adds its own
        for check in self.before_point:
            check()
        c = self.counters
        stats = {"files_new": c.files_new, "files_changed": c.files_changed,
                 "files_unchanged": c.files_unchanged, "dirs": c.dirs, "bytes_read": c.bytes_read,
                 "bytes_total": c.bytes_total, "bytes_added": self.packer.bytes_added,
                 "blobs_added": self.packer.blobs_added, "packs_added": self.packer.packs_uploaded,
                 "duration_s": round(time.monotonic() - started, 3), "warnings": len(self.warnings),
                 **self.stats_extra}
        # The ID is chosen here, so that the manifest is sealed to it and a retried request
        # (the answer lost) records one point.
        point_id = secrets.token_hex(8)
        manifest = self.book.new_manifest(
            parent, kind=self.kind, mode=self.plan.mode, mode_reason=self.plan.reason, tree=root.tree_id,
            sources=self.sources, excludes=self.excludes, warnings=[[p, m] for p, m in self.warnings],
            retain_until=self.retain_until_ns, snapshot=self.view.kind if self.view else None, **self.manifest_extra)
        sealed = self.book.seal(point_id, manifest)
        try:
            point = None
            # Refs as a change to the parent point's: an update's always (optimized mode); a fresh
            # file's when the cache's counts are the parent's, so that the vault looks up only
            # the added IDs, and checks the BLAKE3 of the refs it makes against the full list's.
            if parent is not None and (self.plan.optimized or self.refs.based_on(parent.id)):
                try:
                    point = self.vault.add_point_delta(
                        manifest["kind"], manifest["mode"], stats, sealed, self.refs.added_chunks(),
                        self.refs.removed_chunks(), parent.id, self.refs.count(), point_id=point_id,
                        retain_until_ns=self.retain_until_ns, checksum=self.refs.checksum())
                except (VaultError, sqlite3.DatabaseError):
                    # The parent gone meanwhile, the counts or the checksum disagree, or the cache's
                    # counts of the parent unreadable: all of them, checked.
                    point = None
            if point is None:
                point = self.vault.add_point(manifest["kind"], manifest["mode"], stats, sealed,
                                             self.refs.sorted_chunks(), point_id=point_id,
                                             retain_until_ns=self.retain_until_ns)
        except VaultError:
            known.forget()  # it may have claimed blobs the vault no longer has: fetch it anew next time
            raise
        testhook.hook("backup-point-recorded")  # a test fills the home's and the cache's disk here
        # The point is in the vault: what may fail now is this machine's note of it, which a
        # failure here once called an error about a point that had been recorded.
        notes = []
        try:
            self.book.made(point_id, manifest)
        except OSError as exc:
            # The newest point the home knows stays the one before: a rollback past it is still
            # seen, one that hides only this point is not, until the next backup.
            notes.append(f"point {point_id} is in the vault, but this machine could not note it as its newest "
                         f"({exc.strerror}): until its next backup it would not notice the vault hiding that point")
        try:
            self.refs.commit(point_id)
            optimized.record_success(self.cache, self.plan, point_id)
        except (OSError, sqlite3.OperationalError) as exc:
            # The cache's note (its refs' counts, the journal's last good point) only spares the
            # next backup work: without it the next one sends all the refs and reads every folder.
            notes.append(f"the cache folder {self.cache} could not note point {point_id} ({exc}): the next "
                         "backup does without it (slower); free some room there or move the folder with "
                         "`strongroom agent cache move DIR`")
        # Dated as `points` dates it, by the sealed manifest (this machine's clock when the walk
        # ended), not by the vault's clock when it recorded the point, a backup's length later.
        point = replace(point, created_ns=manifest["created"])
        return BackupResult(point, stats, self.warnings, self.plan.reason, notes)

    def _walk(self, parent_root: bytes | None) -> _PendingDir:
        root = self._build_root(parent_root)
        if testhook.ACTIVE:
            testhook.hook("backup-walked")  # a test holds a large file's read until the walk got here
        while self.pending:
            self._finalize(self._next_ready())
        return root

    def _parent_entries(self, tree_id: bytes | None, path: bytes) -> dict[bytes, Entry]:
        if not tree_id:
            return {}
        old = self.reader.tree(tree_id)
        if self.plan.optimized:  # its directory's refs update reads it again (a dry run has no refs)
            self.refs.saw(tree_id, old)
        entries = {e["n"]: e for e in old}
        # The walk will want the subdirectories' old trees next: one request for them all (in
        # optimized mode only those on the way to changed directories: the others are carried).
        self.reader.prefetch(optimized.subtrees_wanted(self.plan, path or b"/", entries))
        return entries

    # -- walking ----------------------------------------------------------------------------

    def _build_root(self, parent_root: bytes | None) -> _PendingDir:
        if b"/" in self.sources:
            fd = os.open(self.view[b"/"] if self.view else b"/", DIR_FLAGS)
            try:
                return self._scan_dir(fd, b"", parent_root)
            finally:
                os.close(fd)
        tree: dict[bytes, Any] = {}
        for src in self.sources:
            node = tree
            for part in split_abs(src)[:-1]:
                node = node.setdefault(part, {})
            node[split_abs(src)[-1]] = None  # None marks a source: scanned, not just passed through
        return self._build_virtual(tree, b"", parent_root)

    def _build_virtual(self, node: dict[bytes, Any], path: bytes, parent_tree: bytes | None) -> _PendingDir:
        """A directory on the way to the sources: holds only the paths that lead to them."""
        parent = self._parent_entries(parent_tree, path)
        items: list[Any] = []
        fd = os.open(path or b"/", DIR_FLAGS)
        try:
            for name in sorted(node):
                child = node[name]
                if child is None:
                    item = self._scan_source(fd, join(path, name) if path else b"/" + name, name, parent)
                    if item is not None:
                        items.append(item)
                    continue
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                entry = _dir_entry(name, st)
                xattrs = read_xattrs(proc_path(fd, name))
                if xattrs:
                    entry["x"] = xattrs
                prev = parent.get(name)
                sub = self._build_virtual(child, (path or b"") + b"/" + name,
                                          prev.get("tree") if prev and prev["t"] == DIR else None)
                sub.entry = entry
                items.append(sub)
        finally:
            os.close(fd)
        return self._queue(items, parent_tree, parent)

    def _scan_source(self, dfd: int, full: bytes, name: bytes, parent: dict[bytes, Entry]) -> Any:
        """A source, read where the view says (a snapshot), recorded under its own path and name."""
        where = self.view[full] if self.view else full
        if where == full:
            return self._scan_entry(dfd, full, name, parent)
        at = os.path.basename(where)
        rfd = os.open(os.path.dirname(where), DIR_FLAGS)
        try:
            item = self._scan_entry(rfd, full, at, {at: parent[name]} if name in parent else {})
        finally:
            os.close(rfd)
        if isinstance(item, _FileJob):
            item.name = name
        elif isinstance(item, _PendingDir):
            item.entry = {**item.entry, "n": name}  # type: ignore[dict-item]
        elif item is not None:
            item = {**item, "n": name}
        return item

    def _scan_dir(self, dfd: int, path: bytes, parent_tree: bytes | None) -> _PendingDir | None:
        if parent_tree and self.plan.passes(path or b"/"):  # optimized mode
            passed = optimized.pass_through(self, dfd, path or b"/", parent_tree)
            if passed is not None:
                return passed
        parent = self._parent_entries(parent_tree, path)
        # listdir, not scandir: no DirEntry per name (the walk stats each entry itself anyway).
        names = sorted([name.encode(_FS_ENCODING, "surrogateescape") for name in os.listdir(dfd)])
        names = self.selection.listing(dfd, path, names)
        unread = self.plan.unread(path or b"/", parent, names)  # optimized mode: entries no change names
        items = []
        prefix = join(path, b"") if path else b"/"
        excluded = self.excluded if self.excludes else None  # no pattern: no call per entry
        scan_entry, append = self._scan_entry, items.append
        for name in names:
            if name in unread:
                append(parent[name])
                continue
            full = prefix + name
            if excluded is not None and excluded(full, name):
                continue
            item = scan_entry(dfd, full, name, parent)
            if item is not None:
                append(item)
        if not items and path and self.selection.drops_empty(path):
            return None
        self.counters.dirs += 1
        return self._queue(items, parent_tree, parent)

    def _warn(self, path: bytes, message: str) -> None:
        self.warnings.append((path, message))

    def _scan_entry(self, dfd: int, full: bytes, name: bytes, parent: dict[bytes, Entry]) -> Any:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # vanished since the directory was listed
        except OSError as exc:
            self._warn(full, exc.strerror or str(exc))
            return None
        kind = entry_type(st)
        if self.selection.active and self.selection.leaves_out(full, name, st, kind == DIR):
            return None
        prev = parent.get(name)
        try:
            if kind == DIR:
                return self._scan_subdir(dfd, full, name, st, prev)
            if kind == FILE:
                return self._scan_file(dfd, full, name, st, prev)
            entry = entry_from_stat(name, st)
            if kind == SYMLINK:
                entry["l"] = os.readlink(name, dir_fd=dfd)
            xattrs = read_xattrs(proc_path(dfd, name))
            if xattrs:
                entry["x"] = xattrs
            return entry
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(full, exc.strerror or str(exc))
            return None

    def _scan_subdir(self, dfd: int, full: bytes, name: bytes, st: os.stat_result, prev: Entry | None) -> Any:
        if (st.st_dev, st.st_ino) in self.skip:
            return None
        where = self.view.read_instead(full, st) if self.view else None
        if where is not None:  # a nested subvolume or a mount, which the snapshot does not hold
            self.skip |= self.view.hidden  # type: ignore[union-attr]
            st = os.stat(where, follow_symlinks=False)
            if entry_type(st) != DIR or (st.st_dev, st.st_ino) in self.skip:
                return None
            rfd = os.open(os.path.dirname(where), DIR_FLAGS)
            try:
                sub = self._scan_subdir(rfd, full, os.path.basename(where), st, prev)
            finally:
                os.close(rfd)
            if isinstance(sub, _PendingDir):
                sub.entry = {**sub.entry, "n": name}
            elif sub is not None:  # carried whole from the parent point (optimized mode)
                sub = {**sub, "n": name}
            return sub
        if self.plan.carries(full, st, prev):  # optimized mode: the same directory, unchanged within
            return {**_dir_entry(name, st, proc_path(dfd, name)), "tree": prev["tree"]}  # type: ignore[index]
        self.plan.entering(full, st, prev)  # optimized mode: whether it may be listed by changed names
        fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
        try:
            entry = _dir_entry(name, st)
            xattrs = read_xattrs(fd)
            if xattrs:
                entry["x"] = xattrs
            sub = self._scan_dir(fd, full, prev.get("tree") if prev and prev["t"] == DIR else None)
        finally:
            os.close(fd)
        if sub is None:  # left out by the selection
            return None
        sub.entry = entry
        return sub

    def _classify(self, prev: Entry | None, st: os.stat_result) -> str | None:
        """Counts a file as new, changed or unchanged against the parent's entry; None if unchanged."""
        c = self.counters
        c.bytes_total += st.st_size
        if _unchanged(prev, st):
            c.files_unchanged += 1
            return None
        if prev is None:
            c.files_new += 1
            return "new"
        c.files_changed += 1
        return "changed"

    def _scan_file(self, dfd: int, full: bytes, name: bytes, st: os.stat_result, prev: Entry | None) -> Any:
        what = self._classify(prev, st)
        if what is None:
            return prev
        if self.on_file is not None:
            self.on_file(what, full, st.st_size)
        link_key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        if link_key or (prev is not None and "h" in prev):  # had other names: their ctime changed too
            optimized.hard_link_seen(self, full, st)
        if link_key in self.hardlinks:
            return _FileJob(self.hardlinks[link_key], name)
        if testhook.ACTIVE:
            testhook.hook("backup-file-stat")  # a test swaps the file between the walk's stat and the open
        fd = os.open(name, _FILE_FLAGS | os.O_NOATIME, dir_fd=dfd) if st.st_uid == _EUID or _EUID == 0 \
            else os.open(name, _FILE_FLAGS, dir_fd=dfd)
        if st.st_size <= chunker.MIN_SIZE:
            future = Finished(self._read_file, fd, full, st, True)
        else:
            self.in_flight.acquire()
            future = self.pool.submit(self._read_file, fd, full, st, False)
        if link_key:
            self.hardlinks[link_key] = future
        return _FileJob(future, name)

    # -- reading files (pool threads) -------------------------------------------------------

    def _chunker(self) -> Any:
        if not hasattr(self.local, "chunker"):
            self.local.chunker = chunker.Chunker(self.key.chunker_seed)
        return self.local.chunker

    def _read_file(self, fd: int, full: bytes, st: os.stat_result, inline: bool) -> Entry | None:
        """Reads a file until two stats around the read agree; its entry, or None if unreadable."""
        if not inline and testhook.ACTIVE:
            testhook.hook("backup-pool-read")  # a test holds a large file's read (see `_next_ready`)
        try:
            # Content and metadata from the same inode: the one opened, whatever the walk saw.
            # The walk's own stat stands for the first "before": a file replaced or changed
            # between it and the open shows in the stat after the read (inode, ctime), which
            # saves a system call per file.
            before = st
            for attempt in range(_READ_ATTEMPTS):
                if attempt and entry_type(before) != FILE:
                    raise OSError(0, "replaced by something that is not a file while being read")
                content, lengths, sparse = self._read_content(fd, before, inline)
                if testhook.ACTIVE:
                    testhook.hook("backup-file-read")  # a test changes the file between its read and the stat after
                after = os.fstat(fd)
                if _same_version(before, after):
                    break
                before = after
            else:
                self._warn(full, "changed while being read; the last version read was stored")
            entry = entry_from_stat(b"", before)
            entry["c"] = content
            if content:
                entry["cl"] = lengths  # lets a mount map a byte range to blobs without fetching them
            if sparse is not None:
                entry["sp"] = sparse
            xattrs = read_xattrs(fd)
            if xattrs:
                entry["x"] = xattrs
            return entry
        except OSError as exc:
            self._warn(full, f"not backed up: {exc.strerror or exc}")
            return None
        finally:
            os.close(fd)
            if not inline:
                self.in_flight.release()

    def _read_content(self, fd: int, st: os.stat_result,
                      inline: bool) -> tuple[list[bytes], list[int], list[list[int]] | None]:
        sparse = None
        if st.st_size and st.st_blocks * 512 < st.st_size:
            extents = data_extents(fd, st.st_size)
            if extents != [[0, st.st_size]]:
                sparse = extents
        if sparse is None and st.st_size <= chunker.MIN_SIZE:
            # One read of one byte more than expected: growth shows in the re-stat anyway.
            data = os.pread(fd, st.st_size + 1, 0) if st.st_size else b""
            (self.counters.read_by_walker if inline else self.counters.read)(len(data))
            if not data:
                return [], [], None
            blob_id = self.key.blob_id(data)
            (self.packer.add_later if inline else self.packer.add)(blob_id, KIND_DATA, data)
            return [blob_id], [len(data)], None
        os.lseek(fd, 0, os.SEEK_SET)
        stream = ExtentReader(fd, sparse) if sparse is not None else os.fdopen(fd, "rb", buffering=0, closefd=False)
        ids, lengths = self._store_stream(stream)
        return ids, lengths, sparse

    def _store_stream(self, stream: Any) -> tuple[list[bytes], list[int]]:
        """Chunks a stream into data blobs for the packer: their IDs and lengths."""
        ids: list[bytes] = []
        lengths: list[int] = []
        for piece in chunker.chunks(self._chunker(), stream):
            blob_id = self.key.blob_id(piece)
            self.packer.add(blob_id, KIND_DATA, piece)
            ids.append(blob_id)
            lengths.append(len(piece))
            self.counters.read(len(piece))
        return ids, lengths

    # -- finalising trees -------------------------------------------------------------------

    def _queue(self, items: list[Any], parent_tree: bytes | None,
               parent_entries: dict[bytes, Entry] | None = None) -> _PendingDir:
        pending = _PendingDir(items, parent_tree, parent_entries)
        self.pending.append(pending)
        self.pending_entries += len(items)
        while len(self.pending) > _MAX_PENDING_DIRS or self.pending_entries > _MAX_PENDING_ENTRIES:
            self._finalize(self._next_ready())
        return pending

    def _next_ready(self) -> _PendingDir:
        """The first waiting folder whose tree can be made now, taken out of the queue; the
        head (made by waiting for its reads) when none can. A folder whose large files are
        still being read (large/, listed first) so holds up none of the folders listed after
        it, and the bounds on the folders and entries held stay as they were. Its parent
        waits: folders are queued after their subfolders, and one is ready only when they are."""
        pending = self.pending
        for i, candidate in enumerate(pending):
            if candidate.ready():
                del pending[i]
                return candidate
        return pending.popleft()

    def _finalize(self, pending: _PendingDir) -> None:
        entries: list[Entry] = []
        refs: list[bytes] = []
        kept: dict[bytes, bytes] = {}  # optimized mode: subdirectory -> its tree in the parent point, still used
        add_refs, append = refs.extend, entries.append
        for item in pending.items:
            kind = type(item)
            if kind is dict:  # carried from the parent point, or not a file (the most common first)
                entry = item
                tree = entry.get("tree")
                if tree:
                    kept[entry["n"]] = tree
            elif kind is _FileJob:
                result = item.future.result()
                if result is None:
                    continue
                entry = {**result, "n": item.name}
            else:  # a _PendingDir
                if item.parent_tree:
                    kept[item.entry["n"]] = item.parent_tree  # type: ignore[index]
                entry = {**item.entry, "tree": item.tree_id}
            if "c" in entry:
                add_refs(entry["c"])
            append(entry)
        old = pending.parent_entries
        if old and len(old) == len(entries) and entries == list(old.values()):
            # The parent point's entries, in its order (unchanged files are its very dicts, so
            # the comparison is mostly identity): its tree, kept in the vault by that point,
            # without encoding and hashing the same bytes again.
            tree_id = pending.parent_tree
        else:
            data = encode_tree(entries)
            if len(data) > blobs.MAX_TREE_BYTES:  # a restore would refuse it: say so now
                raise StrongroomError(f"a directory of {len(entries)} entries is too large to back up: its listing "
                                      f"takes {len(data)} bytes, more than the {blobs.MAX_TREE_BYTES} a tree may hold")
            tree_id = self.key.blob_id(data)
            if tree_id != pending.parent_tree:  # else the parent point keeps it in the vault already
                self.packer.add_later(tree_id, KIND_TREE, data)
        refs.append(tree_id)
        self.refs.dir_done(refs, pending.parent_tree, kept)
        pending.tree_id = tree_id
        self.pending_entries -= len(pending.items)
        pending.items = []
        pending.parent_entries = None
