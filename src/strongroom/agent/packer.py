"""Turns blobs into packs and uploads them in the background, once per blob ID.

Workers call `add` concurrently; compression and encryption run outside the lock (they
release the GIL), appending to the open pack inside it. Small blobs are batched and encoded
on a thread of their own, so the walker, which reads small files itself, keeps walking
while zstd and AES work.

The pipeline: producers fill the open pack -> a full pack waits in a short queue -> one of two
uploaders stores it (the vault's transfer, check and durable writes) -> its buffer comes back
for a new pack. Two uploaders, because storing a pack is mostly waiting (fsyncs; from a served
vault also the transfer and the server's check), and with one the producers stood waiting for
a free buffer meanwhile (1-2 s of a served first backup of 820 MiB): now one pack's transfer
overlaps the store of the one before. That takes a third data-pack buffer, paid for by packs
that stop short of the target (packs.py: each buffer's pages stay within 9.5 MiB, not ~12.5).
"""

from __future__ import annotations

import mmap
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from strongroom import blobs
from strongroom.agent.blobcache import KnownBlobs
from strongroom.crypto import MasterKey
from strongroom.errors import VaultError
from strongroom.packs import BUFFER_SIZE, KIND_DATA, KIND_TREE, PackBuilder
from strongroom.vault.interface import Vault

_QUEUE_DEPTH = 1
_UPLOADERS = 2
_MAX_BUFFERS = 1 + _UPLOADERS  # the data pack being filled, one per uploader
_BATCH_BYTES = 1024 * 1024
_BATCH_BLOBS = 256
_BATCHES_IN_FLIGHT = 4


class Packer:
    def __init__(self, vault: Vault, key: MasterKey, known: KnownBlobs) -> None:
        self.vault, self.key = vault, key
        self.known = known
        self.synced = False  # brought up to date on first need: a no-change backup never needs it
        self.lock = threading.Lock()
        self.spare: queue.Queue[bytearray] = queue.Queue()
        self.buffers_made = 0
        self.builders = {kind: self._new_builder(kind) for kind in (KIND_DATA, KIND_TREE)}
        self.bytes_added = 0
        self.blobs_added = 0
        self.packs_uploaded = 0
        self.count_lock = threading.Lock()  # not self.lock: a producer waiting for a buffer holds it
        self.error: BaseException | None = None
        self.queue: queue.Queue[PackBuilder | None] = queue.Queue(_QUEUE_DEPTH)
        self.uploaders = [threading.Thread(target=self._upload_loop, name=f"uploader_{i}", daemon=True)
                          for i in range(_UPLOADERS)]
        for uploader in self.uploaders:
            uploader.start()
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self.batch: list[tuple[bytes, int, bytes]] = []
        self.batch_bytes = 0
        self.batch_slots = threading.BoundedSemaphore(_BATCHES_IN_FLIGHT)
        self.batches: list[Future] = []

    def _sync(self) -> None:
        if not self.synced:
            with self.lock:
                if not self.synced:
                    self.known.sync(self.vault)
                    self.synced = True

    def _claim(self, blob_id: bytes) -> bool:
        """True if this caller is the one to store the blob (not in the vault, not on its way)."""
        self._sync()
        return self.known.claim(blob_id)

    def add(self, blob_id: bytes, kind: int, data: bytes | memoryview) -> None:
        """Stores the blob unless the vault has it or it is already on its way."""
        if self._claim(blob_id):
            self._seal_and_append(blob_id, kind, *blobs.compress(data))

    def add_later(self, blob_id: bytes, kind: int, data: bytes) -> None:
        """Like `add` for a small blob owned by the caller: claimed and encoded in a batch, off
        this thread (two SQLite statements per small file cost the walker more than its read)."""
        self.batch.append((blob_id, kind, data))
        self.batch_bytes += len(data)
        if self.batch_bytes >= _BATCH_BYTES or len(self.batch) >= _BATCH_BLOBS:
            self._submit_batch()

    def _submit_batch(self) -> None:
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self.batch_slots.acquire()
        self.batches = [f for f in self.batches if not f.done() or f.exception()]
        self.batches.append(self.encoder.submit(self._encode_batch, batch))

    def _encode_batch(self, batch: list[tuple[bytes, int, bytes]]) -> None:
        try:
            self._sync()
            claims = self.known.claim_many([blob_id for blob_id, _kind, _data in batch])
            batch = [item for item, mine in zip(batch, claims, strict=True) if mine]
            compressed = blobs.compress_many([data for _id, _kind, data in batch])
            for (blob_id, kind, _data), (codec, payload) in zip(batch, compressed, strict=True):
                self._seal_and_append(blob_id, kind, codec, payload)
        finally:
            self.batch_slots.release()

    def _seal_and_append(self, blob_id: bytes, kind: int, codec: int, payload: Any) -> None:
        """Seals the payload straight into the open pack, under the lock: AES-GCM takes about
        0.5 ms for the largest chunk, and sealing in place spares each thread a scratch buffer
        of the largest envelope (4 MiB each, held all backup long) and a copy of every blob."""
        size = blobs.max_envelope(len(payload))
        with self.lock:
            closed = None
            if not self.builders[kind].fits(size):  # the pack closes short of the target, not past it
                closed, self.builders[kind] = self.builders[kind], self._new_builder(kind)
            self.builders[kind].add_written(blob_id, kind, size,
                                            lambda view: blobs.seal_to(self.key, blob_id, codec, payload, view))
            self.bytes_added += size
            self.blobs_added += 1
        if closed is not None:
            self._send(closed)

    def _new_builder(self, kind: int) -> PackBuilder:
        """Trees are few and small: their pack grows as needed instead of taking a data buffer."""
        return self._builder() if kind == KIND_DATA else PackBuilder(bytearray(64 * 1024))

    def _builder(self) -> PackBuilder:
        """A builder on a recycled buffer; waits for an uploader to free one when all are in use."""
        try:
            return PackBuilder(self.spare.get_nowait())
        except queue.Empty:
            pass
        if self.buffers_made < _MAX_BUFFERS:
            self.buffers_made += 1
            # Anonymous memory, not bytearray(), which zeroes all 9.5 MiB: only the pages a
            # pack fills count, and a backup that adds nothing costs none of them.
            return PackBuilder(mmap.mmap(-1, BUFFER_SIZE))  # type: ignore[arg-type]
        while True:  # a failed upload ends the wait: the buffer may never come back
            try:
                return PackBuilder(self.spare.get(timeout=0.2))
            except queue.Empty:
                if self.error is not None:
                    raise self.error from None

    def _send(self, builder: PackBuilder) -> None:
        if self.error is not None:
            self._recycle(builder)
            raise self.error
        self.queue.put(builder)

    def _recycle(self, builder: PackBuilder) -> None:
        if isinstance(builder.buffer, mmap.mmap):  # a data pack's buffer: the next one fills it
            self.spare.put(builder.buffer)

    def _upload_loop(self) -> None:
        while (builder := self.queue.get()) is not None:
            if self.error is None:  # else drained, so that producers never block on a dead uploader
                try:
                    name, data, _refs = builder.finish()
                    with data:
                        self.vault.store_pack(name, data)
                    with self.count_lock:
                        self.packs_uploaded += 1
                except OSError as exc:
                    # Not an OSError any more: readers must not take it for one file's problem.
                    # (A full disk is VaultFull already, embedded or served.)
                    self.error = VaultError(f"storing a pack in the vault failed: {exc.strerror or exc}")
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self.error = exc
            self._recycle(builder)
            self.queue.task_done()
        self.queue.task_done()

    def close(self) -> None:
        """Uploads what is left and waits until every pack has landed."""
        if self.batch:
            self._submit_batch()
        self.encoder.shutdown(wait=True)
        for batch in self.batches:
            batch.result()
        if len(self.builders[KIND_DATA]):
            self._send(self.builders[KIND_DATA])
        self.queue.join()  # every data pack lands before the last tree pack, which names their blobs
        if len(self.builders[KIND_TREE]):
            self._send(self.builders[KIND_TREE])
        self._stop_uploaders()
        if self.error is not None:
            raise self.error
        self._unmap_buffers()
        if self.synced:
            self.known.caught_up(self.vault)

    def _unmap_buffers(self) -> None:
        """Every pack has landed: the data packs' buffers go back to the system now, not at
        exit. The pages a backup filled (up to 28.5 MiB) stayed resident while the point was
        recorded, which is where the peak RSS of a backup after a change came."""
        buffers = [self.builders.pop(KIND_DATA).buffer]
        while not self.spare.empty():
            buffers.append(self.spare.get_nowait())
        for buffer in buffers:
            if isinstance(buffer, mmap.mmap):
                try:
                    buffer.close()
                except BufferError:  # a view of it still held somewhere: unmapped when collected
                    pass

    def abort(self) -> None:
        self.encoder.shutdown(wait=True, cancel_futures=True)
        self._stop_uploaders()

    def _stop_uploaders(self) -> None:
        """Once: `abort` after a `close` that stopped them and then failed (the cache's disk
        full) put a stop into a queue no uploader read any more, and waited there forever."""
        uploaders, self.uploaders = self.uploaders, []
        for _ in uploaders:
            self.queue.put(None)
        for uploader in uploaders:
            uploader.join()
