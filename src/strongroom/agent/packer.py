"""Turns blobs into packs and uploads them in the background, once per blob ID.

Workers call `add` concurrently; compression and encryption run outside the lock (they
release the GIL), appending to the open pack inside it. Full packs go to one uploader
thread through a short queue, so memory stays bounded while the disk or network works.
"""

from __future__ import annotations

import queue
import threading

from strongroom import blobs
from strongroom.crypto import MasterKey
from strongroom.packs import KIND_DATA, KIND_TREE, PackBuilder
from strongroom.vault.interface import Vault

_QUEUE_DEPTH = 2


class Packer:
    def __init__(self, vault: Vault, key: MasterKey, known: set[bytes]) -> None:
        self.vault, self.key, self.known = vault, key, known
        self.lock = threading.Lock()
        self.builders = {KIND_DATA: PackBuilder(), KIND_TREE: PackBuilder()}
        self.bytes_added = 0
        self.blobs_added = 0
        self.packs_uploaded = 0
        self.error: BaseException | None = None
        self.queue: queue.Queue[PackBuilder | None] = queue.Queue(_QUEUE_DEPTH)
        self.uploader = threading.Thread(target=self._upload_loop, name="uploader", daemon=True)
        self.uploader.start()

    def add(self, blob_id: bytes, kind: int, data: bytes | memoryview) -> None:
        """Stores the blob unless the vault has it or it is already on its way."""
        with self.lock:
            if blob_id in self.known:
                return
            self.known.add(blob_id)
        envelope = blobs.encode(self.key, blob_id, data)
        with self.lock:
            builder = self.builders[kind]
            builder.add(blob_id, kind, envelope)
            self.bytes_added += len(envelope)
            self.blobs_added += 1
            full = builder.full
            if full:
                self.builders[kind] = PackBuilder()
        if full:
            self._send(builder)

    def _send(self, builder: PackBuilder) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(builder)

    def _upload_loop(self) -> None:
        while (builder := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that producers never block on a dead uploader
            try:
                name, data, _refs = builder.finish()
                self.vault.store_pack(name, data)
                self.packs_uploaded += 1
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                self.error = exc

    def close(self) -> None:
        """Uploads what is left and waits until every pack has landed."""
        for kind in (KIND_DATA, KIND_TREE):
            if len(self.builders[kind]):
                self._send(self.builders[kind])
                self.builders[kind] = PackBuilder()
        self.queue.put(None)
        self.uploader.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.queue.put(None)
        self.uploader.join()
