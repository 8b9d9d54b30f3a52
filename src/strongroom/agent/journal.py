"""The change journal: which directories changed since the last good backup, kept by the daemon.

`strongroom agent run` starts a `Keeper` thread that watches the filesystems of the policy's
sources (watch.py: fanotify, else inotify) and gathers the directories whose listing or
entries changed, each with the names of its changed entries (or "whole": look at all), and
the directories created or moved in. A backup asks the keeper for a *cut* (`request_cut`): the keeper reads
every event queued so far, closes the current segment of changed directories, writes the
journal file durably and answers with the segment's number. Everything that changed before
the answer is in a segment up to the cut; everything after it, in a later one, so a change
made while a backup runs is looked at by the next one.

Files, in the agent's cache folder, under journal/ (each record: magic, msgpack, BLAKE2b-256
of the msgpack; written atomically; see docs/format.md):

- journal:  written by the keeper: its run (a random id per start), pid, boot id, backend,
  watched sources with their device and filesystem ids, start time, why it is incomplete
  if it is, and the segments not yet covered by a good backup.
- cut-request / cut-ack: the handshake of a cut (a nonce each way).
- last-good: written by a backup that recorded its point: the point ID, sources and
  excludes, the journal run and cut it started from, btrfs generations, when the last
  full scan ran.
- attempt: written when a backup starts, removed when it ends well: found at the next
  start, it says the previous backup failed, was cancelled or killed.

Trust comes from the run id: a segment counts only if it is of the same keeper run as the
cut recorded in last-good, so a keeper that stopped, crashed or restarted (or a reboot)
makes the next backup unoptimized, whatever the clock says.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from strongroom.agent.watch import MAX_NAMES, Drained, Fanotify, Inotify, WatchError, folder_watch, fsid_of, under
from strongroom.fsutil import write_private

log = logging.getLogger("strongroom.agent")

MAGIC = b"SRJRNL01"
FORMAT = 2  # of the `journal` record: 2 keeps changed names per directory (1 kept directories only)
DIR_NAME = "journal"
CUT_TIMEOUT_S = 30.0  # a live keeper answers in milliseconds; a disk busy with fsyncs may take seconds
_POLL_S = 0.1
_MAX_SEGMENTS = 64  # older ones are merged: a run of failed backups must not grow the file forever
_MAX_DIRS = 200_000  # more changed directories than this: as good as an overflow, scan everything


class Damaged(Exception):
    """A journal record that does not read back as written."""


def journal_dir(cache: Path) -> Path:
    return cache / DIR_NAME


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def write_record(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = msgpack.packb(doc, use_bin_type=True)
    write_private(path, MAGIC + body + hashlib.blake2b(body, digest_size=32).digest())


def read_record(path: Path) -> dict[str, Any] | None:
    """The record, None if there is none; Damaged if it is truncated, altered or not ours."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    body, digest = data[len(MAGIC):-32], data[-32:]
    if len(data) < len(MAGIC) + 32 or not data.startswith(MAGIC) \
            or hashlib.blake2b(body, digest_size=32).digest() != digest:
        raise Damaged(f"{path.name} is damaged (truncated or altered)")
    try:
        doc = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise Damaged(f"{path.name} does not decode: {exc}") from None
    if not isinstance(doc, dict):
        raise Damaged(f"{path.name} does not decode")
    return doc


def source_ids(sources: list[bytes]) -> dict[bytes, list]:
    """Per source: its device number and filesystem id (a source moved to another filesystem,
    or another filesystem mounted there, no longer matches)."""
    out: dict[bytes, list] = {}
    for src in sources:
        try:
            out[src] = [os.stat(src).st_dev, fsid_of(src)]
        except OSError:
            out[src] = [None, None]
    return out


def when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


# -- the keeper (daemon side) -----------------------------------------------------------------


Names = set[bytes] | None  # a changed directory's changed entries; None: all of them


@dataclass
class _Segment:
    first: int
    last: int
    dirs: dict = field(default_factory=dict)  # path -> Names
    overflow_ns: int | None = None
    trees: set = field(default_factory=set)  # directories created or moved in: none under them listed by names


def merge_dirs(into: dict[bytes, Any], more: dict[bytes, Any]) -> dict[bytes, Any]:
    """`more`'s changed directories added to `into` (a directory whole in either is whole)."""
    for path, names in more.items():
        if path not in into:
            into[path] = set(names) if names is not None else None
        elif into[path] is not None:
            if names is None or len(into[path]) + len(names) > MAX_NAMES:
                into[path] = None
            else:
                into[path] |= names
    return into


class Keeper:
    """Watches `sources` in a thread and answers cuts; `stop` ends it and says so in the file."""

    def __init__(self, cache: Path, sources: list[bytes], skip: set[tuple[int, int]],
                 backend: str | None = None) -> None:
        self.cache, self.dir = cache, journal_dir(cache)
        self.sources = sources
        self.skip = skip
        self.run_id = secrets.token_hex(8)
        self.started_ns = time.time_ns()
        self.stop_event = threading.Event()
        self.watcher = self._open(backend or os.environ.get("STRONGROOM_JOURNAL_BACKEND"))
        self.pending = Drained()  # keys since the last cut
        self.segments: list[_Segment] = []
        self.seq = 0
        self.thread = threading.Thread(target=self._loop, name="journal", daemon=True)
        self.wake = -1  # readable when a cut is requested (folder_watch); else the poll finds it

    def _open(self, backend: str | None) -> Fanotify | Inotify:
        if backend != "inotify" and os.geteuid() == 0:
            try:
                return Fanotify(self.sources)
            except WatchError as exc:
                if backend == "fanotify":
                    raise
                log.warning("change journal: fanotify is not available (%s); using inotify", exc.strerror)
        return Inotify(self.sources, self.skip)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.dir / "cut-request").unlink(missing_ok=True)
        self.wake = folder_watch(os.fsencode(self.dir))
        self._write()
        w = self.watcher
        incomplete = getattr(w, "incomplete", None)
        log.info("change journal: %s, %d %s for %d source(s)%s", w.backend, w.watches,
                 "filesystem mark(s)" if w.backend == "fanotify" else "directory watch(es)", len(self.sources),
                 f"; incomplete: {incomplete}" if incomplete else "")
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self._write(stopped=True)
        self.watcher.close()
        if self.wake >= 0:
            os.close(self.wake)
            self.wake = -1

    def _loop(self) -> None:
        self.looked = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a keeper that died would leave backups waiting
                log.exception("change journal: unexpected error; the next backup scans everything")
                self.pending.overflow = True  # whatever was lost: not trusted until the next cut
                time.sleep(_POLL_S)

    def _step(self) -> None:
        request = self.dir / "cut-request"
        ready, _w, _x = select.select([self.watcher.fileno()] + ([self.wake] if self.wake >= 0 else []), [], [], _POLL_S)
        if self.watcher.fileno() in ready:
            self._drain()
        if self.wake >= 0 and self.wake in ready:
            while True:  # what woke us is looked at below; the events themselves say nothing more
                try:
                    os.read(self.wake, 65536)
                except BlockingIOError:
                    break
        if time.monotonic() - self.looked > 1.0:  # the cache folder emptied or moved: written anew
            self.looked = time.monotonic()
            if not (self.dir / "journal").exists():
                self._write()
        try:
            asked = read_record(request)
        except Damaged:
            asked = None
            request.unlink(missing_ok=True)
        if asked is not None:
            request.unlink(missing_ok=True)  # before the answer: a new request must not be lost
            self._cut(asked.get("nonce", b""))

    def _drain(self) -> None:
        self.watcher.drain(self.pending)
        if self.pending.overflow and not getattr(self, "_said_overflow", False):
            log.warning("change journal: the event queue overflowed; the next backup scans everything")
            self._said_overflow = True
        if len(self.pending.dirs) > _MAX_DIRS:
            self.pending.dirs.clear()
            self.pending.trees.clear()
            self.pending.overflow = True

    def _cut(self, nonce: bytes) -> None:
        began = time.monotonic()
        self._drain()
        if isinstance(self.watcher, Inotify):
            self.watcher.settle()
        self.seq += 1
        dirs: dict[bytes, Any] = {}
        trees: set[bytes] = set()
        paths: dict[Any, bytes | None] = {}
        for key, names in self.pending.dirs.items():
            path = paths[key] = self._resolve(key)
            if path is not None:  # two keys may name one directory (a plain FID's is its file's)
                merge_dirs(dirs, {path: names})
        for key, name in self.pending.trees:
            path = paths[key] if key in paths else self._resolve(key)
            if path is not None:
                trees.add(path.rstrip(b"/") + b"/" + name)
        seg = _Segment(self.seq, self.seq, dirs, time.time_ns() if self.pending.overflow else None, trees)
        self.pending = Drained()
        self._said_overflow = False
        self.segments.append(seg)
        self._prune()
        self._write()
        write_record(self.dir / "cut-ack", {"nonce": nonce, "run": self.run_id, "seq": self.seq})
        log.info("change journal: cut %d, %d changed director%s, in %.2f s", self.seq, len(dirs),
                 "y" if len(dirs) == 1 else "ies", time.monotonic() - began)

    def _resolve(self, key: Any) -> bytes | None:
        """The path of a directory key now, if under the sources."""
        try:
            path = self.watcher.resolve(key)
        except OSError as exc:  # a directory that cannot be named may be one of ours: trust nothing
            log.warning("change journal: a changed directory cannot be named (%s)", exc.strerror)
            self.pending.overflow = True
            return None
        return path if path is not None and under(path, self.sources) else None

    def _prune(self) -> None:
        try:
            good = read_record(self.dir / "last-good") or {}
        except Damaged:
            good = {}
        cut = good.get("journal") or {}
        if cut.get("run") == self.run_id:
            self.segments = [s for s in self.segments if s.last > cut.get("seq", 0)]
        while len(self.segments) > _MAX_SEGMENTS:
            a, b = self.segments[0], self.segments[1]
            self.segments[:2] = [_Segment(a.first, b.last, merge_dirs(a.dirs, b.dirs), a.overflow_ns or b.overflow_ns,
                                          a.trees | b.trees)]

    def _write(self, stopped: bool = False) -> None:
        doc = {"format": FORMAT, "run": self.run_id, "pid": os.getpid(), "boot_id": boot_id(),
               "backend": self.watcher.backend, "watches": self.watcher.watches, "started_ns": self.started_ns,
               "stopped_ns": time.time_ns() if stopped else None, "sources": self.sources,
               "ids": source_ids(self.sources), "incomplete": getattr(self.watcher, "incomplete", None),
               "seq": self.seq,
               "segments": [{"first": s.first, "last": s.last, "overflow_ns": s.overflow_ns,
                             "dirs": [[d, sorted(n) if n is not None else None] for d, n in sorted(s.dirs.items())],
                             "trees": sorted(s.trees)}
                            for s in self.segments]}
        write_record(self.dir / "journal", doc)


# -- the backup side --------------------------------------------------------------------------


class Unusable(Exception):
    """Why the journal cannot be used for this backup (said as the backup's mode reason)."""

    def __init__(self, reason: str, damaged: bool = False) -> None:
        super().__init__(reason)
        self.damaged = damaged  # a keeper may still be running: a cut makes it write the file anew


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_journal(cache: Path, sources: list[bytes]) -> dict[str, Any]:
    """The running keeper's journal, checked to watch `sources` on their current filesystems
    in this boot; Unusable says why not."""
    try:
        doc = read_record(journal_dir(cache) / "journal")
    except Damaged as exc:
        raise Unusable(f"the change journal is damaged ({exc})", damaged=True) from None
    if doc is None:
        raise Unusable("no change journal is kept (`strongroom agent run` is not running)")
    _known_format(doc)
    try:
        if doc["boot_id"] != boot_id():
            raise Unusable("the change journal is from another boot (the machine restarted)")
        if doc["stopped_ns"] is not None:
            raise Unusable(f"the change journal daemon stopped on {when(doc['stopped_ns'])}")
        if not _alive(doc["pid"]):
            raise Unusable(f"the change journal daemon (pid {doc['pid']}) is not running: it was killed or crashed")
        missing = [s for s in sources if not under(s, doc["sources"])]
        if missing:
            raise Unusable(f"the change journal does not watch {len(missing)} of this backup's sources "
                           "(it watches the policy's sources)")
        now = source_ids(sources)
        watched = {bytes(k): v for k, v in doc["ids"].items()}
        for src in sources:
            top = next(w for w in doc["sources"] if under(src, [w]))
            if now[src][1] != (watched.get(top) or [None, None])[1] or None in now[src]:
                raise Unusable("a source is on another filesystem than the one the change journal watches "
                               "(something was mounted there, or it moved)")
    except (KeyError, TypeError, StopIteration):
        raise Unusable("the change journal is damaged (fields missing)", damaged=True) from None
    return doc


def _known_format(doc: dict[str, Any]) -> None:
    if doc.get("format") != FORMAT:
        raise Unusable(f"the change journal is of format {doc.get('format')!r}, not {FORMAT} (written by another "
                       "version of `strongroom agent run`: restart it)")


def request_cut(cache: Path, run_id: str | None, timeout_s: float = CUT_TIMEOUT_S) -> tuple[str, int]:
    """Asks the keeper to close its segment; its run and the segment's number once it is on
    disk. `run_id` None: whichever keeper answers (its journal file was damaged)."""
    folder = journal_dir(cache)
    nonce = secrets.token_bytes(16)
    write_record(folder / "cut-request", {"nonce": nonce})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ack = read_record(folder / "cut-ack")
        except Damaged:
            ack = None
        if ack and ack.get("nonce") == nonce:
            if run_id is not None and ack.get("run") != run_id:
                raise Unusable("the change journal daemon restarted while this backup began")
            return str(ack["run"]), int(ack["seq"])
        time.sleep(0.005)  # the keeper answers in milliseconds (it wakes on the request)
    (folder / "cut-request").unlink(missing_ok=True)
    raise Unusable(f"the change journal daemon did not answer within {timeout_s:.0f} s")


def changed_since(cache: Path, run_id: str, since_seq: int,
                  cut_seq: int) -> tuple[dict[bytes, Names], set[bytes], str]:
    """The directories the journal names in segments (since_seq, cut_seq], read back from
    disk, each with its changed names (None: look at every entry); the directories created or
    moved in; the keeper's backend."""
    try:
        doc = read_record(journal_dir(cache) / "journal")
    except Damaged as exc:
        raise Unusable(f"the change journal is damaged ({exc})") from None
    if doc is None or doc.get("run") != run_id:
        raise Unusable("the change journal daemon restarted while this backup began")
    _known_format(doc)
    if doc.get("incomplete"):
        raise Unusable(f"the change journal is incomplete: {doc['incomplete']}")
    wanted = [s for s in doc["segments"] if s["last"] > since_seq and s["first"] <= cut_seq]
    covered = since_seq
    dirs: dict[bytes, Names] = {}
    trees: set[bytes] = set()
    for seg in sorted(wanted, key=lambda s: s["first"]):
        if seg["first"] > covered + 1:
            break
        if seg["overflow_ns"]:
            raise Unusable(f"the change journal's event queue overflowed on {when(seg['overflow_ns'])}: "
                           "changes were lost")
        try:
            merge_dirs(dirs, {bytes(d): None if n is None else {bytes(x) for x in n} for d, n in seg["dirs"]})
            trees.update(bytes(t) for t in seg["trees"])
        except (KeyError, TypeError, ValueError):
            raise Unusable("the change journal is damaged (a segment does not decode)") from None
        covered = max(covered, seg["last"])
    if covered < cut_seq:
        raise Unusable(f"the change journal lacks the changes after cut {covered}")
    return dirs, trees, str(doc.get("backend"))
