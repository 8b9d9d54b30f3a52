"""Content-defined chunking (FastCDC, compiled core): cuts file contents into blobs.

Boundaries depend on content, so an insertion shifts only the chunks around it; the gear
table is seeded from the master key so that chunk lengths do not reveal known files.
"""

from __future__ import annotations

import errno
import mmap
from collections.abc import Iterator
from typing import Protocol

from pyfastcdc import FastCDC

# A file of at most MIN_SIZE bytes is one blob, read whole (backup) and written whole (restore).
MIN_SIZE = 256 * 1024
# Cut points: pyfastcdc's real average is about avg + min, here ≈ 2 MiB (measured on the
# bench corpus's logs: 2.4 MiB). Each blob is compressed on its own, and zstd level 3 packs
# 2 MiB of log text 5-10 % smaller than 1 MiB (ratio 0.190 against 0.201 on log_3.log, and
# no slower per byte), which is what keeps the vault no larger than Borg's (2 MiB average
# too). The cost: a 1 MiB overwrite inside a large file stores about 4-6 MiB instead of 2-3.
CUT_MIN_SIZE = 512 * 1024
CUT_AVG_SIZE = 1536 * 1024
MAX_SIZE = 4 * 1024 * 1024


# The read-ahead past a chunk's largest size that the buffer holds. A cut looks at most
# MAX_SIZE bytes past the chunk's start, so with that much read (or the stream's end) it is
# the cut the whole stream gives. pyfastcdc's own stream reader takes 2 * MAX_SIZE (8 MiB),
# zeroed afresh for every file: with two readers, 16 MiB of a first backup's peak RSS.
# Moving what is left to the buffer's start more often costs no measurable CPU (1.5 GiB of
# the bench's large files: 0.57-0.59 against 0.58-0.65 CPU-s, same chunks).
READ_AHEAD = 1024 * 1024
BUFFER_SIZE = MAX_SIZE + READ_AHEAD
# After a stream at least this long the buffer's pages go back to the system: the faults that
# bring them back for the next one (1,280 for 5 MiB, ~0.5 ms) are under 0.2 % of the CPU that
# reading, hashing, compressing and sealing that much took, and a reader idle for the rest of
# a backup (its large files done, the walk in the small ones) holds none of it.
RELEASE_AFTER = 64 * 1024 * 1024


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Chunker:
    """FastCDC with a buffer of its own, kept from stream to stream; not safe to share
    between threads (each call reuses the buffer)."""

    def __init__(self, seed: int) -> None:
        self.fastcdc = FastCDC(CUT_AVG_SIZE, min_size=CUT_MIN_SIZE, max_size=MAX_SIZE, seed=seed)
        # Private anonymous memory: only the pages a stream fills count (a 300 KiB file touches
        # 300 KiB), and MADV_DONTNEED frees them (in shared memory it would only unmap them).
        self.buffer = mmap.mmap(-1, BUFFER_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.buffer)


def chunks(chunker: Chunker, stream: Readable) -> Iterator[memoryview]:
    """Yields each chunk's bytes; a chunk is valid only until the next one is requested."""
    view, cut = chunker.view, chunker.fastcdc.cut_buf
    start = end = total = 0
    more = True
    while True:
        if more and end - start < MAX_SIZE:
            if start:
                view[:end - start] = view[start:end]  # memoryview assignment: a memmove
                end, start = end - start, 0
            while end < BUFFER_SIZE:
                n = stream.readinto(view[end:])
                if n is None:  # a non-blocking descriptor with nothing yet: not the end of it
                    raise BlockingIOError(errno.EAGAIN, "the stream has nothing to read without waiting")
                if not n:
                    more = False
                    break
                end += n
                total += n
        if start == end:
            if total >= RELEASE_AFTER:  # the last chunk is done with: asked for the next one
                chunker.buffer.madvise(mmap.MADV_DONTNEED)
            return
        chunk = next(cut(view[start:end]))
        yield chunk.data
        start += chunk.length
