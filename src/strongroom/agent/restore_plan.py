"""What a restore touches before and after it runs: --include/--exclude, --dry-run, --verify.

Selection uses globmatch, the project's one glob meaning, on the point's absolute paths. An
entry is restored when no exclude pattern matches it or a folder above it, and, if include
patterns are given, when one matches it or a folder above it (an included folder brings its
whole subtree). Folders that only lead to included entries are made too, with their own
metadata, and nothing else of them. Which such folders hold something is found by a walk
of the point's trees before anything is written (only below folders not included whole).

A dry run walks the same selection and asks the target, without changing it, what the
conflict rule would do with each entry. Verification re-reads what the restore wrote and
holds it against the point: content (read again from the vault, verified), type, size,
mode, mtime, link target and, as root, owner.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from strongroom.agent.reader import BlobReader
from strongroom.agent.restore import copy_name
from strongroom.errors import StrongroomError, VaultUnreachable
from strongroom.globmatch import compile_globs
from strongroom.model import DIR, FILE, SYMLINK, TYPE_NAMES, Entry, display_path, is_safe_name

Selection = tuple[list[bytes], list[Entry], Entry]  # as restore.select_entries makes them
_ALL, _SOME = "all", "some"  # a folder restored whole (less excludes), or only towards included entries
_VERIFY_PIECE = 1024 * 1024


def _prefixes(path: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(path, name) of every folder above `path` and of `path` itself, top first."""
    parts = [p for p in path.split(b"/") if p]
    for i in range(1, len(parts) + 1):
        yield b"/" + b"/".join(parts[:i]), parts[i - 1]


class Selector:
    """Decides, entry by entry, what a restore with --include/--exclude writes."""

    def __init__(self, includes: tuple[str, ...] = (), excludes: tuple[str, ...] = ()) -> None:
        self.include = compile_globs(includes) if includes else None
        self.exclude = compile_globs(excludes)
        self.active = bool(includes or excludes)
        self.folders: dict[bytes, str] = {}  # folder path -> _ALL or _SOME

    def _excluded(self, path: bytes) -> bool:
        return any(self.exclude(p, n) for p, n in _prefixes(path))

    def _included(self, path: bytes) -> bool:
        return self.include is None or any(self.include(p, n) for p, n in _prefixes(path))

    def prepare(self, reader: BlobReader, selections: list[Selection]) -> list[Selection]:
        """The selections that restore anything, with the folders' states found by a walk."""
        kept = []
        for parts, parents, entry in selections:
            path = b"/" + b"/".join(parts) if parts else b""
            if parts and self._excluded(path):
                continue
            if self._included(path) if parts else self.include is None:
                if entry["t"] == DIR:
                    self.folders[path] = _ALL
                kept.append((parts, parents, entry))
            elif entry["t"] == DIR and "tree" in entry and self._scan(reader, path, entry["tree"]):
                self.folders[path] = _SOME
                kept.append((parts, parents, entry))
        return kept

    def _scan(self, reader: BlobReader, path: bytes, tree_id: bytes) -> bool:
        """Whether anything below this folder (not included itself) is included; marks the
        folders on the way."""
        found = False
        for e in reader.tree(tree_id):
            full = path + b"/" + e["n"]
            if self.exclude(full, e["n"]):
                continue
            assert self.include is not None
            if self.include(full, e["n"]):
                found = True
            elif e["t"] == DIR and "tree" in e and self._scan(reader, full, e["tree"]):
                self.folders[full] = _SOME
                found = True
        return found

    def keep(self, folder: bytes, entry: Entry) -> bool:
        """Whether the entry named in `folder` (restored or on the way) is restored."""
        name = entry.get("n", b"")
        full = folder + b"/" + name
        if self.exclude(full, name):
            return False
        state = self.folders.get(folder, _ALL)
        if state == _ALL or (self.include is not None and self.include(full, name)):
            if entry["t"] == DIR:
                self.folders[full] = _ALL
            return True
        return self.folders.get(full) == _SOME


def selected(reader: BlobReader, selector: Selector,
             selections: list[Selection]) -> Iterator[tuple[bytes, Entry]]:
    """(point path, entry) of everything a restore of `selections` writes, folders first."""
    def below(folder: bytes, tree_id: bytes) -> Iterator[tuple[bytes, Entry]]:
        for e in reader.tree(tree_id):
            if selector.keep(folder, e):
                full = folder + b"/" + e["n"]
                yield full, e
                if e["t"] == DIR and "tree" in e:
                    yield from below(full, e["tree"])

    for parts, _parents, entry in selections:
        if not parts:
            yield from below(b"", entry["tree"])
            continue
        path = b"/" + b"/".join(parts)
        yield path, entry
        if entry["t"] == DIR and "tree" in entry:
            yield from below(path, entry["tree"])


# -- dry run -------------------------------------------------------------------------------


@dataclass
class DryRun:
    entries: list[dict[str, object]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("write", "overwrite", "skip", "copy", "refuse"), 0))
    bytes_to_write: int = 0


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:  # a file where the point has a folder: the restore refuses there
        return None


def dry_run(reader: BlobReader, selector: Selector, selections: list[Selection], root: bytes,
            conflict: str, created_ns: int) -> DryRun:
    """What a restore under `root` would do with each entry, asking the target only (lstat)."""
    plan = DryRun()
    blocked: list[bytes] = []  # folders a restore could not enter: nothing below is written
    for path, entry in selected(reader, selector, selections):
        if any(path.startswith(b + b"/") for b in blocked):
            continue
        where = root.rstrip(b"/") + path
        there = _lstat(where)
        name = entry.get("n", path.rsplit(b"/", 1)[-1])
        row: dict[str, object] = {"path": display_path(path), "type": TYPE_NAMES.get(entry["t"], entry["t"]),
                                  "size": entry.get("s", 0)}
        if not isinstance(name, bytes) or not is_safe_name(name):
            action, row["reason"] = "refuse", "the name would leave its directory"
        elif entry["t"] == DIR:
            if there is None or stat.S_ISDIR(there.st_mode):
                continue  # made or entered: the entries inside say what is written
            if conflict != "overwrite":
                action, row["reason"] = "refuse", "a non-directory is in the way"
                blocked.append(path)
            else:
                action = "overwrite"
        elif there is None:
            action = "write"
        elif conflict == "skip":
            action = "skip"
        elif conflict == "copy":
            action, row["as"] = "copy", display_path(_free_copy_name(where, name, created_ns))
        elif stat.S_ISDIR(there.st_mode):
            action, row["reason"] = "refuse", "a directory is in the way"
        else:
            action = "overwrite"
        row["action"] = action
        plan.counts[action] += 1
        if action in ("write", "overwrite", "copy") and entry["t"] == FILE:
            plan.bytes_to_write += entry.get("s", 0)
        plan.entries.append(row)
    return plan


def _free_copy_name(where: bytes, name: bytes, created_ns: int) -> bytes:
    folder = where.rsplit(b"/", 1)[0] or b"/"
    for n in range(1, 10000):
        candidate = os.path.join(folder, copy_name(name, created_ns, n))
        if _lstat(candidate) is None:
            return candidate
    return os.path.join(folder, copy_name(name, created_ns, 10000))


# -- verification --------------------------------------------------------------------------


def verify(reader: BlobReader, written: list[tuple[bytes, Entry]], root: bytes,
           progress: Callable[[int], None] | None = None) -> list[dict[str, str]]:
    """Mismatches between what the restore wrote (target-relative paths, as written) and the
    point: [{"path", "error"}]."""
    problems = []
    for path, entry in sorted(written, key=lambda w: w[0]):
        where = root.rstrip(b"/") + path
        try:
            problem = _mismatch(reader, where, entry)
        except VaultUnreachable:
            raise  # not a finding about what was written
        except (OSError, StrongroomError) as exc:
            problem = f"cannot be read back: {getattr(exc, 'strerror', None) or exc}"
        if problem:
            problems.append({"path": display_path(where), "error": f"verify: {problem}"})
        if progress is not None:
            progress(entry.get("s", 0) if entry["t"] == FILE else 0)
    return problems


def _mismatch(reader: BlobReader, where: bytes, entry: Entry) -> str | None:
    st = os.lstat(where)
    kind = entry["t"]
    if _type_of(st) != kind:
        return f"is a {TYPE_NAMES.get(_type_of(st), '?')}, the point has a {TYPE_NAMES.get(kind, kind)}"
    if kind == SYMLINK:
        if os.readlink(where) != entry["l"]:
            return "link target differs"
    elif kind == FILE:
        if st.st_size != entry.get("s", 0):
            return f"size {st.st_size}, the point has {entry.get('s', 0)}"
        if not _same_content(reader, where, entry):
            return "content differs"
    if kind != SYMLINK and stat.S_IMODE(st.st_mode) != entry["m"]:
        return f"mode {stat.S_IMODE(st.st_mode):o}, the point has {entry['m']:o}"
    if kind != SYMLINK and "mt" in entry and st.st_mtime_ns != entry["mt"]:
        return "modification time differs"
    if os.geteuid() == 0 and "u" in entry and (st.st_uid, st.st_gid) != (entry["u"], entry.get("g")):
        return f"owner {st.st_uid}:{st.st_gid}, the point has {entry['u']}:{entry.get('g')}"
    return None


def _type_of(st: os.stat_result) -> str:
    from strongroom.agent.fsmeta import entry_type
    return entry_type(st)


def _same_content(reader: BlobReader, where: bytes, entry: Entry) -> bool:
    """The file's bytes against the point's blobs, read again from the vault (and verified
    there against their IDs). Sparse files: the data extents at their offsets (holes are
    not read)."""
    fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        extents = entry.get("sp")
        blobs = reader.read_in_order(entry.get("c", []))
        if extents is None:
            extents = [[0, entry.get("s", 0)]]
        buffer, pos = b"", 0
        for offset, length in extents:
            while length:
                if pos == len(buffer):
                    buffer, pos = next(blobs, b""), 0
                    if not buffer:
                        return False
                n = min(length, len(buffer) - pos, _VERIFY_PIECE)
                if os.pread(fd, n, offset) != buffer[pos:pos + n]:
                    return False
                offset, length, pos = offset + n, length - n, pos + n
        return pos == len(buffer) and next(blobs, None) is None
    finally:
        os.close(fd)
