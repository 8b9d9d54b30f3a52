"""Disk images (kind `image`): a block device or image file, block by block, and back.

Backup: the source is read once, front to back; holes (SEEK_HOLE, for files) are not read and
zero runs of whole 64 KiB grains are not stored. What is left goes through the same chunker,
keyed hashes and packs as files, so a second image backup of a disk that changed a little
adds only the chunks around the changes. The point's tree holds the source as one entry of
type file whose `sp` lists the data extents (docs/format.md), so `ls` shows it and the
reading code is shared with sparse files.

Restore and export write the extents back in order, streaming (one chunk in memory at a
time). A device gets its holes written as zeros (it holds old data); a file keeps them as
holes. A device restore zeroes the device's first MiB first and writes it last, so a restore
that is interrupted leaves no filesystem signature: the target never looks whole when it is
not. A file is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from strongroom import chunker
from strongroom.agent.backup import Backup
from strongroom.agent.fsmeta import entry_from_stat
from strongroom.agent.reader import BlobReader
from strongroom.agent.sparse import data_extents
from strongroom.agent.volume import mounts
from strongroom.errors import StrongroomError, UsageError
from strongroom.model import FILE, Entry, display_path, split_abs
from strongroom.packs import KIND_DATA

GRAIN = 64 * 1024  # zero runs are skipped in whole grains, aligned to the device's start
_READ = 4 * 1024 * 1024
_ZERO_GRAIN = bytes(GRAIN)
_HEAD = 1024 * 1024  # written last on a device restore (every filesystem's signature is in it)
_IN_FLIGHT = 8  # chunks sealed at once on the pool (each up to 4 MiB)


def _refuse_symlink(path: bytes, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{display_path(path)} is a symlink: give the device or file it points to "
                         f"({display_path(os.path.realpath(path))})")


def open_source(path: bytes) -> tuple[int, os.stat_result, int]:
    """(fd, stat, size) of a block device or image file to back up; one line if it is not one."""
    shown = display_path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"{shown} does not exist") from None
    _refuse_symlink(path, st)
    if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise UsageError(f"{shown} is neither a block device nor an image file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:
        raise UsageError(f"no permission to read {shown}: run as root (or a member of its group, "
                         f"{_group(st.st_gid)})") from None
    size = os.lseek(fd, 0, os.SEEK_END) if stat.S_ISBLK(st.st_mode) else st.st_size
    os.lseek(fd, 0, os.SEEK_SET)
    return fd, st, size


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class ZeroSkippingReader:
    """The non-zero data of a source's extents, back to back (what the chunker sees); records
    the extents it found as [offset, length] pairs, merged."""

    def __init__(self, fd: int, extents: list[list[int]], size: int, counted: Callable[[int], None]) -> None:
        self.fd, self.size, self.counted = fd, size, counted
        self.todo = deque(tuple(e) for e in extents)
        self.found: list[list[int]] = []
        self.pieces: deque[memoryview] = deque()
        self.buf = bytearray(_READ)

    def _add_extent(self, offset: int, length: int) -> None:
        if self.found and self.found[-1][0] + self.found[-1][1] == offset:
            self.found[-1][1] += length
        else:
            self.found.append([offset, length])

    def _fill(self) -> bool:
        """Reads the next block; False at the end."""
        while self.todo:
            offset, length = self.todo[0]
            if length <= 0:
                self.todo.popleft()
                continue
            view = memoryview(self.buf)[:min(length, _READ)]
            n = os.preadv(self.fd, [view], offset)
            if n == 0:
                raise StrongroomError(f"the source ended at byte {offset} of {self.size} (detached or shrunk "
                                      "while being read); no recovery point was recorded")
            self.counted(n)
            self.todo[0] = (offset + n, length - n)
            pos = 0
            while pos < n:
                end = min(n, (offset + pos) // GRAIN * GRAIN + GRAIN - offset)
                if view[pos:end].tobytes() != _ZERO_GRAIN[:end - pos]:
                    if self.pieces and self._continues(offset + pos):
                        last = self.pieces.pop()
                        self.pieces.append(view[pos - len(last):end])
                    else:
                        self.pieces.append(view[pos:end])
                    self._add_extent(offset + pos, end - pos)
                pos = end
            if self.pieces:
                return True
        return False

    def _continues(self, absolute: int) -> bool:
        return self.found[-1][0] + self.found[-1][1] == absolute

    def readinto(self, buffer: memoryview) -> int:
        if not self.pieces and not self._fill():
            return 0
        piece = self.pieces[0]
        n = min(len(piece), len(buffer))
        buffer[:n] = piece[:n]
        if n == len(piece):
            self.pieces.popleft()
        else:
            self.pieces[0] = piece[n:]
        return n


class ImageBackup(Backup):
    """A backup whose one source is read as an image (see the module's notes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = "image"
        self.image_path = self.sources[0]
        self.image_fd, self.image_stat, self.image_size = open_source(self.image_path)
        self.manifest_extra["image"] = {"source": self.image_path, "size": self.image_size,
                                        "device": stat.S_ISBLK(self.image_stat.st_mode)}

    def _scan_entry(self, dfd: int, full: bytes, name: bytes, parent: dict[bytes, Entry]) -> Any:
        if full != self.image_path:
            return super()._scan_entry(dfd, full, name, parent)
        return self._read_image(name)

    def _read_image(self, name: bytes) -> Entry:
        where = self.view.translate(self.image_path) if self.view is not None else self.image_path
        if where != self.image_path:  # an image file on btrfs: read from the snapshot (agent/snapshot.py)
            os.close(self.image_fd)
            self.image_fd, self.image_stat, self.image_size = open_source(where)
            self.manifest_extra["image"]["size"] = self.image_size
        fd, size = self.image_fd, self.image_size
        is_file = stat.S_ISREG(self.image_stat.st_mode)
        holes = data_extents(fd, size) if is_file else [[0, size]]
        self.counters.files_new += 1
        self.counters.bytes_total += size
        stream = ZeroSkippingReader(fd, holes, size, self.counters.read)
        slots = threading.BoundedSemaphore(_IN_FLIGHT)
        futures = []
        ids: list[bytes] = []
        for piece in chunker.chunks(self._chunker(), stream):
            data = bytes(piece)  # the chunker reuses its buffer
            blob_id = self.key.blob_id(data)
            ids.append(blob_id)
            slots.acquire()
            future = self.pool.submit(self.packer.add, blob_id, KIND_DATA, data)
            future.add_done_callback(lambda _f: slots.release())
            futures.append(future)
            if len(futures) > 4 * _IN_FLIGHT:  # raise a sealing or upload failure now, not at the end
                for f in futures:
                    if f.done():
                        f.result()
                futures = [f for f in futures if not f.done()]
        for f in futures:
            f.result()
        after = os.fstat(fd)
        os.close(fd)
        if is_file and (after.st_size, after.st_mtime_ns) != (self.image_stat.st_size, self.image_stat.st_mtime_ns):
            self._warn(self.image_path, "the image file changed while being read; what was read was stored")
        entry = entry_from_stat(name, self.image_stat)
        entry.pop("r", None)
        entry.pop("h", None)
        entry.update({"t": FILE, "s": size, "c": ids, "sp": stream.found})
        stored = sum(length for _o, length in stream.found)
        self.stats_extra.update({"image_size": size, "image_data_bytes": stored, "image_extents": len(stream.found)})
        return entry



# -- restore and export ----------------------------------------------------------------------


def image_entry(reader: BlobReader, manifest: dict[str, Any]) -> Entry:
    """The entry of an image point that holds the image."""
    if manifest["kind"] != "image":
        raise UsageError(f"--image restores an image point; this point is of kind {manifest['kind']}")
    entries = reader.tree(manifest["tree"])
    parts = split_abs(manifest["image"]["source"])
    for i, part in enumerate(parts):
        found = next((e for e in entries if e["n"] == part), None)
        if found is None:
            break
        if i == len(parts) - 1:
            if found["t"] == FILE and found.get("s") == manifest["image"]["size"]:
                return found
            break
        entries = reader.tree(found["tree"]) if "tree" in found else []
    raise StrongroomError("the image point does not hold its image where its manifest says: it is damaged")


def image_extents(entry: Entry) -> list[tuple[int, int]]:
    """The data extents, checked: in order, inside the image (a hostile point cannot make a
    restore write before or past the image)."""
    size, out, end = entry["s"], [], 0
    for offset, length in entry.get("sp", [[0, size]]):
        if not (isinstance(offset, int) and isinstance(length, int)) or offset < end or length < 0 \
                or offset + length > size:
            raise StrongroomError("the image point's extents are out of order or outside the image: it is damaged")
        out.append((offset, length))
        end = offset + length
    return out


def stream_image(reader: BlobReader, entry: Entry) -> Iterator[tuple[int, memoryview]]:
    """(offset, data) pieces of the image, in order, one chunk in memory at a time."""
    extents = deque(image_extents(entry))
    for content in reader.read_in_order(entry.get("c", [])):
        data = memoryview(content)
        while data:
            if not extents:
                raise StrongroomError("the image point holds more data than its extents: it is damaged")
            offset, length = extents[0]
            n = min(length, len(data))
            yield offset, data[:n]
            data = data[n:]
            if n == length:
                extents.popleft()
            else:
                extents[0] = (offset + n, length - n)
    if any(length for _o, length in extents):
        raise StrongroomError("the image point holds less data than its extents: it is damaged")


class ImageWriter:
    """Writes an image point to an open file or device."""

    def __init__(self, reader: BlobReader, entry: Entry) -> None:
        self.reader, self.entry = reader, entry
        self.size: int = entry["s"]
        self.written = 0

    def _pwrite(self, fd: int, data: memoryview | bytes, offset: int) -> None:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
            self.written += n

    def _zeros(self, fd: int, start: int, end: int) -> None:
        zero = bytes(min(_READ, max(0, end - start)))
        while start < end:
            n = min(len(zero), end - start)
            self._pwrite(fd, memoryview(zero)[:n], start)
            start += n

    def to_file(self, fd: int) -> None:
        """Into an empty file: holes stay holes."""
        os.ftruncate(fd, self.size)
        for offset, data in stream_image(self.reader, self.entry):
            self._pwrite(fd, data, offset)

    def to_device(self, fd: int) -> None:
        """Over a device: holes are zeroed; the first MiB is zeroed first and written last."""
        head = bytearray(min(_HEAD, self.size))
        self._zeros(fd, 0, len(head))
        os.fsync(fd)
        at = 0
        for offset, data in stream_image(self.reader, self.entry):
            self._zeros(fd, max(at, len(head)), offset)
            if offset < len(head):
                n = min(len(data), len(head) - offset)
                head[offset:offset + n] = data[:n]
                data, offset = data[n:], offset + n
            if data:
                self._pwrite(fd, data, offset)
            at = offset + len(data)
        self._zeros(fd, max(at, len(head)), self.size)
        os.fsync(fd)
        self._pwrite(fd, memoryview(head), 0)
        os.fsync(fd)


def check_device_target(path: bytes, size: int, force: bool) -> int:
    """An open descriptor (exclusive) of a block device to restore an image of `size` onto."""
    shown = display_path(path)
    st = os.lstat(path)
    _refuse_symlink(path, st)
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{shown} is not a block device")
    for m in mounts():  # by the mount's source too: btrfs mounts show an anonymous device number
        if m.device == st.st_rdev or (m.source.startswith("/dev/") and _on_device(m.source, st.st_rdev)):
            raise UsageError(f"{shown} is mounted at {display_path(m.mount_point)}: unmount it first")
    if not force:
        raise UsageError(f"{shown} is a device: restoring writes over all of it; add --force to do so")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise UsageError(f"{shown} is in use (mounted, a swap or held by another device): free it first") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(f"no permission to write {shown}: run as root") from None
        raise
    have = os.lseek(fd, 0, os.SEEK_END)
    if have < size:
        os.close(fd)
        raise UsageError(f"{shown} holds {have} bytes, less than the image's {size}: it is too small")
    return fd


def _on_device(source: str, rdev: int) -> bool:
    """Whether the mounted device `source` is the device `rdev` or a partition of it."""
    try:
        mounted = os.stat(source).st_rdev
    except OSError:
        return False
    if mounted == rdev:
        return True
    sys_dir = f"/sys/dev/block/{os.major(mounted)}:{os.minor(mounted)}"
    whole = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    return os.path.exists(sys_dir + "/partition") and \
        os.path.realpath(sys_dir + "/..") == os.path.realpath(whole)
