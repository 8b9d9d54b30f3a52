"""Which recovery points hold a path or name matching a glob (`strongroom find`).

Patterns mean what they mean everywhere (globmatch.py). Points of one machine share most of
their trees, so the matches below a directory are remembered by its tree ID and path: a
directory unchanged since the last point searched is not read again.
"""

from __future__ import annotations

from collections.abc import Iterator

from strongroom.agent.reader import BlobReader
from strongroom.globmatch import Matcher
from strongroom.model import DIR, Entry, join

# Directories remembered (tree ID and path -> their matches): bounded, since a machine with
# millions of directories in hundreds of versions would otherwise fill memory; when full the
# memory starts again, which costs reading trees, never a wrong answer.
_REMEMBERED_DIRS = 200_000


class Finder:
    def __init__(self, reader: BlobReader, matcher: Matcher) -> None:
        self.reader, self.matcher = reader, matcher
        self.memo: dict[tuple[bytes, bytes], tuple[tuple[bytes, Entry], ...]] = {}

    def matches(self, root_tree: bytes) -> Iterator[tuple[bytes, Entry]]:
        """(absolute path, entry) of every entry of a point that the pattern matches, depth first."""
        yield from self._below(root_tree, b"")

    def _below(self, tree_id: bytes, path: bytes) -> tuple[tuple[bytes, Entry], ...]:
        key = (tree_id, path)
        found = self.memo.get(key)
        if found is not None:
            return found
        out: list[tuple[bytes, Entry]] = []
        for entry in self.reader.tree(tree_id):
            full = join(path, entry["n"]) if path else b"/" + entry["n"]
            if self.matcher(full, entry["n"]):
                out.append((full, entry))
            if entry["t"] == DIR and entry.get("tree"):
                out.extend(self._below(entry["tree"], full))
        if len(self.memo) >= _REMEMBERED_DIRS:
            self.memo.clear()
        self.memo[key] = found = tuple(out)
        return found
