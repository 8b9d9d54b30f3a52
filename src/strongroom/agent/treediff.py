"""What changed between two recovery points (`strongroom diff`), and finding one path's entry
in a point (shared by diff, dump and find).

The walk compares trees side by side and never descends into a pair of directories whose
tree IDs are equal: equal IDs mean equal content, all the way down (model.py), so the
cost of a diff grows with what changed, not with the size of the points.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from strongroom.errors import UsageError
from strongroom.model import DIR, FILE, TYPE_NAMES, Entry, display_path, join, split_abs

# Entry keys that are the content of an entry (its data, a link's target, a device number);
# the rest that a restore puts back are metadata. Inode, ctime, atime and hardlink groups
# change without anything a user changed (a copy, a read, a restore), so they are not compared.
_CONTENT_KEYS = ("c", "sp", "s", "l", "r")
_METADATA_KEYS = {"m": "mode", "u": "owner", "g": "owner", "U": "owner", "G": "owner", "mt": "mtime",
                  "x": "xattrs"}


class TreeSource(Protocol):
    def tree(self, tree_id: bytes) -> list[Entry]: ...


def root_entry(tree_id: bytes) -> Entry:
    """A point's root tree as a directory entry named `/`."""
    return {"n": b"", "t": DIR, "tree": tree_id}


def find_entry(reader: TreeSource, root_tree: bytes, path: bytes) -> Entry | None:
    """The entry at absolute `path` in a point (the root for `/`), or None when it is not there."""
    entry = root_entry(root_tree)
    for part in split_abs(os.path.abspath(path)):
        if entry["t"] != DIR or not entry.get("tree"):
            return None
        entry = next((e for e in reader.tree(entry["tree"]) if e["n"] == part), None)
        if entry is None:
            return None
    return entry


@dataclass
class Change:
    path: bytes
    change: str  # added, removed, modified
    type_before: str | None
    type_after: str | None
    size_before: int | None
    size_after: int | None
    content: bool = False  # modified: the data (or link target, device number) differs
    metadata: list[str] = field(default_factory=list)  # modified: which metadata differs

    def to_dict(self) -> dict[str, Any]:
        return {"path": display_path(self.path), "change": self.change, "type_before": self.type_before,
                "type_after": self.type_after, "size_before": self.size_before, "size_after": self.size_after,
                "content": self.content, "metadata": self.metadata}


def _type(e: Entry) -> str:
    return TYPE_NAMES.get(e["t"], str(e["t"]))


def _size(e: Entry) -> int | None:
    return e.get("s", 0) if e["t"] == FILE else None


def compare(a: Entry, b: Entry) -> tuple[bool, list[str]]:
    """(content differs, the metadata that differs) between two entries of one type."""
    content = any(a.get(k) != b.get(k) for k in _CONTENT_KEYS)
    metadata = sorted({name for k, name in _METADATA_KEYS.items() if a.get(k) != b.get(k)})
    return content, metadata


def _below(reader: TreeSource, entry: Entry, path: bytes) -> Iterator[tuple[bytes, Entry]]:
    if entry["t"] == DIR and entry.get("tree"):
        for child in reader.tree(entry["tree"]):
            full = join(path, child["n"]) if path else b"/" + child["n"]
            yield full, child
            yield from _below(reader, child, full)


def _one_side(reader: TreeSource, entry: Entry, path: bytes, added: bool) -> Iterator[Change]:
    """An entry (and everything below it) present on one side only."""
    for full, e in [(path, entry), *_below(reader, entry, path)]:
        t, s = _type(e), _size(e)
        yield (Change(full, "added", None, t, None, s) if added else Change(full, "removed", t, None, s, None))


def diff_entries(reader: TreeSource, a: Entry | None, b: Entry | None, path: bytes) -> Iterator[Change]:
    """The changes from entry `a` to entry `b` at `path` (either may be None: absent), depth
    first in name order; the path itself is reported unless both are directories."""
    if a is None and b is None:
        return
    if a is None or b is None:
        yield from _one_side(reader, a or b, path, added=a is None)  # type: ignore[arg-type]
        return
    if a["t"] != b["t"]:
        yield Change(path, "modified", _type(a), _type(b), _size(a), _size(b), True, ["type"])
        yield from (c for c in _one_side(reader, a, path, False) if c.path != path)
        yield from (c for c in _one_side(reader, b, path, True) if c.path != path)
        return
    if a["t"] == DIR:
        _content, metadata = compare(a, b)
        if metadata and path:
            yield Change(path, "modified", _type(a), _type(b), None, None, False, metadata)
        if a.get("tree") == b.get("tree"):
            return  # equal trees: nothing below differs, and nothing below is read
        yield from _diff_dirs(reader, a, b, path)
        return
    content, metadata = compare(a, b)
    if content or metadata:
        yield Change(path, "modified", _type(a), _type(b), _size(a), _size(b), content, metadata)


def _diff_dirs(reader: TreeSource, a: Entry, b: Entry, path: bytes) -> Iterator[Change]:
    left = reader.tree(a["tree"]) if a.get("tree") else []
    right = reader.tree(b["tree"]) if b.get("tree") else []
    i = j = 0
    while i < len(left) or j < len(right):  # both sorted by name (model.encode_tree)
        if j >= len(right) or (i < len(left) and left[i]["n"] < right[j]["n"]):
            pair, i = (left[i], None), i + 1
        elif i >= len(left) or right[j]["n"] < left[i]["n"]:
            pair, j = (None, right[j]), j + 1
        else:
            pair, i, j = (left[i], right[j]), i + 1, j + 1
        name = (pair[0] or pair[1])["n"]  # type: ignore[index]
        yield from diff_entries(reader, pair[0], pair[1], join(path, name) if path else b"/" + name)


def diff_points(reader: TreeSource, tree_a: bytes, tree_b: bytes, path: bytes | None = None) -> Iterator[Change]:
    """The changes from point A (root tree `tree_a`) to point B, under `path` if given; a
    `path` in neither point is refused."""
    if not path:
        yield from diff_entries(reader, root_entry(tree_a), root_entry(tree_b), b"")
        return
    where = b"/" + b"/".join(split_abs(os.path.abspath(path)))
    a, b = find_entry(reader, tree_a, where), find_entry(reader, tree_b, where)
    if a is None and b is None:
        raise UsageError(f"{display_path(path)} is in neither recovery point")
    yield from diff_entries(reader, a, b, where if where != b"/" else b"")
