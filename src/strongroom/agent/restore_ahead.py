"""The restore's read-ahead: small files' content fetched in the order the walk reads it.

A served vault answers each request in a round trip. The walk (agent/restore.py) reads a
folder's small files a window at a time; fetched only when the walk gets there, each window
cost it a locate and a read round trip, and with folders of a few dozen files (the bench's
corpus: 500 folders of 40) the walk waited for them ~40 % of its time while the fetch thread
stood idle half of its. Here the fetch thread walks the same trees in the same order on its
own, ahead of the walk, and fetches the windows in batches of several folders: at most
_AHEAD_BYTES of fetched content waits for the walk (BlobReader.held), and the walk waits only
for a window whose fetch is under way.

Any difference between the two walks costs requests, never content: a window the walk
reaches before it is under way here is fetched by the walk (and skipped here), one the walk
passes over (a folder it could not make) is dropped when the walk reaches a later one, and
a tree or range this thread cannot read it leaves to the walk, which reads and reports it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

from strongroom import chunker
from strongroom.agent.reader import BlobReader
from strongroom.errors import StrongroomError
from strongroom.model import DIR, FILE, Entry, is_safe_name

SMALL_WINDOW = 256  # small files whose content the walk fetches in one go
_AHEAD_BYTES = 8 * 1024 * 1024  # fetched content waiting for the walk before this thread waits
_BATCH_BYTES = 4 * 1024 * 1024  # windows fetched together (one locate request), by their files' sizes
_BATCH_IDS = 4096  # blob IDs located together (one locate request)

Key = tuple[bytes, int]  # (tree ID, the index of the window's first file in the tree)


def inline(entry: Entry) -> bool:
    """Small files without hardlinks are written by the walking thread: a pool hop would
    cost more than the write."""
    return entry.get("s", 0) <= chunker.MIN_SIZE and "h" not in entry


def windows(children: list[Entry]) -> dict[int, tuple[list[bytes], int]]:
    """The walk's windows of a folder: index of the window's first small file -> (the blob
    IDs of the window's small files, their size)."""
    small = [i for i, e in enumerate(children) if e["t"] == FILE and inline(e)]
    return {small[k]: ([c for j in small[k:k + SMALL_WINDOW] for c in children[j].get("c", ())],
                       sum(children[j].get("s", 0) for j in small[k:k + SMALL_WINDOW]))
            for k in range(0, len(small), SMALL_WINDOW)}


def subfolders(children: list[Entry]) -> list[Entry]:
    """The entries the walk enters as folders."""
    return [e for e in children if e["t"] == DIR and "tree" in e and isinstance(e.get("n"), bytes)
            and is_safe_name(e["n"])]


class _Stopped(Exception):
    pass


class ReadAhead:
    def __init__(self, reader: BlobReader, pool: ThreadPoolExecutor, root_tree: bytes) -> None:
        self.reader = reader
        self.lock = threading.Lock()
        self.units: dict[Key, tuple[threading.Event, list[bytes]]] = {}  # under way or fetched, in order
        self.passed: set[Key] = set()  # reached by the walk before they were under way here
        self.batch: list[tuple[Key, list[bytes]]] = []
        self.batch_bytes = 0
        self.to_locate: list[bytes] = []
        self.stopped = False
        self.future: Future = pool.submit(self._run, root_tree)

    # -- the walk's side --------------------------------------------------------------------

    def reached(self, key: Key) -> None:
        """The walk is at this window: waits for its fetch if under way here; drops the
        windows before it that the walk passed over."""
        with self.lock:
            if key not in self.units:
                self.passed.add(key)  # the walk fetches it itself
                return
            before: list[tuple[threading.Event, list[bytes]]] = []
            for k in list(self.units):
                unit = self.units.pop(k)
                if k == key:
                    break
                before.append(unit)
        for event, ids in before:
            event.wait()
            self.reader.drop(ids)
        unit[0].wait()

    def stop(self) -> None:
        """Ends the fetching (after the request in flight) and drops what the walk did not take."""
        self.stopped = True
        self.reader.wake()
        try:
            self.future.result()
        finally:
            with self.lock:
                left, self.units = list(self.units.values()), {}
            for _event, ids in left:
                self.reader.drop(ids)

    # -- the fetch thread -------------------------------------------------------------------

    def _run(self, root_tree: bytes) -> None:
        try:
            self._folder(root_tree)
            self._flush()
        except (_Stopped, OSError, StrongroomError):
            pass  # the walk reads what was not fetched, and reports what cannot be read

    def _folder(self, tree_id: bytes) -> None:
        if self.stopped:
            raise _Stopped
        children = self.reader.tree(tree_id)
        subs = {id(e) for e in subfolders(children)}
        trees = [e["tree"] for e in children if id(e) in subs]
        self.to_locate.extend(trees)
        self.to_locate.extend(c for e in children for c in e.get("c", ()))
        if len(self.to_locate) >= _BATCH_IDS:  # folders of large files only add no window
            self._flush()
        starts = windows(children)
        fetched_trees = False
        try:
            for i, entry in enumerate(children):  # the walk's order: see Restore._restore_children
                if i in starts:
                    self._add((tree_id, i), *starts[i])
                if id(entry) in subs:
                    if not fetched_trees:  # the subfolders' trees, in one request if not at hand
                        fetched_trees = True
                        self.reader.prefetch(trees)
                    self._folder(entry["tree"])
        finally:
            if fetched_trees:
                self.reader.drop(trees)  # those not read here (dropping one read is a no-op)

    def _add(self, key: Key, ids: list[bytes], size: int) -> None:
        self.batch.append((key, ids))
        self.batch_bytes += size
        if self.batch_bytes >= _BATCH_BYTES or len(self.to_locate) >= _BATCH_IDS:
            self._flush()

    def _flush(self) -> None:
        """Fetches the batch's windows once the walk has taken enough of what waits."""
        self.reader.wait_held(_AHEAD_BYTES, self._is_stopped)
        if self.stopped:
            raise _Stopped
        events: list[threading.Event] = []
        ids: list[bytes] = []
        with self.lock:
            for key, unit_ids in self.batch:
                if key in self.passed:
                    self.passed.discard(key)
                    continue
                event = threading.Event()
                self.units[key] = (event, unit_ids)
                events.append(event)
                ids.extend(unit_ids)
        self.batch, self.batch_bytes = [], 0
        try:
            to_locate, self.to_locate = self.to_locate, []
            self.reader.locate(to_locate)
            self.reader.prefetch(ids)
        finally:
            for event in events:
                event.set()

    def _is_stopped(self) -> bool:
        return self.stopped

