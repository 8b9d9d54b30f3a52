"""Optimized backups: choosing the mode, walking only what changed, keeping the point's refs.

`plan_backup` decides, before the walk, whether this backup may trust a journal of changes
(the daemon's, journal.py, or btrfs generations, btrfs_changes.py) and says why when it
may not. An optimized walk then lists only the directories the journal names ("dirty"),
passes through their ancestors taking every other entry from the parent point without a
stat, and carries a subdirectory's whole tree over when it is not on the way to a dirty
directory and still is the same directory (inode, ctime and mtime as in the parent point:
a directory moved, replaced or new is scanned whole, and so is every directory in a tree
created or moved in since the parent point). In a dirty directory for which the
daemon's journal kept the changed names, and which is the same directory as in the parent
point (its inode) and lies in no tree created or moved in since, only the entries named,
new, on the way to other dirty directories or mount points are stat'ed; the others come from
the parent point (`Plan.unread`). The point is the same as an unoptimized backup of the same
state would make.

The point's refs must still name every blob of the point, also those of the trees carried
over unread. `RefCounts` keeps, in the cache folder, how many times each blob is referenced
by the last good point's directories (each directory counts its files' contents and its
own tree): an optimized backup subtracts the directories it replaces and adds the new ones,
so the work is bounded by the change, not by the tree.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strongroom.agent import journal as jr
from strongroom.agent.watch import under
from strongroom.model import DIR, Entry
from strongroom.vault import refs as reflist
from strongroom.vault.idsql import EACH_ID, ID_AT, id_params

if TYPE_CHECKING:
    from strongroom.agent.backup import Backup
    from strongroom.agent.pointbook import OpenedPoint

OPTIMIZED, UNOPTIMIZED = "optimized", "unoptimized"
# A full scan at least this often: the safety net for changes no journal sees (a hard link
# made from outside the sources, then written through that outside name).
FULL_SCAN_EVERY_NS = 7 * 86400 * 10**9


_LINKS_REASON = "a file with hard links changed: its other names are found only by a full scan"
_NOTHING: frozenset[bytes] = frozenset()


@dataclass
class Plan:
    mode: str
    reason: str
    dirty: dict[bytes, set[bytes] | None] = field(default_factory=dict)  # directories to list again: changed
    # names in each (None: stat every entry)
    trees: set[bytes] = field(default_factory=set)  # created or moved in: no directory under them listed by names
    by_name: set[bytes] = field(default_factory=set)  # dirty directories the walk found fit to list by names
    trie: set[bytes] = field(default_factory=set)  # the dirty ones and all their ancestors
    children: dict[bytes, set[bytes]] = field(default_factory=dict)  # trie path -> names on the trie below it
    devices: set[int] = field(default_factory=set)  # the sources' filesystems, which the journal watches
    mounts: list[bytes] = field(default_factory=list)  # mount points inside the sources: always listed
    record: dict[str, Any] = field(default_factory=dict)  # what last-good will hold if this ends well
    fallback: str | None = None  # set by the walk: why it must be done again unoptimized
    links_followed: bool = False  # the journal names every directory linking a changed file (btrfs)
    keeps_records: bool = True  # False: a backup outside the chain of files points (standard input)

    @property
    def optimized(self) -> bool:
        return self.mode == OPTIMIZED

    def passes(self, path: bytes) -> bool:
        """An ancestor of a dirty directory, not dirty itself: its other entries come unread."""
        return self.optimized and path in self.trie and path not in self.dirty

    def carries(self, path: bytes, st: os.stat_result, prev: Entry | None) -> bool:
        """Whether a subdirectory's tree is taken from the parent point without looking in it."""
        return (self.optimized and path not in self.trie and prev is not None and prev["t"] == DIR
                and "tree" in prev and prev.get("i") == st.st_ino and prev.get("ct") == st.st_ctime_ns
                and prev.get("mt") == st.st_mtime_ns and st.st_dev in self.devices
                and not under(path, self.mounts)
                # inotify keeps the changes inside a tree moved since under the paths they had:
                # a moved tree is walked whole (a change inside moves no folder's ctime or mtime)
                and not self._in_tree(path))

    def entering(self, path: bytes, st: os.stat_result, prev: Entry | None) -> None:
        """The walk is about to list directory `path` (stat'ed as `st`; `prev` its entry in the
        parent point): whether it may be listed by its changed names. Only the same directory
        as in the parent point (a new or replaced one: every entry is new to it), never one in
        a tree created or moved in (inotify keeps names by path, which a move shifts), nor on or
        under a mount point (another filesystem's changes are not in the journal)."""
        if (self.optimized and self.dirty.get(path) is not None and prev is not None and prev["t"] == DIR
                and "tree" in prev and prev.get("i") == st.st_ino and st.st_dev in self.devices
                and not self._in_tree(path)
                and not under(path, self.mounts)):
            self.by_name.add(path)

    def _in_tree(self, path: bytes) -> bool:
        if not self.trees:
            return False
        while path not in self.trees:
            if path in (b"/", b""):
                return False
            path = os.path.dirname(path)
        return True

    def unread(self, path: bytes, parent: dict[bytes, Entry], listed: list[bytes]) -> frozenset[bytes] | set[bytes]:
        """Of a directory's listing, the names taken from the parent point without a stat:
        none unless optimized mode lists a dirty directory by names (`entering`). Also: an
        entry with hard links gone from a dirty directory changed the other names' link count
        and ctime, with no event where they are: only a full scan finds them."""
        if path not in self.dirty:
            return _NOTHING
        if not self.links_followed and self.fallback is None:
            gone = parent.keys() - set(listed)
            if gone and any("h" in parent[n] for n in gone):
                self.fallback = _LINKS_REASON
        if path not in self.by_name:
            return _NOTHING
        look = self.dirty[path] | self.children.get(path, _NOTHING)  # type: ignore[operator]
        return parent.keys() - look

    def read_from(self, view: Any, sources: list[bytes]) -> None:
        """The walk reads the sources where the view says (a btrfs snapshot: another device)."""
        for src in sources:
            try:
                self.devices.add(os.stat(view[src] if view else src).st_dev)
            except OSError:
                pass

    def unoptimize(self, reason: str) -> None:
        self.mode, self.reason, self.dirty, self.trie, self.children = UNOPTIMIZED, reason, {}, set(), {}
        self.trees, self.by_name = set(), set()


def _trie(dirs: dict[bytes, Any]) -> tuple[set[bytes], dict[bytes, set[bytes]]]:
    out: set[bytes] = set()
    children: dict[bytes, set[bytes]] = {}
    for d in dirs:
        while d not in out:
            out.add(d)
            if d == b"/":
                break
            up = os.path.dirname(d) or b"/"
            children.setdefault(up, set()).add(os.path.basename(d))
            d = up
    return out, children


def _excluded(backup: Backup, path: bytes) -> bool:
    """Whether `path` or one of its ancestors inside a source is left out by the excludes."""
    parts = path.split(b"/")
    for i in range(2, len(parts) + 1):
        prefix = b"/".join(parts[:i])
        if any(prefix == s or prefix.startswith(s.rstrip(b"/") + b"/") for s in backup.sources) \
                and prefix not in backup.sources and backup.excluded(prefix, parts[i - 1]):
            return True
    return False


def _files(cache: Path) -> tuple[Path, Path]:
    folder = jr.journal_dir(cache)
    return folder / "last-good", folder / "attempt"


def plan_backup(backup: Backup, parent: OpenedPoint | None, unoptimized: bool) -> Plan:
    """The mode of this backup and, in optimized mode, the directories to look at. Also cuts
    the daemon's journal (whatever the mode), so that the next backup can start from here."""
    cache = backup.cache
    if "stdin" in backup.manifest_extra or not backup.sources:
        # Not a files backup: it neither uses nor moves the journal's records of the files chain.
        return Plan(UNOPTIMIZED, "a backup of standard input reads it whole", keeps_records=False)
    if backup.kind != "files":  # a volume, system state or image (issue 12): nor do these
        return Plan(UNOPTIMIZED, f"{backup.kind} points do not use the change journal", keeps_records=False)
    last_good_path, attempt_path = _files(cache)
    record: dict[str, Any] = {"sources": backup.sources, "excludes": backup.excludes,
                              "selection": backup.manifest_extra.get("selection")}
    journal_reason = None
    try:
        doc = jr.live_journal(cache, backup.sources)
        if doc.get("incomplete"):
            raise jr.Unusable(f"the change journal is incomplete: {doc['incomplete']}")
        run, seq = jr.request_cut(cache, doc["run"])
        record["journal"] = {"run": run, "seq": seq, "backend": doc["backend"]}
    except jr.Unusable as exc:
        journal_reason = str(exc)
        if exc.damaged:  # a keeper that still runs writes its file anew at a cut: the next backup may use it
            try:
                run, seq = jr.request_cut(cache, None, timeout_s=2.0)
                record["journal"] = {"run": run, "seq": seq, "backend": "?"}
            except jr.Unusable:
                pass
    from strongroom.agent import btrfs_changes  # noqa: PLC0415 - only where a source may be on btrfs
    gens = btrfs_changes.generations(backup.sources)
    if gens:
        record["btrfs"] = gens
    previous_attempt = attempt_path.exists()
    jr.write_record(attempt_path, {"started_ns": time.time_ns(), "parent": parent.id if parent else None})
    try:
        good = jr.read_record(last_good_path)
    except jr.Damaged as exc:
        good, damaged = None, str(exc)
    else:
        damaged = None
    record["full_ns"] = (good or {}).get("full_ns")

    def no(reason: str) -> Plan:
        record["full_ns"] = time.time_ns()
        return Plan(UNOPTIMIZED, reason, record=record)

    if unoptimized:
        return no("asked for (--unoptimized)")
    if parent is None:
        return no("the first backup")
    if previous_attempt:
        return no("the previous backup failed, was cancelled, was killed or could not note its point in the "
                  "cache folder")
    if damaged:
        return no(f"the journal's record of the last backup is damaged ({damaged})")
    if good is not None and ([bytes(s) for s in good.get("sources", [])] != backup.sources or
                             [bytes(e) for e in good.get("excludes", [])] != backup.excludes or
                             good.get("selection") != record["selection"]):
        return no("the sources or excludes differ from the last point's")
    if good is None or good.get("point") != parent.id:
        return no("the cache folder holds no record of the last point (a new or emptied cache folder)")
    if not RefCounts.matches(cache, parent.id):
        return no("the cache folder's reference counts are not the last point's")
    full_ns = good.get("full_ns") or 0
    if time.time_ns() - full_ns > FULL_SCAN_EVERY_NS:
        return no("7 days since the last full scan (the safety net for changes no journal sees)")
    dirs: dict[bytes, set[bytes] | None] | None = None
    trees: set[bytes] = set()
    how = ""
    old_gens = good.get("btrfs") or {}
    if gens and set(gens) == set(old_gens) == set(backup.sources) and all(
            gens[s][:2] == old_gens[s][:2] for s in gens):
        try:
            dirs = {}
            for src, (fsid, subvol, _gen, top) in gens.items():  # btrfs names directories only: whole
                dirs.update(dict.fromkeys(btrfs_changes.changed_dirs(top, subvol, old_gens[src][2])))
            how = f"btrfs generations since {min(g[2] for g in old_gens.values())}"
        except btrfs_changes.Unavailable as exc:
            dirs, journal_reason = None, str(exc)
    if dirs is None:
        if journal_reason:
            return no(journal_reason)
        before = good.get("journal") or {}
        now = record["journal"]
        if before.get("run") != now["run"]:
            return no("the change journal daemon was not watching for the whole interval since the last point "
                      "(it was started, restarted or rebooted since)")
        try:
            dirs, trees, backend = jr.changed_since(cache, now["run"], before["seq"], now["seq"])
        except jr.Unusable as exc:
            return no(str(exc))
        how = f"{backend} journal"
    dirs = {d: n for d, n in dirs.items() if any(d == s or d.startswith(s.rstrip(b"/") + b"/") for s in backup.sources)
            and not _excluded(backup, d)}
    plan = Plan(OPTIMIZED, f"{how}: {len(dirs)} changed director{'y' if len(dirs) == 1 else 'ies'}",
                dirty=dirs, trees=trees, record=record, links_followed=how.startswith("btrfs"))
    # A filesystem mounted inside a source (a bind mount of the same one among them) reports its
    # changes under other paths, or not at all: what lies there is listed whole every time, and
    # so the folders on the way to it are walked, never carried over (they may be unchanged).
    plan.devices = {os.stat(s).st_dev for s in backup.sources}
    plan.mounts = [m for m in _mount_points() if m not in backup.sources
                   and any(m.startswith(s.rstrip(b"/") + b"/") for s in backup.sources)]
    for m in plan.mounts:
        if not _excluded(backup, m):
            dirs[m] = None
    plan.trie, plan.children = _trie(dirs)  # a mount point is then stat'ed where its directory is listed by names
    record["full_ns"] = full_ns
    _locate_trie(backup, plan, parent.manifest["tree"])
    return plan


def _locate_trie(backup: Backup, plan: Plan, root: bytes) -> None:
    """Where the parent point's trees of the directories on the trie lie, asked level by level
    (a request or so per level), instead of once by each directory the walk passes through:
    after the 1 % mutation, 110 lookups of ~1.3 ms each, a third of the walk."""
    level = [(b"/", root)]
    while level:
        backup.reader.prefetch([tree for _path, tree in level])  # one lookup, then batched reads
        below = []
        for path, tree in level:
            names = plan.children.get(path)
            if names:
                base = path if path != b"/" else b""
                below.extend((base + b"/" + e["n"], e["tree"]) for e in backup.reader.tree(tree)
                             if e["n"] in names and e["t"] == DIR and "tree" in e)
        level = below


def _mount_points() -> list[bytes]:
    try:
        lines = Path("/proc/self/mountinfo").read_bytes().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:  # the mount point, with space, tab, newline and backslash octal-escaped
            out.append(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4]))
    return out


def record_success(cache: Path, plan: Plan, point_id: str) -> None:
    """The point is in the vault: the next backup may start from it."""
    if not plan.keeps_records:
        return
    last_good_path, attempt_path = _files(cache)
    jr.write_record(last_good_path, {**plan.record, "point": point_id, "mode": plan.mode})
    attempt_path.unlink(missing_ok=True)


# -- the walk ---------------------------------------------------------------------------------


def pass_through(backup: Backup, dfd: int, path: bytes, parent_tree: bytes) -> Any:
    """A directory on the way to dirty ones: its tree from the parent point, with only the
    subdirectories on the way looked at. None if the parent point does not hold them (the
    journal must have missed this directory's change: it is listed instead)."""
    old = backup.reader.tree(parent_tree)
    backup.refs.saw(parent_tree, old)
    parent = {e["n"]: e for e in old}
    backup.reader.prefetch(subtrees_wanted(backup.plan, path, parent))
    base = path if path != b"/" else b""
    children = backup.plan.children.get(path, set())
    if any(n not in parent or parent[n]["t"] != DIR for n in children):
        return None
    items: list[Any] = []
    for name in sorted(parent):
        prev = parent[name]
        if name in children:
            item = backup._scan_entry(dfd, base + b"/" + name, name, parent)
            if item is not None:
                items.append(item)
        else:
            items.append(prev)
    return backup._queue(items, parent_tree)


def subtrees_wanted(plan: Plan, path: bytes, entries: dict[bytes, Entry]) -> list[bytes]:
    """The old trees of the subdirectories that the walk will read next: all of them in
    unoptimized mode, only those on the way to changed directories in optimized mode."""
    if plan.optimized:
        names = plan.children.get(path, ())
        picked = [entries[n] for n in names if n in entries]
    else:
        picked = list(entries.values())
    return [e["tree"] for e in picked if e["t"] == DIR and "tree" in e]


def hard_link_seen(backup: Backup, full: bytes, st: os.stat_result) -> None:
    """A changed file with other names: an optimized walk cannot know where they are."""
    if backup.plan.optimized and not backup.plan.links_followed and backup.plan.fallback is None:
        # Said without the path: a mode reason reaches the vault in plain text.
        backup.plan.fallback = _LINKS_REASON


# -- the refs ---------------------------------------------------------------------------------


# Old trees kept for `dir_done`: the walk finishes most directories at most 32 later (one still
# reading a large file may come later, its old tree then read again).
_SEEN_BOUND = 256
_NET_BOUND = 65536  # blob IDs whose net change a directory's update holds in memory at most
# A fresh file's references, all +1, in one statement over the sorted IDs joined (vault/idsql.py):
# 0.045 -> 0.015 CPU-s for 20,000 refs against an executemany of a row each (its per-row
# Python and random-order inserts).
_COUNT_SORTED = (EACH_ID + f"INSERT INTO refs (id, n) SELECT {ID_AT}, 1 FROM pos WHERE true "
                 "ON CONFLICT (id) DO UPDATE SET n = n + 1")
# A fresh file's refs go to its writer thread this many at a time, while the walk goes on: the
# statement runs without the GIL, on the core the walk leaves idle. One batch written and one
# filled hold half the IDs the single batch of _NET_BOUND did; batches cost a little more
# (51,000 IDs: 39-52 ms in one statement, 56-63 ms in batches of 16,384).
_FRESH_BATCH = 16384
# What the writer works out once the walk is over, while the packer closes (`prepare`): the
# refs that a change to the parent point's adds and removes, ascending.
_DELTA_TABLES = (("added", "SELECT r.id FROM refs r WHERE r.n > 0 AND NOT EXISTS "
                           "(SELECT 1 FROM parent.refs p WHERE p.id = r.id AND p.n > 0)"),
                 ("removed", "SELECT p.id FROM parent.refs p WHERE p.n > 0 AND NOT EXISTS "
                             "(SELECT 1 FROM refs r WHERE r.id = p.id AND r.n > 0)"))
_SORTED_REFS = "SELECT id FROM refs WHERE n > 0 ORDER BY id"


def own_refs(tree_id: bytes, entries: list[Entry]) -> list[bytes]:
    return [c for e in entries for c in e.get("c", ())] + [tree_id]


class RefCounts:
    """How often each blob is referenced by the point's directories, in the cache folder.

    Fresh (unoptimized: built whole, replacing the old file when the point is recorded) or
    updated (optimized: the old file in one transaction, committed with the point)."""

    def __init__(self, cache: Path, reader: Any, fresh: bool, persist: bool = True) -> None:
        self.folder = jr.journal_dir(cache)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.final = self.folder / "refcounts.sqlite"
        self.fresh, self.reader, self.persist = fresh, reader, persist
        self.pending: list[tuple[bytes, int]] = []  # (blob id, change of its count), not yet in SQLite
        self.pending_refs: list[bytes] = []  # fresh: blob IDs referenced once more, not yet in SQLite
        self.seen: dict[bytes, list[Entry]] = {}  # old trees the walk read, until their directory is done
        self.path = self.folder / f"refcounts-{os.getpid()}.sqlite" if fresh else self.final
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="refcounts") if fresh else None
        self.writing: Future | None = None  # the writer's task: the file is used by no one else meanwhile
        self.summary: tuple[int, str] | None = None  # fresh, once the walk is over: count and checksum
        if fresh:
            self.path.unlink(missing_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # private: it names the point's blobs
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA synchronous=NORMAL" if not fresh else "PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS refs (id BLOB PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        # An update notes each blob it touches with its count before, so that what the point
        # gains and loses can be sent to the vault as a change to the parent point's refs.
        self.db.execute("CREATE TEMP TABLE touched (id BLOB PRIMARY KEY, old INTEGER NOT NULL) WITHOUT ROWID")
        # Fresh: the last good point's counts beside it (read only), so that the refs can go to
        # the vault as a change to that point's (`based_on`). Attached before the transaction
        # begins: SQLite refuses it within one.
        self.parent_attached = False
        if fresh and persist and self.final.exists():
            try:
                self.db.execute("ATTACH ? AS parent", (str(self.final),))
                self.parent_attached = True
            except sqlite3.DatabaseError:
                pass
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM meta WHERE k = 'point'")  # until committed: the old point's no more

    @classmethod
    def matches(cls, cache: Path, point_id: str) -> bool:
        path = jr.journal_dir(cache) / "refcounts.sqlite"
        if not path.exists():
            return False
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT v FROM meta WHERE k = 'point'").fetchone()
            finally:
                db.close()
        except sqlite3.DatabaseError:
            return False
        return row is not None and row[0] == point_id

    def _stop_writer(self) -> None:
        if self.writer is not None:
            self.writer.shutdown()

    def saw(self, tree_id: bytes, entries: list[Entry]) -> None:
        """The walk read this old tree: its directory's update will want it again (the reader's
        small cache has mostly dropped it by then: decoding it again cost a tenth of the walk)."""
        if self.fresh:
            return
        if len(self.seen) >= _SEEN_BOUND:  # one the walk read and never finished: a few at most
            del self.seen[next(iter(self.seen))]
        self.seen[tree_id] = entries

    def _add(self, deltas: list[tuple[bytes, int]]) -> None:
        self.pending.extend(deltas)
        if len(self.pending) >= _NET_BOUND:
            self._flush()

    def _settle(self) -> None:
        """Waits for the writer's task (raising its error), before the file is used otherwise."""
        if self.writing is not None:
            writing, self.writing = self.writing, None
            writing.result()

    def _count_refs(self, refs: list[bytes]) -> None:
        self.db.execute(_COUNT_SORTED, id_params(sorted(refs)))

    def _flush(self) -> None:
        """Many directories' changes in one statement each: a call per directory costs more
        than the few rows a changed directory brings."""
        self._settle()
        if self.pending_refs:
            self._count_refs(self.pending_refs)
            self.pending_refs = []
        if not self.pending:
            return
        if not self.fresh:
            self.db.executemany("INSERT OR IGNORE INTO touched (id, old) "
                                "SELECT ?, coalesce((SELECT n FROM refs WHERE id = ?), 0)",
                                ((i, i) for i, _d in self.pending))
        self.db.executemany("INSERT INTO refs (id, n) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET n = n + ?",
                            ((i, d, d) for i, d in self.pending))
        self.pending = []

    def dir_done(self, refs: list[bytes], old_tree: bytes | None, kept: dict[bytes, bytes]) -> None:
        """A directory's new tree is made: its refs count; in an update, its old tree's own
        refs no longer do, nor those of old subdirectories not kept (`kept`: name -> old tree
        id still used, carried over or updated in place)."""
        if self.fresh:
            self.summary = None
            self.pending_refs.extend(refs)
            if len(self.pending_refs) >= _FRESH_BATCH:
                self._settle()
                self.writing = self.writer.submit(self._count_refs, self.pending_refs)  # type: ignore[union-attr]
                self.pending_refs = []
            return
        if not old_tree:
            self._add([(i, 1) for i in refs])
            return
        # Only the net change reaches SQLite: a changed directory mostly lists the same files
        # again, and their +1 and -1 cancel here instead of costing four row updates each.
        net = Counter(refs)
        old = self.seen.pop(old_tree, None)
        if old is None:
            old = self.reader.tree(old_tree)
        net.subtract(own_refs(old_tree, old))
        for e in old:
            if e["t"] == DIR and "tree" in e and kept.get(e["n"]) != e["tree"]:
                self._drop_subtree(e["tree"], net)
        self._add([(i, d) for i, d in net.items() if d])

    def _drop_subtree(self, tree_id: bytes, net: Counter[bytes]) -> None:
        stack = [tree_id]
        while stack:
            tid = stack.pop()
            entries = self.reader.tree(tid)
            net.subtract(own_refs(tid, entries))
            stack.extend(e["tree"] for e in entries if e["t"] == DIR and "tree" in e)
            if len(net) > _NET_BOUND:  # a large subtree gone: counted in steps, memory stays bounded
                self._add([(i, d) for i, d in net.items() if d])
                net.clear()

    def sorted_chunks(self) -> Iterator[bytes]:
        return self._chunks(_SORTED_REFS)

    def _chunks(self, sql: str) -> Iterator[bytes]:
        self._flush()
        return self._rows(sql)

    def _rows(self, sql: str, per_chunk: int = 4096) -> Iterator[bytes]:
        # A row costs ~120 bytes as a tuple and bytes object before the join: 32,768 a batch
        # were 2.4 MiB of a no-change backup's peak RSS (50,000 files), in the tally at its end.
        rows = self.db.execute(sql)
        while batch := rows.fetchmany(per_chunk):
            yield b"".join(r[0] for r in batch)

    def based_on(self, point_id: str) -> bool:
        """Whether a fresh file can be sent as a change to point `point_id`'s refs: the last
        good point's counts (attached when this file was made) are that point's. The walk
        built this file whole all the same; only how the refs travel changes."""
        if not self.parent_attached:
            return False
        self._settle()
        try:
            row = self.db.execute("SELECT v FROM parent.meta WHERE k = 'point'").fetchone()
        except sqlite3.DatabaseError:
            return False
        return row is not None and row[0] == point_id

    def prepare(self) -> None:
        """Fresh, the walk over: the last refs counted and the count, the checksum and the
        change to the parent point's refs worked out on the writer thread, while the caller
        goes on (closing the packer) until it asks for them."""
        if self.writer is not None:
            self._settle()
            refs, self.pending_refs = self.pending_refs, []
            self.writing = self.writer.submit(self._summarise, refs)

    def _summarise(self, refs: list[bytes]) -> None:
        if refs:
            self._count_refs(refs)
        summary = reflist.tally(self._rows(_SORTED_REFS))
        if self.parent_attached:
            for table, query in _DELTA_TABLES:
                self.db.execute(f"DROP TABLE IF EXISTS temp.{table}")
                self.db.execute(f"CREATE TEMP TABLE {table} (id BLOB PRIMARY KEY) WITHOUT ROWID")
                self.db.execute(f"INSERT INTO {table} {query}")
        self.summary = summary

    def _summarised(self) -> tuple[int, str] | None:
        self._settle()
        return self.summary

    def checksum(self) -> str | None:
        """Fresh: the BLAKE3 of the sorted refs, as the vault computes it of the refs it
        records; with it the vault refuses a change that leads to any other refs (counts
        left behind by something else than that point). None for an update: bounded by the
        change, it reads no more of the file than the change touches."""
        if not self.fresh:
            return None
        return (self._summarised() or reflist.tally(self.sorted_chunks()))[1]

    def added_chunks(self) -> Iterator[bytes]:
        """The blobs that the parent point did not reference, ascending (fresh: against the
        attached counts, see `based_on`)."""
        if self.fresh:
            return self._delta_chunks(0)
        return self._chunks("SELECT t.id FROM touched t JOIN refs r ON r.id = t.id WHERE t.old <= 0 AND r.n > 0 "
                            "ORDER BY t.id")

    def removed_chunks(self) -> Iterator[bytes]:
        """The blobs that the parent point referenced and this one does not, ascending."""
        if self.fresh:
            return self._delta_chunks(1)
        return self._chunks("SELECT t.id FROM touched t LEFT JOIN refs r ON r.id = t.id "
                            "WHERE t.old > 0 AND coalesce(r.n, 0) <= 0 ORDER BY t.id")

    def _delta_chunks(self, which: int) -> Iterator[bytes]:
        table, query = _DELTA_TABLES[which]
        if self._summarised() is not None and self.parent_attached:
            return self._chunks(f"SELECT id FROM {table} ORDER BY id")
        return self._chunks(f"{query} ORDER BY 1")

    def count(self) -> int:
        if self.fresh and (summary := self._summarised()) is not None:
            return summary[0]
        self._flush()
        return self.db.execute("SELECT count(*) FROM refs WHERE n > 0").fetchone()[0]

    def commit(self, point_id: str) -> None:
        self._flush()
        self._stop_writer()
        self.db.execute("DELETE FROM refs WHERE n <= 0")
        self.db.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('point', ?)", (point_id,))
        self.db.execute("COMMIT")
        self.db.close()
        if self.fresh and self.persist:
            os.replace(self.path, self.final)
        elif self.fresh:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Without a commit: an update is rolled back, a fresh file removed."""
        try:
            self._settle()
        except sqlite3.Error:
            pass  # the file is dropped anyway; the error that stopped the backup is the one to tell
        self._stop_writer()
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.ProgrammingError:
            pass  # closed by commit
        except sqlite3.OperationalError:
            pass  # its disk full at the commit: closing the connection rolls back as well
        self.db.close()  # a no-op once closed
        if self.fresh:
            self.path.unlink(missing_ok=True)
