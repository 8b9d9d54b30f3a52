"""The file system `strongroom mount` shows (pyfuse3 operations): every recovery point, read only.

    /by-id/<point id>/<the point's absolute paths>
    /by-date/<YYYY-MM-DD HH-MM> -> ../by-id/<point id>     (" (2)" and so on for a second in a minute)
    /latest -> by-id/<newest point id>

Entries carry what the point recorded: owner, mode, times, xattrs (ACLs among them), symlink
targets, device numbers; the files of one hardlink group in a point share one inode number.
Inode numbers are handed out as entries are first seen and stay for the life of the mount.
The list of points is read again when the top folders are looked at (at most every few
seconds): a point that prune removed disappears, and lookups inside it fail with ENOENT;
files already open read on from blobs still in the vault (verified) or fail with EIO.
Anything the vault or a blob cannot give is EIO for that read only.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from strongroom.agent.mount_content import BlobSource, FileContent
from strongroom.agent.pointbook import OpenedPoint, PointBook
from strongroom.agent.reader import BlobReader
from strongroom.errors import StrongroomError
from strongroom.model import BLOCK, CHAR, DIR, FIFO, FILE, SOCKET, SYMLINK, Entry, display_path, is_safe_name

ROOT, BY_ID, BY_DATE, LATEST = pyfuse3.ROOT_INODE, 2, 3, 4
_TOP_TIMEOUT = 1.0  # the top folders change as points come and go
_POINT_TIMEOUT = 3600.0  # a point's contents never change
_REFRESH_SECONDS = 2.0
_READ_AHEAD_BYTES = 4 * 1024 * 1024  # small files fetched with the first one read in a folder
_READ_AHEAD_FILES = 256
# Folders below one listed from the vault, listed ahead breadth first: `find`, `ls -R` and
# `cp -r` list them next, and then need no thread and no request each. Bounded by count and
# by their trees' sealed bytes per read-ahead. A folder looked up in (opening a path) reads
# ahead _LOOKUP_AHEAD_BYTES; one read (a walk) reads ahead from _WALK_AHEAD_BYTES, each next
# time twice as much, up to _TREES_AHEAD_BYTES. The folders left at the edge of a read-ahead
# (at most _FRONTIER) start the next one.
_TREES_AHEAD = 512
_LOOKUP_AHEAD_BYTES = 16 * 1024
_WALK_AHEAD_BYTES = 64 * 1024
_TREES_AHEAD_BYTES = 1024 * 1024
_FRONTIER = 4096
_TYPE_BITS = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK, FIFO: stat.S_IFIFO,
              CHAR: stat.S_IFCHR, BLOCK: stat.S_IFBLK, SOCKET: stat.S_IFSOCK}
T = TypeVar("T")


_INT_FIELDS = ("m", "u", "g", "mt", "at", "ct", "s", "r")
_INT_LOW, _INT_HIGH = -2**63, 2**63
_ABSENT = object()


def _shown(e: Any) -> bool:
    """Whether a tree entry has a safe name and well-formed attributes (a malformed one, which
    only a hostile or broken writer makes, is left out rather than failing its whole folder).
    Runs once per entry of every folder listed: written as plain tests and a loop (about half
    the time of the same checks with isinstance and a generator)."""
    if not isinstance(e, dict):
        return False
    name = e.get("n")
    if type(name) is not bytes or not is_safe_name(name):
        return False
    kind = e.get("t")
    if kind not in _TYPE_BITS or type(e.get("m")) is not int or type(e.get("mt")) is not int:
        return False
    for k in _INT_FIELDS:  # exactly int (not bool), within 64 bits
        v = e.get(k, _ABSENT)
        if v is not _ABSENT and (type(v) is not int or not _INT_LOW <= v < _INT_HIGH):
            return False
    if kind == SYMLINK and type(e.get("l")) is not bytes:
        return False
    if kind == DIR and "tree" in e and type(e["tree"]) is not bytes:
        return False
    xattrs = e.get("x", _ABSENT)
    if xattrs is _ABSENT:
        return True
    return isinstance(xattrs, dict) and all(type(k) is bytes and type(v) is bytes for k, v in xattrs.items())


def guarded(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """A request handler whose unexpected failures (a malformed entry from a hostile vault, a
    bug) answer EIO for that request: pyfuse3 lets anything but FUSEError end the mount."""
    @functools.wraps(handler)
    async def run(self: PointsFS, *args: Any) -> T:
        try:
            return await handler(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, and the mount goes on
            self._note(None, f"{handler.__name__}: {type(exc).__name__}: {exc}")
            raise pyfuse3.FUSEError(errno.EIO) from None
    return run


def date_name(created_ns: int) -> bytes:
    return time.strftime("%Y-%m-%d %H-%M", time.localtime(created_ns / 1e9)).encode()


class Node:
    """One inode: an entry of a point (or a synthetic folder or link of the top levels)."""

    __slots__ = ("ino", "point", "entry", "kids", "target", "parent")

    def __init__(self, ino: int, point: str | None, entry: Entry, target: bytes | None = None,
                 parent: Node | None = None) -> None:
        self.ino, self.point, self.entry, self.target, self.parent = ino, point, entry, target, parent
        self.kids: dict[bytes, int] | None = None  # a folder's children (name -> inode) once listed, in order


@dataclass
class MountStats:
    files_opened: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the job record


class PointsFS(pyfuse3.Operations):
    """Read-only views of a machine's points, loaded lazily from its trees."""

    enable_acl = True  # the kernel checks the points' POSIX ACLs, as on the original disk

    def __init__(self, book: PointBook, reader: BlobReader, source: BlobSource, warn: Callable[[str], None]) -> None:
        super().__init__()
        self.book, self.reader, self.source, self.warn = book, reader, source, warn
        self.lock = threading.Lock()
        self.nodes: dict[int, Node] = {}
        self.next_ino = LATEST + 1
        self.points: dict[str, OpenedPoint] = {}  # live ones, by id
        self.point_root: dict[str, int] = {}  # point id -> inode of its root folder
        self.date_links: list[tuple[bytes, int]] = []
        self.links: dict[tuple[str, int, int], int] = {}  # (point, st_dev, st_ino) -> inode
        self.date_inos: dict[str, int] = {}  # point id -> inode of its by-date link
        self.frontier: list[Node] = []  # folders an earlier read-ahead left unlisted at its edge
        self.walk_ahead = _WALK_AHEAD_BYTES  # the bound of the next read-ahead of a walk
        self.serial = False  # requests answered one at a time: vault work needs no thread
        self.initialized = False  # the kernel's INIT answered
        self.contents: dict[int, FileContent] = {}  # open files
        self.open_count: dict[int, int] = {}
        self.refreshed = 0.0
        self.mounted_ns = time.time_ns()
        self.stats = MountStats()
        synthetic = {"t": DIR, "m": 0o555, "u": os.geteuid(), "g": os.getegid(), "mt": self.mounted_ns}
        for ino in (ROOT, BY_ID, BY_DATE):
            self.nodes[ino] = Node(ino, None, synthetic)
        self.nodes[LATEST] = Node(LATEST, None, {**synthetic, "t": SYMLINK, "m": 0o777}, b"")

    def init(self) -> None:
        """Called by pyfuse3 while it answers the kernel's INIT (mount.serve waits for it)."""
        self.initialized = True

    @property
    def local(self) -> bool:
        """Whether the vault is on a local disk (embedded): its reads take micro- to
        milliseconds, so requests are answered one at a time (see mount.serve, which sets
        `serial` when it does so)."""
        return self.reader.vault.local

    # -- the list of points -----------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Reads the vault's list of points again (checked: sealed manifests, order, rollback)."""
        if not force and time.monotonic() - self.refreshed < _REFRESH_SECONDS:
            return
        live = self.book.live()  # newest first
        with self.lock:
            self.refreshed = time.monotonic()
            self.points = {p.id: p for p in live}
            for p in live:
                if p.id not in self.point_root:
                    root = {"t": DIR, "m": 0o555, "u": 0, "g": 0, "mt": p.created_ns, "tree": p.manifest["tree"]}
                    self.point_root[p.id] = self._new_node(p.id, root).ino
            taken: dict[bytes, int] = {}
            links = []
            for p in reversed(live):  # oldest first: its name does not change as newer ones come
                base = date_name(p.created_ns)
                taken[base] = taken.get(base, 0) + 1
                name = base if taken[base] == 1 else base + b" (%d)" % taken[base]
                links.append((name, self._date_link(p)))
            self.date_links = links
            latest = self.nodes[LATEST]
            latest.target = b"by-id/" + live[0].id.encode() if live else b""
            if live:
                latest.entry = {**latest.entry, "mt": live[0].created_ns}

    def _date_link(self, p: OpenedPoint) -> int:
        ino = self.date_inos.get(p.id)
        if ino is None:
            entry = {"t": SYMLINK, "m": 0o777, "u": 0, "g": 0, "mt": p.created_ns}
            ino = self.date_inos[p.id] = self._new_node(None, entry, b"../by-id/" + p.id.encode()).ino
        return ino

    def _new_node(self, point: str | None, entry: Entry, target: bytes | None = None,
                  parent: Node | None = None) -> Node:
        node = Node(self.next_ino, point, entry, target, parent)
        self.nodes[node.ino] = node
        self.next_ino += 1
        return node

    # -- folders ----------------------------------------------------------------------------

    def _kids(self, node: Node, walk: bool = True) -> dict[bytes, int]:
        """The children of a folder (name -> inode, in order), listed once from its tree
        (blocking); `walk`: it is read (else looked up in), so read further ahead."""
        if node.ino == ROOT:
            return {b"by-date": BY_DATE, b"by-id": BY_ID, **({b"latest": LATEST} if self.points else {})}
        if node.ino == BY_ID:
            return {pid.encode(): self.point_root[pid] for pid in sorted(self.points)}
        if node.ino == BY_DATE:
            return dict(self.date_links)
        if node.kids is None:
            entries = self.reader.tree(node.entry["tree"]) if node.entry.get("tree") else []
            self._set_kids(node, entries)
            try:
                self._list_ahead(node, walk)
            except Exception:  # noqa: BLE001 - only a read-ahead: each folder's own listing reports its failure
                pass
        return node.kids  # type: ignore[return-value]

    def _list_ahead(self, node: Node, walk: bool) -> None:
        """Lists the folders below `node` ahead, breadth first, a level per request, with those
        an earlier read-ahead left unlisted at its edge (else each would cost `find` a thread
        and a request of its own). Bounded: see _TREES_AHEAD. A folder whose tree fails is
        skipped: its own listing reports it."""
        with self.lock:
            todo, self.frontier = self._folders_in(node) + self.frontier, []
            bound = self.walk_ahead if walk else _LOOKUP_AHEAD_BYTES
            if walk:
                self.walk_ahead = min(2 * self.walk_ahead, _TREES_AHEAD_BYTES)
        fetched = size = 0
        while todo and fetched < _TREES_AHEAD and size < bound:
            # Located before they are chosen, by size: no more than could fit (a tree's blob
            # takes a KiB or more), since locating reads the vault's catalog.
            head = todo[:min(_TREES_AHEAD - fetched, max(1, (bound - size) // 1024))]
            self.reader.locate([n.entry["tree"] for n in head if n.kids is None and n.entry.get("tree")])
            batch = []
            for folder in head:  # as many as the bound takes (at least one)
                loc = self.reader.locations.get(folder.entry.get("tree", b""))
                length = loc.length if loc is not None and folder.kids is None else 0
                if batch and size + length > bound:
                    break
                batch.append(folder)
                size += length
            todo = todo[len(batch):]
            ids = [n.entry["tree"] for n in batch if n.kids is None and n.entry.get("tree")]
            self.reader.prefetch(ids)  # one request (a few MiB each) to a served vault
            for folder in batch:
                if folder.kids is not None:
                    continue
                try:
                    entries = self.reader.tree(folder.entry["tree"]) if folder.entry.get("tree") else []
                except StrongroomError:
                    continue
                self._set_kids(folder, entries)
                todo.extend(self._folders_in(folder))
                fetched += 1
            self.reader.drop(ids)  # any not decoded (failed, or decoded meanwhile by another thread)
        with self.lock:
            self.frontier = (todo + self.frontier)[:_FRONTIER]

    def _folders_in(self, node: Node) -> list[Node]:
        """The subfolders of a listed folder that are not listed yet."""
        nodes = self.nodes
        return [kid for kid in (nodes[i] for i in (node.kids or {}).values())
                if kid.kids is None and kid.entry["t"] == DIR]

    def _set_kids(self, node: Node, entries: list[Entry]) -> None:
        with self.lock:
            if node.kids is not None:
                return
            kids = {}
            for e in entries:
                if _shown(e):
                    kids[e["n"]] = self._child(node, e)
                elif isinstance(e, dict) and isinstance(e.get("n"), bytes) and is_safe_name(e["n"]):
                    self._note(node, f"the entry {display_path(e['n'])} is malformed; not shown")
            node.kids = kids

    def _child(self, parent: Node, entry: Entry) -> int:
        point = parent.point
        if "h" in entry and entry["t"] != DIR and point is not None:
            try:
                key = (point, int(entry["h"][0]), int(entry["h"][1]))
            except (TypeError, ValueError, IndexError):
                key = None
            if key is not None:
                ino = self.links.get(key)
                if ino is None:
                    ino = self.links[key] = self._new_node(point, entry, parent=parent).ino
                return ino
        return self._new_node(point, entry, parent=parent).ino

    def path_of(self, node: Node) -> str:
        """Where a node shows in the mount (for messages): by-id/<point>/<path>."""
        names = []
        while node.parent is not None:
            names.append(node.entry.get("n", b""))
            node = node.parent
        return f"by-id/{node.point}/" + display_path(b"/".join(reversed(names)))

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _check_live(self, node: Node) -> None:
        if node.point is not None and node.point not in self.points:
            raise pyfuse3.FUSEError(errno.ENOENT)  # pruned or deleted while mounted

    async def _blocking(self, node: Node, fn: Callable[..., T], *args: Any) -> T:
        """Runs vault work in a thread, so other requests go on; failures become EIO. On a local
        disk it runs in place: requests are answered one at a time there (see `local`), so a
        thread would only add two hand-overs to each."""
        try:
            if self.serial:
                return fn(*args)
            return await trio.to_thread.run_sync(fn, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - the vault, a blob, a malformed entry: EIO for this request
            self._note(node, str(exc) or type(exc).__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _note(self, node: Node | None, message: str) -> None:
        """Says once per node and message why a request failed (the kernel retries reads)."""
        line = f"{self.path_of(node)}: {message}" if node is not None and node.point is not None else message
        if line in self.stats.errors:
            return
        if len(self.stats.errors) < 100:
            self.stats.errors.append(line)
        self.warn(line)

    async def _top(self, node: Node) -> None:
        if node.point is None:
            await self._blocking(node, self.refresh)

    # -- attributes -------------------------------------------------------------------------

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        # Every field was checked by _shown (plain ints): no conversions. Called for every
        # entry of every folder listed (readdirplus), so kept to plain lookups.
        e = node.entry
        get = e.get
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        kind = e["t"]
        a.st_mode = _TYPE_BITS[kind] | (e["m"] & 0o7777)
        a.st_nlink = 2 if kind != DIR and "h" in e else 1  # dirs: 1 means "not counted" to find
        a.st_uid = get("u", 0)
        a.st_gid = get("g", 0)
        if node.target is not None:
            size = len(node.target)
        elif kind == FILE:
            size = get("s", 0)
            # what the data holds: a sparse file looks sparse to cp and du
            a.st_blocks = ((sum(get("cl", ())) if "sp" in e else size) + 511) // 512
        elif kind == SYMLINK:
            size = len(get("l", b""))
        else:
            size = 0
        a.st_size = size
        a.st_rdev = get("r", 0)
        mtime = e["mt"]
        a.st_mtime_ns = mtime
        a.st_atime_ns = get("at", mtime)
        a.st_ctime_ns = get("ct", mtime)
        a.st_blksize = 4096
        a.attr_timeout = a.entry_timeout = (
            _TOP_TIMEOUT if node.point is None or node.parent is None else _POINT_TIMEOUT)
        return a

    @guarded
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        return self._attrs(node)

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        await self._top(parent)
        self._check_live(parent)
        if name == b".":
            return self._attrs(parent)
        ino = (await self._kids_of(parent, walk=False)).get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(self.nodes[ino])

    async def _kids_of(self, node: Node, walk: bool = True) -> dict[bytes, int]:
        # A folder listed before needs no thread: most lookups and readdirs are of those.
        if node.kids is not None:
            return node.kids
        if node.point is not None:
            with self.reader.lock:
                cached = self.reader.trees.get(node.entry.get("tree", b""))
            if cached is not None:  # its tree came with its parent's: no thread, no fetch
                self._set_kids(node, cached[0])
                return node.kids  # type: ignore[return-value]
        return await self._blocking(node, self._kids, node, walk)

    @guarded
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if node.target is not None:
            if not node.target:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return node.target
        if node.entry["t"] != SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.entry.get("l", b"")

    @guarded
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._node(inode)
        if node.entry["t"] != DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._top(node)
        self._check_live(node)
        return inode

    @guarded
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        node = self._node(fh)
        kids = await self._kids_of(node)
        for i, (name, ino) in enumerate(itertools.islice(kids.items(), start_id, None), start_id):
            if not pyfuse3.readdir_reply(token, name, self._attrs(self.nodes[ino]), i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    # -- files ------------------------------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.entry["t"] != FILE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        self._check_live(node)
        if inode not in self.contents:
            try:
                self.contents[inode] = FileContent(node.entry)
            except StrongroomError as exc:
                self._note(node, str(exc))
                raise pyfuse3.FUSEError(errno.EIO) from None
        self.open_count[inode] = self.open_count.get(inode, 0) + 1
        self.stats.files_opened += 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)  # contents never change

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        content = self.contents.get(fh)
        if content is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        data = content.read_cached(self.source, off, size)  # no thread: most reads of a blob read
        if data is None:
            node = self.nodes[fh]
            if len(content.ids) == 1 and node.parent is not None:
                await self._blocking(node, self.source.fetch_many, self._small_files_from(node))
                data = content.read_cached(self.source, off, size)
            if data is None:
                data = await self._blocking(node, content.read, self.source, off, size)
        self.stats.bytes_read += len(data)
        return data

    def _small_files_from(self, node: Node) -> list[tuple[bytes, int]]:
        """The blob of a one-blob file and those of the one-blob files after it in its folder,
        up to a bound: `cp -r`, `rsync` and `cat *` read a folder's files in order, and a
        served vault then answers them in one round trip instead of one each."""
        wanted: list[tuple[bytes, int]] = []
        total = 0
        kids = list((node.parent.kids or {}).values()) if node.parent is not None else []
        start = kids.index(node.ino) if node.ino in kids else len(kids)
        for ino in [node.ino] + kids[start + 1:]:
            entry = self.nodes[ino].entry
            ids, lengths = entry.get("c", ()), entry.get("cl", ())
            if entry["t"] != FILE or len(ids) != 1 or len(lengths) != 1:
                continue
            wanted.append((ids[0], lengths[0]))
            total += lengths[0]
            if total > _READ_AHEAD_BYTES or len(wanted) >= _READ_AHEAD_FILES:
                break
        return wanted

    @guarded
    async def release(self, fh: int) -> None:
        left = self.open_count.get(fh, 1) - 1
        if left <= 0:
            self.open_count.pop(fh, None)
            self.contents.pop(fh, None)
        else:
            self.open_count[fh] = left

    # -- attributes and the file system -----------------------------------------------------

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        value = self._node(inode).entry.get("x", {}).get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @guarded
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return list(self._node(inode).entry.get("x", {}))

    @guarded
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        s.f_files = len(self.nodes)
        return s
