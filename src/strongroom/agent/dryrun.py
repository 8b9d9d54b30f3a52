"""`backup --dry-run`: the walk of a backup, without reading a file or writing anything.

It compares the sources with the newest point as a backup would (same selection, same
change detection), and reports what would be new or changed and how many bytes would be
read. Nothing reaches the vault (no packs, no point, no job) and nothing is written to the
agent's cache (no known-blob index, no refs spool): only the parent's trees are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from strongroom.agent.backup import Backup, Counters, _PendingDir
from strongroom.agent.selection import change_base
from strongroom.model import Entry


@dataclass
class DryRunResult:
    stats: dict[str, Any]
    warnings: list[tuple[bytes, str]]


class DryRun(Backup):
    """A backup that only walks; `on_file` sees each file that would be read."""

    def run(self) -> DryRunResult:  # type: ignore[override]
        points = change_base(self.book.live())
        self.to_read = 0
        self.linked: set[tuple[int, int]] = set()
        self._build_root(points[0].manifest["tree"] if points else None)
        c: Counters = self.counters
        stats = {"files_new": c.files_new, "files_changed": c.files_changed, "files_unchanged": c.files_unchanged,
                 "dirs": c.dirs, "bytes_to_read": self.to_read, "bytes_total": c.bytes_total,
                 "warnings": len(self.warnings)}
        return DryRunResult(stats, self.warnings)

    def _queue(self, items: list[Any], parent_tree: bytes | None,
               parent_entries: dict[bytes, Entry] | None = None) -> _PendingDir:
        return _PendingDir([], parent_tree)  # no tree is made: nothing would keep it

    def _scan_file(self, dfd: int, full: bytes, name: bytes, st: os.stat_result, prev: Entry | None) -> Any:
        what = self._classify(prev, st)
        if what is None:
            return None
        link_key = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
        if link_key not in self.linked:  # a second link to a file is not read again
            # a sparse file's holes are not read: only what is allocated (at most its size)
            self.to_read += min(st.st_size, st.st_blocks * 512)
            if link_key:
                self.linked.add(link_key)
        if self.on_file is not None:
            self.on_file(what, full, st.st_size)
        return None
