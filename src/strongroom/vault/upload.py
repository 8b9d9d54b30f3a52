"""Receiving a pack upload in the served vault: into memory when it is a usual pack and few
are in flight, else into a spool file on the vault's disk.

Why memory: the spool file cost the server a copy of every pack into page-cache pages it had
to allocate first (`copy_folio_from_iter_atomic`, 22 % of the server's CPU in a first backup,
perf), each `write` made on the event loop, which stalled every other request meanwhile. From
page-aligned anonymous memory, the storage writes a pack with O_DIRECT (storage/fs.py), as the
embedded vault does. Why a spool file still: a body without a Content-Length, a pack larger
than the agent makes, or more uploads at once than the memory bound allows; so a hostile or
busy set of machines holds at most MEMORY_UPLOADS x MEMORY_UPLOAD_MAX bytes of the server's
memory for uploads (pages are touched only as bytes arrive).

Why the memory is kept between uploads: a fresh mapping per pack cost a page fault, a zeroed
page and a memory-cgroup charge for every 4 KiB of it, and their unmapping after (~20 % of
the server's CPU in a first backup, perf). The at most MEMORY_UPLOADS buffers stay mapped, so
the server holds the pages of the largest packs it received (~2 x 9.5 MiB for the agent's).
"""

from __future__ import annotations

import mmap
import secrets
from collections.abc import AsyncIterator

from fastapi.concurrency import run_in_threadpool

from strongroom.errors import UsageError
from strongroom.packs import BUFFER_SIZE
from strongroom.vault.service import VaultService

MEMORY_UPLOADS = 2
MEMORY_UPLOAD_MAX = 2 * BUFFER_SIZE  # the agent's packs fit one pack buffer


class PackReceiver:
    """Stores uploaded packs, counting the ones held in memory (one event loop calls it, so a
    plain counter needs no lock)."""

    def __init__(self, service: VaultService) -> None:
        self.service = service
        self.in_memory = 0
        self.free: list[mmap.mmap] = []  # buffers no upload uses now (at most MEMORY_UPLOADS)

    async def receive(self, machine_id: int, name: str, length: int | None, body: AsyncIterator[bytes]) -> None:
        if length is not None and 0 < length <= MEMORY_UPLOAD_MAX and self.in_memory < MEMORY_UPLOADS:
            self.in_memory += 1
            # Private, not the shared (shmem) mapping mmap makes by default: no file behind it
            buf = self.free.pop() if self.free else mmap.mmap(-1, MEMORY_UPLOAD_MAX, flags=mmap.MAP_PRIVATE)
            try:
                data = await _into_memory(buf, length, body)
                await run_in_threadpool(self.service.store_pack, machine_id, name, data)
            finally:
                # The pack is stored (or refused) once store_pack has returned (a cancelled
                # request still waits for its thread: anyio does not abandon it), so nothing
                # reads the buffer after, though a traceback may still hold a view of it
                self.free.append(buf)
                self.in_memory -= 1
            return
        spool = self.service.spool_dir() / f".{name}.{secrets.token_hex(6)}"
        try:
            with open(spool, "wb") as f:
                async for chunk in body:
                    f.write(chunk)
            await run_in_threadpool(self.service.store_pack_file, machine_id, name, spool)
        finally:
            spool.unlink(missing_ok=True)


async def _into_memory(buf: mmap.mmap, length: int, body: AsyncIterator[bytes]) -> memoryview:
    """The body, which must be exactly `length` bytes, read into the start of `buf` (page-aligned)."""
    view = memoryview(buf)[:length]
    n = 0
    async for chunk in body:
        if n + len(chunk) > length:
            raise UsageError("the pack is longer than its Content-Length")
        view[n:n + len(chunk)] = chunk
        n += len(chunk)
    if n != length:
        raise UsageError("the pack is shorter than its Content-Length")
    return view
