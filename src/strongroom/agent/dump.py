"""`strongroom dump`: one file of a point to a stream, or a folder as a tar stream.

Content is read blob by blob (each verified by the reader: tag, then keyed hash) and written
as it comes, so memory does not grow with the file. Sparse files come out with their holes
as zeros. The tar stream is POSIX pax (as GNU and BSD tar read it): modes, owners (ids and
names), mtimes to the nanosecond, symlinks, hardlinks within the dump, devices and FIFOs,
xattrs (`SCHILY.xattr.*`, as GNU tar writes them) and names that are not UTF-8 (pax
`hdrcharset=BINARY`) all survive. Sockets cannot be held by tar and are left out.
"""

from __future__ import annotations

import os
import struct
import tarfile
from collections.abc import Callable, Iterator
from typing import IO

from strongroom.agent.reader import BlobReader
from strongroom.agent.treediff import find_entry
from strongroom.errors import IntegrityError, UsageError
from strongroom.model import BLOCK, CHAR, DIR, FIFO, FILE, SYMLINK, TYPE_NAMES, Entry, display_path, is_safe_name, join

_ZEROS = bytes(1024 * 1024)
_TAR_TYPES = {DIR: tarfile.DIRTYPE, FILE: tarfile.REGTYPE, SYMLINK: tarfile.SYMTYPE, FIFO: tarfile.FIFOTYPE,
              CHAR: tarfile.CHRTYPE, BLOCK: tarfile.BLKTYPE}


def entry_at(reader: BlobReader, root_tree: bytes, path: bytes) -> Entry:
    found = find_entry(reader, root_tree, path)
    if found is None:
        raise UsageError(f"{display_path(path)} is not in this recovery point")
    return found


def file_content(reader: BlobReader, entry: Entry, path: bytes) -> Iterator[bytes | memoryview]:
    """A file's bytes in order (holes of a sparse file as zeros), failing if the blobs do
    not add up to the size the tree records."""
    size = entry.get("s", 0)
    ids = entry.get("c", [])
    # One blob: `read` takes it from what the folder's walk prefetched; more: a few MiB a request.
    blobs = _listed_lengths(iter([reader.read(ids[0])]) if len(ids) == 1 else reader.read_in_order(ids),
                            entry.get("cl"), path)
    extents = entry.get("sp") or [[0, size]]
    done = 0
    pending = memoryview(b"")
    for offset, length in extents:
        while done < offset:  # a hole
            n = min(offset - done, len(_ZEROS))
            yield memoryview(_ZEROS)[:n]
            done += n
        while length:
            if not pending:
                nxt = next(blobs, None)
                if nxt is None:
                    raise IntegrityError(f"{display_path(path)}: its content is shorter than its recorded size")
                pending = memoryview(nxt)
            piece = pending[:length]
            pending = pending[len(piece):]
            length -= len(piece)
            done += len(piece)
            yield piece
    if pending or next(blobs, None) is not None:
        raise IntegrityError(f"{display_path(path)}: its content is longer than its recorded size")
    while done < size:  # a hole at the end
        n = min(size - done, len(_ZEROS))
        yield memoryview(_ZEROS)[:n]
        done += n


def _listed_lengths(blobs: Iterator[bytes], lengths: list[int] | None, path: bytes) -> Iterator[bytes]:
    """The blobs, each checked against the length its tree lists (`cl`, tree format 2)."""
    for i, blob in enumerate(blobs):
        if lengths is not None and (i >= len(lengths) or len(blob) != lengths[i]):
            raise IntegrityError(f"{display_path(path)}: blob {i} is not of the length its folder lists")
        yield blob


def dump_file(reader: BlobReader, entry: Entry, path: bytes, out: IO[bytes]) -> int:
    """Writes one file's content to `out`; returns its size."""
    if entry["t"] != FILE:
        what = TYPE_NAMES.get(entry["t"], entry["t"])
        hint = "; add --archive tar to get it as a tar stream" if entry["t"] == DIR else \
            "; add --archive tar to get it as a tar member"
        raise UsageError(f"{display_path(path) or '/'} is a {what}, not a file{hint}")
    written = 0
    for piece in file_content(reader, entry, path):
        out.write(piece)
        written += len(piece)
    return written


class _Pieces:
    """A file object over content pieces, for tarfile (which reads exactly the size)."""

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self.pieces, self.pending = pieces, memoryview(b"")

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self.pending:
                nxt = next(self.pieces, None)
                if nxt is None:
                    break
                self.pending = memoryview(nxt)
            piece, self.pending = self.pending[:n - len(out)], self.pending[n - len(out):]
            out += piece
        return bytes(out)

    def finish(self) -> None:
        """Drains the pieces, so that a content longer than recorded is caught."""
        for _ in self.pieces:
            pass


def _ns_text(ns: int) -> str:
    sign = "-" if ns < 0 else ""
    return f"{sign}{abs(ns) // 10**9}.{abs(ns) % 10**9:09d}"


def _name(path: bytes) -> str:
    return os.fsdecode(path.lstrip(b"/")) if path.strip(b"/") else "."


def _walk(reader: BlobReader, entry: Entry, path: bytes,
          skipped: Callable[[bytes, str], None]) -> Iterator[tuple[bytes, Entry]]:
    yield path, entry
    if entry["t"] == DIR and entry.get("tree"):
        children = reader.tree(entry["tree"])
        # The folder's small files in as few requests as the reader's bound allows (one each
        # would cost a round trip per file); hardlinked ones may not be read: not fetched.
        reader.prefetch([e["c"][0] for e in children
                         if e["t"] == FILE and len(e.get("c") or ()) == 1 and "h" not in e])
        for child in children:
            if not is_safe_name(child["n"]):
                # `..` or a slash in a member name would let `tar -x` write outside its folder;
                # a backup never records one, so only a damaged or forged tree can hold it.
                skipped(join(path, child["n"]), "a name that would leave its folder; left out")
                continue
            yield from _walk(reader, child, join(path, child["n"]) if path else b"/" + child["n"], skipped)


def dump_tar(reader: BlobReader, entry: Entry, path: bytes, out: IO[bytes],
             skipped: Callable[[bytes, str], None]) -> int:
    """Writes `entry` (and all below it) as a pax tar stream; returns the members written."""
    links: dict[tuple[int, ...], str] = {}
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for full, e in _walk(reader, entry, path, skipped):
            if not full.strip(b"/"):
                continue  # the root of a point: its children carry the paths
            kind = _TAR_TYPES.get(e["t"])
            if kind is None:
                skipped(full, f"a {TYPE_NAMES.get(e['t'], e['t'])} cannot be held in a tar stream; left out")
                continue
            info = tarfile.TarInfo(_name(full))
            info.type = kind
            info.mode = e.get("m", 0o644)
            info.uid, info.gid = e.get("u") or 0, e.get("g") or 0
            info.uname, info.gname = e.get("U") or "", e.get("G") or ""
            mtime = e.get("mt", 0)
            info.mtime = max(0, mtime // 10**9)
            info.pax_headers = {"mtime": _ns_text(mtime)}
            info.pax_headers.update(_xattr_headers(e.get("x") or {}))
            group = tuple(e["h"]) if e.get("h") and e["t"] != DIR else None
            if e["t"] == SYMLINK:
                info.linkname = os.fsdecode(e.get("l", b""))
            elif e["t"] in (CHAR, BLOCK):
                info.devmajor, info.devminor = os.major(e.get("r", 0)), os.minor(e.get("r", 0))
            if group is not None and group in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[group]
                tar.addfile(info)
            elif e["t"] == FILE and e.get("sp") is not None:
                _add_sparse(tar, info, reader, e, full)
            elif e["t"] == FILE:
                info.size = e.get("s", 0)
                stream = _Pieces(file_content(reader, e, full))
                tar.addfile(info, stream)  # type: ignore[arg-type]
                stream.finish()
            else:
                tar.addfile(info)
            if group is not None and group not in links:
                links[group] = info.name
            count += 1
    return count


def _add_sparse(tar: tarfile.TarFile, info: tarfile.TarInfo, reader: BlobReader, e: Entry, full: bytes) -> None:
    """A sparse file as pax format 1.0 sparse (GNU tar and bsdtar restore its holes): the
    member holds a text map ("count\\n" then "offset\\nlength\\n" per extent, padded to a
    block), then the data extents back to back, as the blobs hold them."""
    extents = [list(x) for x in e["sp"]]
    if not extents or sum(extents[-1]) < e.get("s", 0):
        extents.append([e.get("s", 0), 0])  # a hole at the end: as GNU tar marks it
    lines = [str(len(extents))] + [str(n) for extent in extents for n in extent]
    sparse_map = ("\n".join(lines) + "\n").encode()
    sparse_map += bytes(-len(sparse_map) % tarfile.BLOCKSIZE)
    data = sum(length for _offset, length in extents)  # the data stored, back to back
    real = info.name
    head, tail = os.path.split(real)
    info.name = os.path.join(head, "GNUSparseFile.0", tail)
    info.size = len(sparse_map) + data
    info.pax_headers.update({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": real,
                             "GNU.sparse.realsize": str(e.get("s", 0))})
    blobs = _listed_lengths(reader.read_in_order(e.get("c", [])), e.get("cl"), full)
    stream = _Pieces(_checked(iter([sparse_map]), blobs, data, full))
    tar.addfile(info, stream)  # type: ignore[arg-type]
    stream.finish()


def _checked(first: Iterator[bytes], blobs: Iterator[bytes], expected: int, path: bytes) -> Iterator[bytes]:
    yield from first
    total = 0
    for blob in blobs:
        total += len(blob)
        yield blob
    if total != expected:
        raise IntegrityError(f"{display_path(path)}: its content is {total} bytes, its extents {expected}")


# POSIX ACLs, from the kernel's xattr form to the text GNU tar keeps in SCHILY.acl.* (and
# sets again with `tar -x --acls`).
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_XATTRS = {b"system.posix_acl_access": "SCHILY.acl.access", b"system.posix_acl_default": "SCHILY.acl.default"}


def acl_text(raw: bytes) -> str | None:
    """`user::rw-,user:1000:r--,...` for a binary POSIX ACL (version 2), or None if malformed."""
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != 2:
        return None
    out = []
    for tag, perm, qualifier in struct.iter_unpack("<HHI", raw[4:]):
        name = _ACL_TAGS.get(tag)
        if name is None or perm > 7:
            return None
        who = str(qualifier) if tag in (0x02, 0x08) else ""
        out.append(f"{name}:{who}:{'r' if perm & 4 else '-'}{'w' if perm & 2 else '-'}{'x' if perm & 1 else '-'}")
    return ",".join(out)


def _xattr_headers(xattrs: dict[bytes, bytes]) -> dict[str, str]:
    headers = {}
    for xname, value in xattrs.items():
        if xname in _ACL_XATTRS:
            text = acl_text(value)
            if text is not None:
                headers[_ACL_XATTRS[xname]] = text
        elif not xname.startswith(b"system.") and _utf8(xname) and b"=" not in xname:
            headers["SCHILY.xattr." + xname.decode()] = value.decode("utf-8", "surrogateescape")
    return headers


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
