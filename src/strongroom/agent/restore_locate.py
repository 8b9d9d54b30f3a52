"""The restore's locating ahead, from a vault folder: where the files' blobs lie, found on the
fetch thread ahead of the walk.

The walk (agent/restore.py) located each folder's blobs itself when it entered the folder:
the catalog's query and its rows took ~15 µs a blob of its CPU, a fifth of it, while the
fetch thread, which only a served vault's read-ahead uses (restore_ahead.py, which locates
for itself), stood idle. The folders-first pass (`Restore._premake`) reads every tree before
the walk, level by level in the walk's order: it hands each tree's files' blob IDs here, and
the fetch thread locates them in batches of _BATCH, at most _LEAD IDs ahead of the walk,
which says how far it got. The walk still locates whatever is not located yet, so where the
two orders differ (files at several depths) it costs queries, never a blob.

Memory: the IDs wait here packed (32 bytes each, at most _HELD of them; past that the walk
locates them as before), and the locations found are the ones the walk would have held.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from strongroom.agent.reader import BlobReader
from strongroom.model import Entry
from strongroom.vault.wire import ID_SIZE

_BATCH = 1024  # IDs located in one query
_LEAD = 4 * _BATCH  # IDs located ahead of the walk
_HELD = 200_000  # IDs waiting to be located, at most (6.4 MB)


class LocateAhead:
    def __init__(self, reader: BlobReader, pool: ThreadPoolExecutor) -> None:
        self.reader, self.pool = reader, pool
        self.waiting: deque[bytes] = deque()  # batches of IDs back to back, in the walk's order
        self.held = 0  # IDs in `waiting`
        self.sent = 0  # IDs handed to the fetch thread
        self.walked = 0  # IDs the walk has reached
        self.jobs: deque[Future] = deque()

    def add(self, entries: list[Entry]) -> None:
        """The blob IDs of one tree's files, in the walk's order (a malformed entry or ID is
        left to the walk, which reports it)."""
        ids = [i for e in entries if isinstance(e, dict) and isinstance(e.get("c"), list) for i in e["c"]
               if isinstance(i, bytes) and len(i) == ID_SIZE][:_HELD - self.held]
        if not ids:
            return
        if self.waiting and len(self.waiting[-1]) < _BATCH * ID_SIZE:
            self.waiting[-1] += b"".join(ids)
        else:
            self.waiting.append(b"".join(ids))
        self.held += len(ids)

    def walked_past(self, count: int) -> None:
        """The walk has reached `count` more IDs: the fetch thread locates up to _LEAD past them."""
        self.walked += count
        while self.waiting and self.sent < self.walked + _LEAD:
            packed = self.waiting.popleft()
            ids = [packed[i:i + ID_SIZE] for i in range(0, len(packed), ID_SIZE)]
            self.held -= len(ids)
            self.sent += len(ids)
            while self.jobs and self.jobs[0].done():
                self.jobs.popleft()
            self.jobs.append(self.pool.submit(self.reader.locate, ids))  # failures: the walk's to report

    def stop(self) -> None:
        """Nothing more to locate (the selection is done, or failed)."""
        self.waiting.clear()
        for job in self.jobs:
            job.cancel()
