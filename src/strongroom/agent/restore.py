"""Restore: write a point's entries back, with the conflict rule and every file's metadata.

Everything is created relative to open directory descriptors with O_NOFOLLOW/O_EXCL, and
every name is checked, so a point (even a hostile one) cannot write outside the target:
names with `/`, `.` or `..` are refused and no symlink in the target is ever followed.
Metadata goes through a descriptor of each node the restore made (checked to be that node
first), never by name, so a user who can write the target and races the restore cannot make
it change another file (fsmeta).
Files are written by a thread pool; a directory's own metadata is set once its contents
are in place. An entry that cannot be restored is reported and the rest goes on.

Pipeline, in named stages (why it is shaped so: one Python thread walking and writing
50,000 small files left the second core idle, and waiting at the end of each folder for its
large files serialised the two kinds):
- folders first (_premake): every missing folder of the selection is made before any file;
- read-ahead (`fetch` thread, restore_ahead.py, from a served vault): walks the same trees
  in the same order ahead of the walk and fetches the small files' content, several
  folders per request; from a vault folder, the `fetch` thread locates the blobs of the
  trees the folders-first pass read, ahead of the walk (restore_locate.py);
- walk (the calling thread): reads trees, resolves conflicts, decodes small files' content
  a window at a time (fetching what the read-ahead did not), makes every new file (O_EXCL)
  itself, so that one thread allocates inodes (see _Batch);
- small writers (`small` pool): write and set the metadata of small files, a batch of one
  folder's files per task, from content the walk decoded, into the files it made (syscalls
  release the GIL, so they overlap the walk's Python work);
- large writers (`writer` pool): fetch, decode and write large files' content into the
  descriptor the walk opened (from 16 MiB on past the page cache, `_STAGED_MIN`), and set
  their metadata.
The walk does not wait at the end of each folder: it goes on while the work handed off stays
under a bound (files, batches, bytes), and a folder's own metadata is set once everything
that makes names in it has finished (a queue in order). Nothing is fsynced per file: a
restore killed half-way leaves files of mode 0600 whose content or times are not yet set,
and folders (some still empty) without their metadata, which a rerun with `--conflict overwrite` replaces.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from strongroom import blobs
from strongroom.agent.arenas import cap_arenas
from strongroom.agent.finished import Finished
from strongroom.agent.fsmeta import (
    DIR_FLAGS,
    NODE_FLAGS,
    apply_metadata,
    fd_path,
    made_dir,
    open_made,
    type_mode,
)
from strongroom.agent.reader import BlobReader, content_lengths
from strongroom.agent.restore_ahead import ReadAhead, inline, windows
from strongroom.agent.restore_locate import LocateAhead
from strongroom.errors import StrongroomError, UsageError, VaultUnreachable
from strongroom.fsutil import DIRECT_ALIGN, Stage, write_all
from strongroom.model import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    SOCKET,
    SYMLINK,
    Entry,
    display_path,
    is_safe_name,
)
from strongroom.testhook import hook

CONFLICTS = ("copy", "overwrite", "skip")
# New large files whose content is being written (or waits for a writer) while the walk goes
# on: each holds two descriptors and no data until a writer takes it, so memory stays bounded
# by the writers' batches.
_IN_FLIGHT = 64
# Small files go to a writer a batch at a time (one hop per batch, not per file), with their
# decoded content: a batch closes at this many files or bytes, and the walk waits once this
# many bytes or queued steps are handed off.
_BATCH_FILES = 64
_BATCH_BYTES = 2 * 1024 * 1024
_BATCHES_HELD_BYTES = 12 * 1024 * 1024
_QUEUED_STEPS = 512
_MADE_HELD = 1024  # small files made and still open, waiting for a writer
# Folders made before any file (see _premake), at most this many per selection (their paths
# are held until the walk enters them); beyond it the walk makes the rest as it goes.
_PREMADE_MAX = 100_000
# Files at least this large are written past the page cache (fsutil.Stage), from a stage of
# _STAGE bytes per writer that their chunks are decoded straight into: on the bench VM the
# buffered copy into fresh page-cache pages was ~30 % of a full restore's CPU (perf), most of
# it the large files'. Smaller files stay buffered: each direct write waits for the disk, which
# a file of a few MiB would feel.
_STAGED_MIN = 16 * 1024 * 1024
# The largest chunk behind the unaligned end (under DIRECT_ALIGN) of what was written before it.
_STAGE = blobs.MAX_DATA_BYTES + DIRECT_ALIGN
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@contextmanager
def _made(dfd: int, name: bytes, fd: int) -> Iterator[int]:
    """The node just made as `name`, open as `fd`: closed at the end, and removed if restoring
    it fails, so that no half-restored node is left looking complete."""
    try:
        yield fd
    except BaseException:
        with suppress(OSError):
            os.unlink(name, dir_fd=dfd)
        raise
    finally:
        os.close(fd)


@dataclass
class RestoreResult:
    files_restored: int = 0
    files_skipped: int = 0
    files_copied: int = 0
    bytes_written: int = 0
    errors: list[tuple[bytes, str]] = field(default_factory=list)


def copy_name(name: bytes, created_ns: int, n: int) -> bytes:
    """MARS's name for a restored copy: the point's time before the name, so the extension stays."""
    stamp = time.strftime("%Y-%m-%d %H-%M", time.localtime(created_ns / 1e9)).encode()
    if n > 1:
        stem, dot, ext = name.rpartition(b".")
        name = stem + b" (%d)." % n + ext if dot and stem else name + b" (%d)" % n
    full = stamp + b" Copy of " + name
    return full if len(full) <= 255 else full[:255]


class Restore:
    def __init__(self, reader: BlobReader, created_ns: int, conflict: str,
                 keep: Callable[[bytes, Entry], bool] | None = None, record_written: bool = False) -> None:
        if conflict not in CONFLICTS:
            raise UsageError(f"--conflict must be one of {', '.join(CONFLICTS)}")
        self.reader, self.created_ns, self.conflict = reader, created_ns, conflict
        self.keep = keep  # (folder path, entry) -> restored? (restore --include/--exclude)
        # (path as written, entry) of each non-folder written, for restore --verify
        self.written: list[tuple[bytes, Entry]] | None = [] if record_written else None
        self.result = RestoreResult()
        # hardlink group -> where its first file went, and its (st_dev, st_ino)
        self.links: dict[tuple[int, int], tuple[bytes, tuple[int, int]]] = {}
        self.first_links: dict[tuple[int, int], Future | Finished] = {}
        self.pending: deque[tuple[bytes, Future]] = deque()  # detached large files, oldest first
        # Steps that make names in folders (small-file batches, workers' jobs) and folders'
        # metadata, in order: a folder's metadata comes after all that was queued before it.
        self.queued: deque[Callable[[], None]] = deque()
        self.held = 0  # bytes of decoded content in queued batches
        self.made = 0  # small files made by the walk and not yet written (each an open descriptor)
        self.read_ahead: ReadAhead | None = None  # the selection's (restore_ahead.py)
        self.premade: dict[bytes, tuple[int, int]] = {}  # folder made by _premake -> (st_dev, st_ino)
        self.premake_pending = False  # the selection's folders are yet to be made (_restore_dir)
        self.locate_ahead: LocateAhead | None = None  # the selection's (restore_locate.py)
        self.stages = threading.local()  # each large-file writer's Stage (_stage)

    def run(self, root_fd: int, selections: list[tuple[list[bytes], list[Entry], Entry]]) -> RestoreResult:
        """Each selection: the path components, the entries of its parent dirs, and its entry."""
        self.root_fd = root_fd
        cap_arenas()  # before the writers start: each thread's own arena would keep MiBs freed
        # Large files: one writer a core from a vault folder (their writes wait for the disk,
        # past the page cache, and each holds a stage; a third on two cores gained nothing and
        # held 5-8 MiB more); one more from a served vault, whose round trips it hides.
        workers = min(8, (os.cpu_count() or 2) + (0 if self.reader.vault.local else 1))
        with (_few_collections(), ThreadPoolExecutor(workers, thread_name_prefix="writer") as self.pool,
              ThreadPoolExecutor(2, thread_name_prefix="small") as self.small_pool,
              ThreadPoolExecutor(1, thread_name_prefix="fetch") as self.fetcher):
            try:
                for parts, parents, entry in selections:
                    self._restore_selection(parts, parents, entry)
            finally:
                self._drain()
        return self.result

    def _drain(self) -> None:
        """Waits for everything handed off, and sets the folders' metadata queued behind it."""
        while self.queued:
            self.queued.popleft()()
        while self.pending:
            self._collect(*self.pending.popleft())

    def _queue(self, step: Callable[[], None], held: int = 0) -> None:
        self.queued.append(step)
        self.held += held
        while self.held > _BATCHES_HELD_BYTES or len(self.queued) > _QUEUED_STEPS or self.made > _MADE_HELD:
            self.queued.popleft()()

    def _error(self, path: bytes, message: str) -> None:
        self.result.errors.append((path, message))

    def _failed(self, path: bytes, exc: OSError | StrongroomError) -> None:
        """Reports what failed at `path`, and goes on; an unreachable vault stops the restore
        instead: every later entry would fail the same way, one line each."""
        if isinstance(exc, VaultUnreachable):
            raise exc
        self._error(path, getattr(exc, "strerror", None) or str(exc))

    def _restore_selection(self, parts: list[bytes], parents: list[Entry], entry: Entry) -> None:
        fd = os.dup(self.root_fd)
        path = b""
        made: list[tuple[int, Entry, bytes]] = []  # parents created here: metadata once filled
        self.premake_pending = True
        try:
            for name, parent in zip(parts[:-1], parents, strict=True):
                path = path + b"/" + name
                sub, created = self._enter_dir(fd, name, path)
                os.close(fd)
                fd = sub
                if fd is None:
                    return
                if created:
                    made.append((os.dup(fd), parent, path))
            if parts:
                job = self._restore_entry(fd, path + b"/" + parts[-1], entry)
                if job is not None:
                    self._collect(path + b"/" + parts[-1], job)
            else:  # the whole point, whose root is the target itself
                self.premake_pending = False
                self._premake(fd, b"", entry["tree"])
                self._read_ahead(entry["tree"])
                self._restore_children(fd, b"", entry["tree"], False)
        finally:
            if fd is not None:
                os.close(fd)
            if self.read_ahead is not None:
                self.read_ahead, read_ahead = None, self.read_ahead
                read_ahead.stop()
            if self.locate_ahead is not None:
                self.locate_ahead, locate_ahead = None, self.locate_ahead
                locate_ahead.stop()
            self._drain()
            self.premade.clear()  # what the walk did not enter (not restored after all)
            for made_fd, parent, made_path in reversed(made):
                self._dir_meta(made_fd, parent, made_path)
                os.close(made_fd)

    # -- directories ------------------------------------------------------------------------

    def _enter_dir(self, dfd: int, name: bytes, path: bytes) -> tuple[int | None, bool]:
        """(fd of the directory `name` in `dfd`, whether it was made), fd None if it cannot be had
        (reported)."""
        fd = None
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
                created = True
            except FileExistsError:
                created = False
            premade = self.premade.pop(path, None)
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or self.conflict != "overwrite":
                    self._error(path, "a non-directory is in the way (not followed, not replaced)")
                    return None, False
                os.unlink(name, dir_fd=dfd)  # a file or symlink where the point has a directory
                os.mkdir(name, 0o700, dir_fd=dfd)
                created = True
                fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
            if premade is not None:  # made by _premake: it holds the folders made below it
                st = os.fstat(fd)
                created = (st.st_dev, st.st_ino) == premade and st.st_uid == os.geteuid()
                if not created:
                    self._error(path, "replaced while restoring by a folder the restore did not make "
                                      "(restored into it as an existing folder)")
            elif created and not made_dir(fd):
                # swapped between mkdir and open: filled like a folder that was there, no metadata
                self._error(path, "replaced while restoring by a folder the restore did not make "
                                  "(restored into it as an existing folder)")
                created = False
            return fd, created
        except OSError as exc:  # e.g. swapped again after the unlink: reported, the rest goes on
            if fd is not None:
                os.close(fd)
            self._error(path, exc.strerror or str(exc))
            return None, False

    def _dir_meta(self, fd: int, entry: Entry, path: bytes) -> None:
        try:
            refused = apply_metadata(entry, fd)
        except OSError as exc:
            self._error(path, f"metadata not restored: {exc.strerror}")
            return
        for r in refused:
            self._error(path, f"attribute not restored: {r}")

    def _restore_dir(self, dfd: int, name: bytes, entry: Entry, path: bytes) -> None:
        fd, created = self._enter_dir(dfd, name, path)
        if fd is None:
            return
        try:
            if self.premake_pending:  # the folder the selection names: make its folders first
                self.premake_pending = False
                self._premake(fd, path, entry["tree"])
                self._read_ahead(entry["tree"])
            self._restore_children(fd, path, entry["tree"], created)
            if created or self.conflict == "overwrite":
                self._queue(self._dir_meta_step(fd, entry, path))
                fd = None  # closed by that step
        except StrongroomError as exc:
            self._failed(path, exc)
        finally:
            if fd is not None:
                os.close(fd)

    def _read_ahead(self, tree_id: bytes) -> None:
        """Starts fetching the selection's small files ahead of the walk, on the fetch thread
        (restore_ahead.py), once _premake is done (whose reads of a level's trees it would
        take from under it). Only from a served vault, whose round trips it hides: from a
        vault folder (a read there is a system call) it held 8-12 MiB more at the peak for no
        measurable gain. Not for a selective restore, whose walk leaves files out."""
        if self.keep is None and not self.reader.vault.local:
            self.read_ahead = ReadAhead(self.reader, self.fetcher, tree_id)

    def _premake(self, fd: int, path: bytes, tree_id: bytes) -> None:
        """Makes every missing folder below `path` (open as `fd`), level by level, before any
        file; the walk then enters them as folders it made (checked: the same inode, ours).

        Why: on ext4 without a journal (fs/ext4/ialloc.c), each inode allocation in a block
        group that holds recently freed inodes checks them one by one (find_inode_bit ->
        recently_deleted), so a restore right after a big deletion paid ~0.2 ms a file. A file
        goes into its folder's group while that group has free inodes; folders made while the
        files are written spread over the groups (Orlov moves on as each fills), each taking
        its files, and those are the groups a tree deleted just before had used: every file
        paid the scan. Folders made in one go share a few groups, which their first files fill;
        the others then go to groups spread over the disk, mostly untouched (restic makes its
        folders first too). Not for a selective restore: it would make folders it skips."""
        if self.keep is not None:
            return
        if self.reader.vault.local:  # a served vault's read-ahead locates for itself
            self.locate_ahead = LocateAhead(self.reader, self.fetcher)
        level = deque([(os.dup(fd), path, tree_id)])
        try:
            while level:
                # a served vault: this level's trees in a few requests (the walk reads them again)
                self.reader.prefetch([t for _fd, _path, t in level])
                below: deque[tuple[int, bytes, bytes]] = deque()
                while level:  # in the walk's order, which the locating ahead follows
                    dfd, folder, tid = level.popleft()
                    try:
                        entries = self.reader.tree(tid)
                        if self.locate_ahead is not None:
                            self.locate_ahead.add(entries)
                        self._premake_in(dfd, folder, entries, below)
                    except VaultUnreachable:
                        raise
                    except (OSError, StrongroomError):
                        pass  # what cannot be read or made here, the walk reports
                    finally:
                        os.close(dfd)
                level = below
        finally:
            for dfd, _path, _tid in level:
                os.close(dfd)

    def _premake_in(self, dfd: int, folder: bytes, entries: list[Entry], below: deque[tuple[int, bytes, bytes]]) -> None:
        euid = os.geteuid()
        for e in entries:
            name = e.get("n")
            if e["t"] != DIR or "tree" not in e or not isinstance(name, bytes) or not is_safe_name(name):
                continue
            if len(self.premade) >= _PREMADE_MAX:
                return
            try:
                os.mkdir(name, 0o700, dir_fd=dfd)
            except OSError:
                continue  # there already (the walk resolves it), or cannot be made (it reports)
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dfd)
            except OSError:
                continue  # swapped since the mkdir (e.g. for a symlink): the walk reports it
            st = os.fstat(sub)
            if st.st_uid != euid:  # swapped since the mkdir: the walk reports it and fills it as found
                os.close(sub)
                self.premade[folder + b"/" + name] = (-1, -1)
                continue
            self.premade[folder + b"/" + name] = (st.st_dev, st.st_ino)
            below.append((sub, folder + b"/" + name, e["tree"]))

    def _dir_meta_step(self, fd: int, entry: Entry, path: bytes) -> Callable[[], None]:
        def step() -> None:
            try:
                self._dir_meta(fd, entry, path)
            finally:
                os.close(fd)
        return step

    def _restore_children(self, fd: int, path: bytes, tree_id: bytes, fresh: bool) -> None:
        """`fresh`: the folder is the empty one the restore just made, so no name in it needs
        a conflict check (a name raced in makes the O_EXCL create fail, reported)."""
        children = self.reader.tree(tree_id)
        if self.keep is not None:
            children = [e for e in children if self.keep(path, e)]
        subtrees = [e["tree"] for e in children if e["t"] == DIR and "tree" in e]
        contents = [c for e in children for c in e.get("c", ())]
        if self.locate_ahead is not None:
            self.locate_ahead.walked_past(len(contents))
        self.reader.locate(subtrees + contents)  # what the locating ahead has not
        # Small files are written inline: fetch their content ahead, a window at a time;
        # the subdirectories' trees come with the first window (and are not dropped after it).
        starts = windows(children)
        if not starts:
            self.reader.prefetch(subtrees)
        fetched: list[bytes] = []
        batch = _Batch(fresh)
        try:
            for i, child in enumerate(children):
                if i in starts:
                    self.reader.drop(fetched)  # what skipped files did not read
                    fetched = starts[i][0]
                    if self.read_ahead is not None:
                        self.read_ahead.reached((tree_id, i))
                    self.reader.prefetch(fetched + subtrees)  # what the read-ahead did not fetch
                    subtrees = []
                child_path = path + b"/" + child["n"]
                if child["t"] == DIR:  # not held while the subtree is walked
                    self._send(fd, batch)
                    batch = _Batch(fresh)
                job = self._restore_entry(fd, child_path, child, batch, fresh)
                if job is not None:
                    self._queue(lambda p=child_path, j=job: self._collect(p, j))
                if batch.files >= _BATCH_FILES or batch.size >= _BATCH_BYTES:
                    self._send(fd, batch)
                    batch = _Batch(fresh)
            self.reader.drop(fetched)
            self._send(fd, batch)
        except BaseException:
            if not batch.sent:
                batch.close()  # files made but never handed to a writer: left empty, 0600
            raise

    def _count(self, copied: bool, written: int) -> None:
        self.result.bytes_written += written
        if copied:
            self.result.files_copied += 1
        else:
            self.result.files_restored += 1

    def _collect(self, path: bytes, job: Future | Finished) -> None:
        try:
            self._count(*job.result())
        except (OSError, StrongroomError) as exc:
            self._failed(path, exc)

    # -- entries ----------------------------------------------------------------------------

    def _restore_entry(self, dfd: int, path: bytes, entry: Entry, batch: _Batch | None = None,
                       fresh: bool = False) -> Future | Finished | None:
        """Restores or hands off one entry; returns a job to collect (None: done, handed off
        or reported). Small new files go into `batch` if one is given."""
        name = entry.get("n", b"")
        if not isinstance(name, bytes) or not is_safe_name(name):
            self._error(path, "refused: the name would leave its directory")
            return None
        if entry["t"] == DIR:
            try:
                self._restore_dir(dfd, name, entry, path)
            except (OSError, StrongroomError) as exc:  # e.g. no room for the directory itself
                self._failed(path, exc)
            return None
        try:
            target = (name, None) if fresh else self._resolve_conflict(dfd, name, path)
            if target is None:
                return None
            final, tmp = target
            if entry["t"] == FILE:
                group = tuple(entry["h"]) if "h" in entry else None
                if group is None and tmp is None and not inline(entry):
                    self._detach(dfd, final, entry, path)
                    return None
                # A small batch holds its files' content whole: only small (inline) files go
                # there, a large one over an existing file goes to a writer like any other.
                if group is None and batch is not None and inline(entry):
                    content = [self.reader.read(i) for i in entry.get("c", ())]
                    # Made here, by the walk, not by the writer: see _Batch.
                    batch.add(final, tmp, entry, path, content, os.open(tmp or final, _NEW_FILE, 0o600, dir_fd=dfd))
                    self.made += 1
                    return None
                first = self.first_links.get(group) if group else None
                args = (os.dup(dfd), final, tmp, entry, path, first)
                job = Finished(self._write_file, *args) if inline(entry) else self.pool.submit(self._write_file, *args)
                if group and first is None:
                    self.first_links[group] = job
                return job
            refused = self._make_special(dfd, tmp or final, entry)
            if tmp:
                os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
            self._count(final != name, 0)
            self._note_written(path, final, entry)
            if refused:
                self._error(path, "attributes not restored: " + "; ".join(refused))
        except (OSError, StrongroomError) as exc:
            self._failed(path, exc)
        return None

    def _resolve_conflict(self, dfd: int, name: bytes, path: bytes) -> tuple[bytes, bytes | None] | None:
        """(final name, temp name to rename over it or None), or None to leave it alone."""
        try:
            existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return name, None
        if self.conflict == "skip":
            self.result.files_skipped += 1
            return None
        if self.conflict == "copy":
            for n in range(1, 10000):
                candidate = copy_name(name, self.created_ns, n)
                try:
                    os.stat(candidate, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    return candidate, None
            raise StrongroomError("no free name for a copy")
        if stat.S_ISDIR(existing.st_mode):
            self._error(path, "a directory is in the way (not replaced)")
            return None
        return name, b".strongroom-restore-" + os.urandom(6).hex().encode()

    def _make_special(self, dfd: int, name: bytes, entry: Entry) -> list[str]:
        """Makes a symlink, FIFO, device or socket; returns the attributes refused."""
        kind = entry["t"]
        mode = entry["m"] & 0o777  # its permissions from the start; setuid and the like once owned
        if kind == SYMLINK:
            os.symlink(entry["l"], name, dir_fd=dfd)
        elif kind == FIFO:
            os.mkfifo(name, mode, dir_fd=dfd)
        elif kind in (CHAR, BLOCK, SOCKET):
            os.mknod(name, mode | type_mode(kind), entry.get("r", 0), dir_fd=dfd)
        else:
            raise StrongroomError(f"unknown entry type {kind!r}")
        # NodeReplaced: what is there now is not ours to touch
        with _made(dfd, name, open_made(dfd, name, entry)) as fd:
            return apply_metadata(entry, fd_path(fd))

    def _send(self, dfd: int, batch: _Batch) -> None:
        """Hands a batch of one folder's small files to a small writer."""
        if not batch.files:
            return
        future = self.small_pool.submit(self._write_batch, os.dup(dfd), batch)
        batch.sent = True
        self._queue(lambda: self._collect_batch(future), batch.size)

    def _collect_batch(self, future: Future) -> None:
        batch = future.result()  # _write_batch reports each file's failure itself
        self.held -= batch.size
        self.made -= batch.files
        for copied, written in batch.done:
            self._count(copied, written)
        hook("restore-batch-written")  # tests: a kill -9 with large files and folders half done

    def _detach(self, dfd: int, name: bytes, entry: Entry, path: bytes) -> None:
        """Makes the new file `name` here and now and leaves its content and metadata to a
        writer, without waiting for it (at most _IN_FLIGHT wait at once)."""
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=dfd)
        try:
            own_dfd = os.dup(dfd)
        except BaseException:
            os.close(fd)
            raise
        self.pending.append((path, self.pool.submit(self._fill, own_dfd, fd, name, entry, path)))
        while len(self.pending) > _IN_FLIGHT:
            self._collect(*self.pending.popleft())

    # -- files (pool threads) ---------------------------------------------------------------

    def _write_batch(self, dfd: int, batch: _Batch) -> _Batch:
        try:
            owner = None
            if batch.fresh and batch.items and os.geteuid() == 0:
                # In a folder the restore made (ours, 0700 until its own metadata comes after its
                # files: no one else can change its group or setgid bit meanwhile), every file
                # made gets the owner the first one got: files that had it need no chown.
                st = os.fstat(batch.items[0][5])
                owner = (st.st_uid, st.st_gid)
            while batch.items:
                final, tmp, entry, path, content, fd = batch.items.popleft()
                try:
                    batch.done.append(self._write_small(dfd, final, tmp, entry, path, content, fd, owner))
                except (OSError, StrongroomError) as exc:
                    self._failed(path, exc)
            return batch
        finally:
            batch.close()  # what an unexpected error left unwritten: empty 0600 files, as after a kill
            os.close(dfd)

    def _write_small(self, dfd: int, final: bytes, tmp: bytes | None, entry: Entry, path: bytes,
                     content: list[bytes], made: int, owner: tuple[int, int] | None) -> tuple[bool, int]:
        """One small file from decoded content, into the file the walk made as `tmp or final`
        and opened as `made` (O_EXCL), whose (uid, gid) is `owner` if known; (written as a
        copy, bytes written)."""
        name = tmp or final
        written = 0
        with _made(dfd, name, made) as fd:
            for piece in content:
                written += write_all(fd, piece)
            refused = apply_metadata(entry, fd, owner)
        if refused:
            self._error(path, "attributes not restored: " + "; ".join(refused))
        if tmp:
            os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        self._note_written(path, final, entry)
        return final != entry["n"], written

    def _fill(self, dfd: int, fd: int, name: bytes, entry: Entry, path: bytes) -> tuple[bool, int]:
        """Content and metadata of a new file that the walk made as `name` and opened as `fd`
        (O_EXCL: the descriptor is of the file made there); (False, bytes written)."""
        try:
            with _made(dfd, name, fd):
                written = self._write_content(fd, entry)
                refused = apply_metadata(entry, fd)
            if refused:
                self._error(path, "attributes not restored: " + "; ".join(refused))
            self._note_written(path, name, entry)
            return False, written
        finally:
            os.close(dfd)

    def _write_file(self, dfd: int, final: bytes, tmp: bytes | None, entry: Entry, path: bytes,
                    first_link: Future | Finished | None) -> tuple[bool, int]:
        """(written as a copy, bytes written)"""
        try:
            name = tmp or final
            if first_link is not None:
                first_link.exception()  # the group's first file must be in place before linking
            inode = None
            if self._link(dfd, name, entry):
                written = 0
            else:
                # O_EXCL: the descriptor is of the file made here, and metadata goes through it
                with _made(dfd, name, os.open(name, _NEW_FILE, 0o600, dir_fd=dfd)) as fd:
                    written = self._write_content(fd, entry)
                    refused = apply_metadata(entry, fd)
                    if "h" in entry:
                        st = os.fstat(fd)
                        inode = (st.st_dev, st.st_ino)
                if refused:
                    self._error(path, "attributes not restored: " + "; ".join(refused))
            if tmp:
                os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
            if inode is not None:
                self.links.setdefault(tuple(entry["h"]), (self._where(dfd, final), inode))
            self._note_written(path, final, entry)
            return final != entry["n"], written
        finally:
            os.close(dfd)

    def _note_written(self, path: bytes, final: bytes, entry: Entry) -> None:
        if self.written is not None:  # list.append is atomic: writer threads share it
            self.written.append((path.rpartition(b"/")[0] + b"/" + final, entry))

    @staticmethod
    def _where(dfd: int, name: bytes) -> bytes:
        return os.path.join(os.readlink(fd_path(dfd)), name)

    def _link(self, dfd: int, name: bytes, entry: Entry) -> bool:
        """Links the group's first file here: the inode the restore wrote, found by its path but
        checked (the path may have been swapped since), and linked through its descriptor."""
        first = self.links.get(tuple(entry["h"])) if "h" in entry else None
        if first is None:
            return False
        where, inode = first
        try:
            fd = os.open(where, NODE_FLAGS)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != inode:
                return False  # moved or replaced since: write the content instead
            os.link(fd_path(fd), name, dst_dir_fd=dfd, follow_symlinks=True)  # to the inode behind fd
            return True
        except OSError:
            return False  # e.g. across filesystems: write the content instead
        finally:
            os.close(fd)

    def _stage(self) -> Stage:
        """This writer's stage, made for its first large file and kept for the others: its
        pages are touched once, not once per file (mapping and touching 4 MiB afresh took ~3.5
        ms of page faults on the bench VM, a fifth of what decoding a 16 MiB file takes)."""
        stage = getattr(self.stages, "stage", None)
        if stage is None:
            stage = self.stages.stage = Stage(_STAGE)
        return stage

    def _write_content(self, fd: int, entry: Entry) -> int:
        extents = entry.get("sp")
        written = 0
        if extents is not None:
            os.ftruncate(fd, entry.get("s", 0))
            blob_iter = self.reader.read_in_order(entry.get("c", []))
            buffer, pos = b"", 0
            for offset, length in extents:
                while length:
                    if pos == len(buffer):
                        buffer, pos = next(blob_iter), 0
                    n = min(length, len(buffer) - pos)
                    os.pwrite(fd, memoryview(buffer)[pos:pos + n], offset)
                    offset, length, pos, written = offset + n, length - n, pos + n, written + n
            return written
        blob_ids = entry.get("c", [])
        if entry.get("s", 0) >= _STAGED_MIN:
            stage = self._stage()
            stage.start(fd)
            self.reader.read_in_order_into(blob_ids, content_lengths(entry), stage)
            return stage.finish()
        # A small file's blob may wait prefetched; a large file's come a few MiB a request.
        contents = (self.reader.read(i) for i in blob_ids) if inline(entry) else self.reader.read_in_order(blob_ids)
        for content in contents:
            written += write_all(fd, content)
        return written


@contextmanager
def _few_collections() -> Iterator[None]:
    """The cyclic collector's full passes walk every object alive, most of them the modules
    and state loaded before the restore (measured: ~4% of a restore's CPU): those are frozen
    out of its reach while the restore runs. Its thresholds stay: a served vault's responses
    (several MiB each) can be freed only by it, and collecting less often held 270 MiB."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _Batch:
    """Small files of one folder for one small writer: (final name, temp name or None, entry,
    path, decoded content, descriptor of the empty file made for it) each, and what the writer
    did with them.

    The walk makes the files (O_CREAT|O_EXCL) and the writer only fills them, so that a single
    thread allocates inodes. Why: ext4 without a journal skips recently freed inodes one by one
    at each allocation (find_inode_bit -> recently_deleted), so right after a big deletion each
    create scans for ~0.2 ms; two threads creating in one folder wait for each other on the
    folder's lock and, in one block group, collide on the same free inode and scan again under
    the group's lock, spinning meanwhile: that tripled the kernel time of a restore."""

    __slots__ = ("items", "files", "size", "done", "sent", "fresh")

    def __init__(self, fresh: bool) -> None:
        self.items: deque[tuple[bytes, bytes | None, Entry, bytes, list[bytes], int]] = deque()
        self.files = self.size = 0
        self.done: list[tuple[bool, int]] = []
        self.sent = False  # handed to a writer, which then owns the descriptors
        self.fresh = fresh  # the folder is one the restore made (see _write_batch)

    def add(self, final: bytes, tmp: bytes | None, entry: Entry, path: bytes, content: list[bytes],
            fd: int) -> None:
        self.items.append((final, tmp, entry, path, content, fd))
        self.files += 1
        self.size += sum(map(len, content))

    def close(self) -> None:
        """Closes the descriptors of files not written (an error or interruption before)."""
        while self.items:
            with suppress(OSError):
                os.close(self.items.popleft()[5])


def select_entries(reader: BlobReader, root_tree: bytes, paths: list[bytes],
                   sources: list[bytes]) -> list[tuple[list[bytes], list[Entry], Entry]]:
    """Resolves absolute paths in a point to (components, parent entries, entry)."""
    from strongroom.model import split_abs

    wanted = paths or sources
    out = []
    for raw in wanted:
        parts = split_abs(os.path.abspath(raw))
        entries, parents, found = reader.tree(root_tree), [], None
        for i, part in enumerate(parts):
            found = next((e for e in entries if e["n"] == part), None)
            if found is None:
                break
            if i < len(parts) - 1:
                if found["t"] != DIR:
                    found = None
                    break
                parents.append(found)
                entries = reader.tree(found["tree"])
        if not parts:
            out.append(([], [], {"n": b"", "t": DIR, "tree": root_tree}))
            continue
        if found is None:
            raise UsageError(f"{display_path(raw)} is not in this recovery point")
        out.append((parts, parents, found))
    return out
