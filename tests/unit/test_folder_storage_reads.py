"""FolderStorage.get_range from many threads at once: reads run outside the storage's lock,
while descriptors are evicted (more objects than it keeps open) and objects deleted and stored
again. Every read must return that object's bytes (a descriptor closed under a reader could
let its number name another file mid-read), and no descriptor may be left open."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from strongroom.errors import VaultError
from strongroom.vault.storage import fs
from strongroom.vault.storage.fs import FolderStorage

SIZE = 64 * 1024


def _content(i: int, gen: int) -> bytes:
    return random.Random(i * 1000 + gen).randbytes(SIZE)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_reads_side_by_side_with_evictions_and_deletes_return_each_objects_bytes(tmp_path: Path) -> None:
    storage = FolderStorage(tmp_path)
    count = fs._OPEN_FDS * 3  # every round of reads evicts descriptors others are reading
    generation = {i: 0 for i in range(count)}
    for i in range(count):
        storage.put(f"o{i}", _content(i, 0))
    before = _open_descriptors()
    stop = threading.Event()
    wrong: list[str] = []

    def churn() -> None:  # deletes an object and stores it anew, with other bytes
        rng = random.Random(1)
        while not stop.is_set():
            i = rng.randrange(count)
            storage.delete(f"o{i}")
            generation[i] += 1
            storage.put(f"o{i}", _content(i, generation[i]))

    def reader(seed: int) -> int:
        rng, done = random.Random(seed), 0
        while done < 3000:
            i = rng.randrange(count)
            offset = rng.randrange(SIZE - 4096)
            try:
                got = storage.get_range(f"o{i}", offset, 4096)
            except VaultError:
                continue  # deleted between the pick and the read: a clear refusal is right
            # Any generation up to now: a read may start before a delete (pack names are their
            # content's hash, so in a vault a name never comes back with other bytes).
            if not any(got == _content(i, g)[offset:offset + 4096] for g in range(generation[i] + 1)):
                wrong.append(f"o{i} at {offset}")
            done += 1
        return done

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(reader, range(8))) == 8 * 3000
    finally:
        stop.set()
        churner.join()
    assert wrong == [], f"{len(wrong)} reads returned another object's bytes, e.g. {wrong[:3]}"
    assert storage.readers == {} and storage.retired == set()
    # Only the descriptors it keeps for later reads stay open (at most _OPEN_FDS).
    assert len(storage.open_fds) <= fs._OPEN_FDS
    assert _open_descriptors() - before == len(storage.open_fds)
