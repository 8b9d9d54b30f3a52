"""Content-defined chunking (FastCDC, compiled core): cuts file contents into blobs.

Boundaries depend on content, so an insertion shifts only the chunks around it; the gear
table is seeded from the master key so that chunk lengths do not reveal known files.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

# pyfastcdc's real average is avg + min: 256 KiB + 768 KiB ≈ 1 MiB. Measured on the bench
# corpus (bench/README.md): large enough that per-blob overhead is negligible, small enough
# that a 1 MiB overwrite in a 200 MiB file costs about 2–3 MiB.
MIN_SIZE = 256 * 1024
AVG_SIZE = 768 * 1024
MAX_SIZE = 4 * 1024 * 1024


def make_chunker(seed: int) -> FastCDC:
    """A chunker; not safe to share between threads (pyfastcdc keeps state per call)."""
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)


def chunks(chunker: FastCDC, stream: BinaryIO) -> Iterator[memoryview]:
    """Yields each chunk's bytes; a chunk is valid only until the next one is requested."""
    for chunk in chunker.cut_stream(stream):
        yield chunk.data
