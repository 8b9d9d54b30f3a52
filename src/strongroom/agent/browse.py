"""Browsing a recovery point: walk its trees, list entries under a path."""

from __future__ import annotations

import os
from collections.abc import Iterator

from strongroom.agent.reader import BlobReader
from strongroom.errors import UsageError
from strongroom.model import DIR, FILE, Entry, display_path, join, split_abs


def walk(reader: BlobReader, tree_id: bytes, path: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
    """Every entry below a tree, depth first, with its absolute path."""
    for entry in reader.tree(tree_id):
        full = join(path, entry["n"]) if path else b"/" + entry["n"]
        yield full, entry
        if entry["t"] == DIR and entry.get("tree"):
            yield from walk(reader, entry["tree"], full)


def list_path(reader: BlobReader, root_tree: bytes, path: bytes | None) -> Iterator[tuple[bytes, Entry]]:
    """The entries under `path` (all of them if None); a file path lists just that file."""
    if not path:
        yield from walk(reader, root_tree)
        return
    parts = split_abs(os.path.abspath(path))
    entries, found, where = reader.tree(root_tree), None, b""
    for part in parts:
        found = next((e for e in entries if e["n"] == part), None)
        if found is None:
            raise UsageError(f"{display_path(path)} is not in this recovery point")
        where = where + b"/" + part
        if found["t"] == DIR:
            entries = reader.tree(found["tree"])
        elif part is not parts[-1]:
            raise UsageError(f"{display_path(path)} is not in this recovery point")
    if found is None:
        yield from walk(reader, root_tree)
    elif found["t"] == DIR:
        yield where, found
        yield from walk(reader, found["tree"], where)
    else:
        yield where, found


def selected_bytes(reader: BlobReader, selections: list[tuple[list[bytes], list[Entry], Entry]]) -> int:
    """The bytes of file content under restore selections (for a progress bar's total)."""
    total = 0
    for _parts, _parents, entry in selections:
        if entry["t"] == DIR:
            total += sum(e.get("s", 0) for _path, e in walk(reader, entry["tree"]) if e["t"] == FILE)
        elif entry["t"] == FILE:
            total += entry.get("s", 0)
    return total
