"""Reading blobs back from the vault: locate, range-read, decrypt, verify, decompress."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from strongroom import blobs
from strongroom.crypto import MasterKey
from strongroom.errors import IntegrityError, VaultError
from strongroom.fsutil import Stage
from strongroom.model import Entry, decode_tree
from strongroom.vault.interface import Vault
from strongroom.vault.shapes import BlobLocation

_LOCATE_BATCH = 4096
# Decoded trees kept, by the size of their blobs: a tree of a million entries is ~100 MB,
# so a bound by count would be no bound at all. Decoded, a tree takes several times its
# blob (a 1000-file folder: ~1 MB of dicts); a walk needs few trees twice.
_TREE_CACHE_BYTES = 4 * 1024 * 1024
# A restore also keeps trees sealed (compressed and encrypted: a few times smaller than
# decoded), so that it reads each from a served vault once although it walks them three times
# (its folders first, its read-ahead, its walk): the bench corpus's 613 trees take 1.2 MiB.
RESTORE_SEALED_TREES_BYTES = 4 * 1024 * 1024
# A backup's walk reads each tree of the parent point once: a small bound, since a no-change
# backup of 20,000 files otherwise held 30 MiB of decoded trees at its end.
WALK_TREE_CACHE_BYTES = 512 * 1024
# Blobs fetched ahead in one request each: a served vault answers a directory's trees or
# small files in one round trip instead of one each. Bounded, since prefetched blobs wait
# in memory until read.
_PREFETCH_REQUEST = 2 * 1024 * 1024
_PREFETCH_HELD = 64 * 1024 * 1024


class BlobReader:
    def __init__(self, vault: Vault, key: MasterKey, machine: str | None = None,
                 tree_cache_bytes: int = _TREE_CACHE_BYTES) -> None:
        self.vault, self.key = vault, key
        self.tree_cache_bytes = tree_cache_bytes
        self.machine = machine  # whose blobs: this machine's unless restoring another's
        self.locations: dict[bytes, BlobLocation] = {}
        self.trees: OrderedDict[bytes, tuple[list[Entry], int]] = OrderedDict()
        self.tree_bytes = 0
        self.sealed: OrderedDict[bytes, bytes] = OrderedDict()  # tree id -> its envelope
        self.sealed_bytes = 0
        self.sealed_bytes_max = 0  # none kept unless asked for
        self.prefetched: dict[bytes, bytes | memoryview] = {}  # blob id -> sealed envelope, until read once
        self.held = 0
        self.lock = threading.Lock()
        self.taken = threading.Condition(self.lock)  # notified as `held` drops and as trees are read
        self.held_wanted = -1  # what `wait_held` waits for `held` to drop to (-1: no one waits)
        self.reading: set[bytes] = set()  # trees being read by a thread (the others wait for it)

    def locate(self, ids: list[bytes]) -> None:
        """Looks up where blobs lie, in batches, ahead of reading them."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self.locations]
        for start in range(0, len(wanted), _LOCATE_BATCH):
            self.locations.update(self.vault.blob_locations(wanted[start:start + _LOCATE_BATCH], self.machine))

    def location(self, blob_id: bytes) -> BlobLocation:
        if blob_id not in self.locations:
            self.locate([blob_id])
        try:
            return self.locations[blob_id]
        except KeyError:
            raise VaultError(f"blob {blob_id.hex()[:16]} is not in the vault") from None

    def prefetch(self, ids: list[bytes]) -> None:
        """Fetches these blobs in as few requests as the size bound allows; `read` then
        takes them from memory. Blobs that would overflow the bound are read later, singly."""
        with self.lock:
            wanted = [i for i in dict.fromkeys(ids)
                      if i not in self.prefetched and i not in self.trees and i not in self.sealed]
        self.locate(wanted)
        room = _PREFETCH_HELD - self.held
        chosen: list[tuple[bytes, BlobLocation]] = []
        for blob_id in wanted:
            loc = self.locations.get(blob_id)
            if loc is None:
                continue  # `read` reports it
            room -= loc.length
            if room < 0:
                break
            chosen.append((blob_id, loc))
        for batch in _batches(chosen):
            envelopes = self._envelopes(batch)
            with self.lock:
                for (blob_id, _loc), envelope in zip(batch, envelopes):
                    if blob_id not in self.prefetched:  # another thread's prefetch may have put it there
                        self.prefetched[blob_id] = envelope
                        self.held += len(envelope)

    def _take(self, blob_id: bytes) -> bytes | memoryview | None:
        with self.lock:
            envelope = self.prefetched.pop(blob_id, None)
            if envelope is not None:
                self.held -= len(envelope)
                if self.held <= self.held_wanted:  # not at every take: each wakes the waiter
                    self.taken.notify_all()
        return envelope

    def wait_held(self, limit: int, stopped: Callable[[], bool]) -> None:
        """Waits until at most `limit` prefetched bytes wait to be read, or `stopped()` (see `wake`)."""
        with self.taken:
            self.held_wanted = limit
            try:
                self.taken.wait_for(lambda: self.held <= limit or stopped())
            finally:
                self.held_wanted = -1

    def wake(self) -> None:
        """Has `wait_held` look at its `stopped` again."""
        with self.taken:
            self.taken.notify_all()

    def drop(self, ids: list[bytes]) -> None:
        """Forgets prefetched blobs that will not be read after all."""
        for blob_id in ids:
            self._take(blob_id)

    def read(self, blob_id: bytes, limit: int = blobs.MAX_DATA_BYTES) -> bytes:
        loc = self.location(blob_id)
        return self._decode(blob_id, loc, self._envelope(blob_id, loc), limit)

    def _envelope(self, blob_id: bytes, loc: BlobLocation) -> bytes | bytearray | memoryview:
        """Prefetched, or read now."""
        envelope = self._take(blob_id)
        return envelope if envelope is not None else self.vault.read_range(loc.pack, loc.offset, loc.length)

    def read_in_order(self, ids: list[bytes]) -> Iterator[bytes]:
        """The blobs of one file, in order, fetched a few MiB per request."""
        for batch in _batches((blob_id, self.location(blob_id)) for blob_id in ids):
            for (blob_id, loc), envelope in zip(batch, self._envelopes(batch)):
                yield self._decode(blob_id, loc, envelope)

    def read_in_order_into(self, ids: list[bytes], lengths: list[int], stage: Stage) -> None:
        """The blobs of one file, in order, each of the length its tree lists (`content_lengths`),
        decoded straight into `stage` (blobs.decode_into) and kept there once verified."""
        scratch = bytearray()  # a compressed blob's payload: one buffer for the file's chunks
        sizes = iter(lengths)
        for batch in _batches((blob_id, self.location(blob_id)) for blob_id in ids):
            for (blob_id, loc), envelope in zip(batch, self._envelopes(batch)):
                n = next(sizes)
                try:
                    blobs.decode_into(self.key, blob_id, envelope, stage.room(n), scratch)
                except IntegrityError as exc:
                    raise IntegrityError(f"blob {blob_id.hex()[:16]} in pack {loc.pack}: {exc}") from None
                stage.keep(n)

    def _envelopes(self, batch: list[tuple[bytes, BlobLocation]]) -> list[bytes] | list[memoryview]:
        return self.vault.read_ranges([(loc.pack, loc.offset, loc.length) for _id, loc in batch])

    def _decode(self, blob_id: bytes, loc: BlobLocation, envelope: bytes | memoryview,
                limit: int = blobs.MAX_DATA_BYTES) -> bytes:
        try:
            return blobs.decode(self.key, blob_id, envelope, limit)
        except IntegrityError as exc:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} in pack {loc.pack}: {exc}") from None

    def tree(self, tree_id: bytes) -> list[Entry]:
        with self.lock:
            # a tree another thread is reading (a restore's read-ahead and its walk): not twice
            self.taken.wait_for(lambda: tree_id not in self.reading)
            if tree_id in self.trees:
                self.trees.move_to_end(tree_id)
                return self.trees[tree_id][0]
            self.reading.add(tree_id)
        try:
            loc = self.location(tree_id)
            raw = self._decode(tree_id, loc, self._sealed_tree(tree_id, loc), blobs.MAX_TREE_BYTES)
            entries = decode_tree(raw)
            with self.lock:
                self.trees[tree_id] = (entries, len(raw))
                self.tree_bytes += len(raw)
                while self.tree_bytes > self.tree_cache_bytes and len(self.trees) > 1:
                    self.tree_bytes -= self.trees.popitem(last=False)[1][1]
        finally:
            with self.lock:
                self.reading.discard(tree_id)
                self.taken.notify_all()
        return entries

    def _sealed_tree(self, tree_id: bytes, loc: BlobLocation) -> bytes | bytearray | memoryview:
        """A tree's envelope: kept (up to `sealed_bytes_max`), prefetched, or read now."""
        with self.lock:
            kept = self.sealed.get(tree_id)
            if kept is not None:
                self.sealed.move_to_end(tree_id)
                return kept
        envelope = self._envelope(tree_id, loc)
        if len(envelope) <= self.sealed_bytes_max:
            with self.lock:
                self.sealed[tree_id] = bytes(envelope)  # a copy: a view would keep the answer it came in
                self.sealed_bytes += len(envelope)
                while self.sealed_bytes > self.sealed_bytes_max:
                    self.sealed_bytes -= len(self.sealed.popitem(last=False)[1])
        return envelope


def content_lengths(entry: Entry) -> list[int]:
    """The plaintext length of each blob of a file's content, as its tree lists them (`cl`);
    IntegrityError unless there is a valid one for each."""
    ids, lengths = entry.get("c", []), entry.get("cl", [])
    if not isinstance(lengths, list) or len(lengths) != len(ids) or \
            any(not isinstance(n, int) or n < 0 or n > blobs.MAX_DATA_BYTES for n in lengths):
        raise IntegrityError("the tree lists no valid length for each blob of this file")
    return lengths


def _batches(blobs_at: Iterable[tuple[bytes, BlobLocation]]) -> Iterator[list[tuple[bytes, BlobLocation]]]:
    """Consecutive groups of at most _PREFETCH_REQUEST bytes (a larger blob goes alone)."""
    batch: list[tuple[bytes, BlobLocation]] = []
    size = 0
    for blob_id, loc in blobs_at:
        if batch and size + loc.length > _PREFETCH_REQUEST:
            yield batch
            batch, size = [], 0
        batch.append((blob_id, loc))
        size += loc.length
    if batch:
        yield batch
