"""The agent's on-disk index of its blobs in the vault.

A backup must know which blobs the vault has already, so as not to upload them again. The
set lives in SQLite in the cache folder, not in memory, and each backup asks the vault only
for the blobs indexed since the last one (vault epoch and pack sequence); when the vault
dropped blobs (a prune) or was rebuilt, the epoch differs and the set is fetched anew. A
missing or damaged cache is rebuilt from the vault: slower, never wrong. The set may only
ever claim too little, never too much: a blob the cache wrongly believes present would make
the point fail the vault's own check, after which the cache is dropped (`forget`).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from strongroom.vault.interface import Vault
from strongroom.vault.idsql import EACH_ID, ID_AT, id_params
from strongroom.vault.wire import ID_SIZE

CACHE_FILE = "blobs.sqlite"
_KNOW_BATCH = 32768  # claims read back and added to the set at a time: 1 MiB of IDs
_CLAIMS_CACHE_KIB = 8192  # ~150,000 claims before the anonymous database spills to its file
_SCHEMA = """
CREATE TABLE IF NOT EXISTS known (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facts (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_KNOWN_OF = EACH_ID + f"SELECT {ID_AT} FROM pos WHERE EXISTS (SELECT 1 FROM known WHERE id = {ID_AT})"
_CLAIM = EACH_ID + f"INSERT OR IGNORE INTO claimed (id) SELECT {ID_AT} FROM pos RETURNING id"
_KNOW = EACH_ID + f"INSERT OR IGNORE INTO known (id) SELECT {ID_AT} FROM pos"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last change costs a re-fetch
    db.executescript(_SCHEMA)
    db.execute("PRAGMA quick_check").fetchall()
    return db


class KnownBlobs:
    """The machine's blob IDs the vault holds, plus those this backup has claimed to upload."""

    def __init__(self, cache: Path) -> None:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = cache / CACHE_FILE
        self.lock = threading.Lock()
        # Found by `sync`: the set holds no ID (a first backup), so claims need not look in it.
        # Nothing else adds to it until `caught_up`, at the backup's end.
        self.empty = False
        try:
            self.db = _connect(self.path)
        except sqlite3.DatabaseError:  # damaged: start again from the vault
            self._remove()
            self.db = _connect(self.path)
        # What this backup claimed, in a private anonymous database without a journal rather
        # than a TEMP table: SQLite wrote a TEMP table's dirty pages to a file at every commit
        # (40 MB of writes, 28,000 system calls for 20,000 small files), while this one stays
        # in its page cache until that overflows (bounded: _CLAIMS_CACHE_KIB), then spills.
        self.claims = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self.claims.execute(f"PRAGMA cache_size=-{_CLAIMS_CACHE_KIB}")
        self.claims.execute("PRAGMA journal_mode=OFF")  # scratch: without these, every commit writes
        self.claims.execute("PRAGMA synchronous=OFF")
        self.claims.execute("CREATE TABLE claimed (id BLOB PRIMARY KEY) WITHOUT ROWID")

    def _remove(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def sync(self, vault: Vault) -> None:
        """Brings the set up to date with the vault: only what changed, when it can."""
        facts = dict(self.db.execute("SELECT key, value FROM facts").fetchall())
        epoch, since = facts.get("epoch"), int(facts.get("seq", 0))
        current, seq, page = vault.blob_ids_since(epoch, since)
        self.db.execute("BEGIN")
        if current != epoch:
            self.db.execute("DELETE FROM known")
        while page:
            self.db.executemany("INSERT OR IGNORE INTO known (id) VALUES (?)",
                                ((page[i:i + ID_SIZE],) for i in range(0, len(page), ID_SIZE)))
            last = page[-ID_SIZE:]
            _epoch, _seq, page = vault.blob_ids_since(epoch if current == epoch else None, since, last)
        self.db.executemany("INSERT OR REPLACE INTO facts (key, value) VALUES (?, ?)",
                            [("epoch", current), ("seq", str(seq))])
        self.empty = self.db.execute("SELECT NOT EXISTS (SELECT 1 FROM known)").fetchone()[0] == 1
        self.db.execute("COMMIT")

    def caught_up(self, vault: Vault) -> None:
        """After a backup's packs have all landed: what it claimed is in the vault, and known
        from now on, and the set's seq moves to the vault's current one, so that the next
        backup does not fetch back the blobs this one uploaded (a million IDs, seconds, after
        a first backup). What others indexed meanwhile is skipped: the set then claims too
        little, which costs an upload, never a wrong point. A prune meanwhile changed the
        epoch, and the next sync fetches the set anew.

        Once, here, not pack by pack as they land: the claims come out sorted, so the inserts
        walk the index in order and one commit writes each page once (per pack, each commit
        rewrote most of the index: 3,836 WAL writes for 25 packs of 20,000 small files). A
        backup killed before this point loses nothing: its seq was not moved, and the next
        sync fetches the blobs of the packs that landed."""
        facts = dict(self.db.execute("SELECT key, value FROM facts").fetchall())
        if "epoch" not in facts:
            return  # never synced: nothing to build on
        current, seq, _none = vault.blob_ids_since(facts["epoch"], int(facts["seq"]), b"\xff" * ID_SIZE)
        with self.lock:
            self.db.execute("BEGIN")
            claimed = self.claims.execute("SELECT id FROM claimed ORDER BY id")
            while batch := claimed.fetchmany(_KNOW_BATCH):
                self.db.execute(_KNOW, id_params([row[0] for row in batch]))
            if current == facts["epoch"]:
                self.db.execute("INSERT OR REPLACE INTO facts (key, value) VALUES ('seq', ?)", (str(seq),))
            self.db.execute("COMMIT")
            self.empty = False

    def claim(self, blob_id: bytes) -> bool:
        """True if the caller is the one to store this blob (not in the vault, not on its way)."""
        return self.claim_many([blob_id])[0]

    def claim_many(self, ids: list[bytes]) -> list[bool]:
        """`claim` for many blobs at once: for each ID, True if the caller is to store it (a
        repeat within `ids` is claimed once). Two statements per batch, whatever its size:
        the IDs go in joined as one parameter, and what is newly claimed comes back from the
        insert itself (`RETURNING`; an ignored row is not returned)."""
        if not ids:
            return []
        unique = list(dict.fromkeys(ids))
        with self.lock:
            present = set() if self.empty else {row[0] for row in self.db.execute(_KNOWN_OF, id_params(unique))}
            if present:
                unique = [i for i in unique if i not in present]
            new = {row[0] for row in self.claims.execute(_CLAIM, id_params(unique))} if unique else set()
        out = []
        for blob_id in ids:
            out.append(blob_id in new)
            new.discard(blob_id)
        return out

    def forget(self) -> None:
        """Drops the set: the next backup fetches it whole from the vault."""
        self.close()
        self._remove()

    def close(self) -> None:
        self.db.close()
        self.claims.close()

