"""The vault service: the domain rules over storage and catalog, with no knowledge of keys.

One service, two ways in: called in-process for an embedded vault, or behind the HTTP API
for a served one. Every agent-facing call is made on behalf of a machine, authenticated by
the token it got at registration. Storage first, catalog second: every record is written to
storage (vault/records.py) before the catalog points at it, so that the catalog can always
be rebuilt from storage (vault/rebuild.py).
"""

from __future__ import annotations

import atexit
import hmac
import json
import mmap
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import blake3
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import DatabaseError

from strongroom import packs as packfmt
from strongroom.credentials import Credentials
from strongroom.errors import (
    CredentialsError,
    IntegrityError,
    StrongroomError,
    UsageError,
    VaultError,
    VaultFull,
    VaultReadOnly,
    READ_ONLY_FS,
)
from strongroom.fsutil import write_private
from strongroom.names import check_machine_name
from strongroom.policy import check_vault_doc
from strongroom.testhook import hook
from strongroom.vault import catalog as cat
from strongroom.vault import privacy, protection, records
from strongroom.vault import refs as reflist
from strongroom.vault.jobs import JobBook, JobRecord
from strongroom.vault.records import pack_object
from strongroom.vault.shapes import BLOB_PAGE, BlobLocation, PointRecord  # noqa: F401 - re-exported
from strongroom.vault.storage.fs import FolderStorage
from strongroom.vault.storage_errors import storage_failure
from strongroom.vault.wire import MAX_PACK_BYTES

VAULT_FILE = "vault.json"
VAULT_FORMAT = 2  # storage-first records, refs by blob ID, blobs unique per machine
CATALOG_FILE = "catalog.sqlite"
FULL_DISK = "the vault's disk is full: the vault can be read, not written, until room is made"
ADMIN_TOKEN_FILE = "admin.token"
SPOOL_DIR = "incoming"
MAX_READ_BYTES = 64 * 1024 * 1024  # one batched read: bounded memory in the vault
_READ_GAP = 16 * 1024  # bytes between two ranges of one batched read that are read along (read_ranges)
TOKEN_CACHE_S = 5.0  # how long a checked token is trusted from memory


def _hash_secret(secret: str) -> str:
    return blake3.blake3(secret.encode()).hexdigest()


class CatalogUntrusted(VaultError):
    """The catalog is missing, empty, unreadable or older than storage: nothing may be
    served or deleted on its word until `vault rebuild-catalog` has run."""


def rebuild_hint(root: Path) -> str:
    return f"run `strongroom vault rebuild-catalog {root}` to rebuild it from the vault's storage"


def read_vault_meta(root: Path) -> dict[str, Any]:
    """vault.json, refused with one line when missing, unreadable or of another format."""
    try:
        meta = json.loads((root / VAULT_FILE).read_text())
    except FileNotFoundError:
        raise VaultError(f"no Strongroom vault at {root}") from None
    except ValueError as exc:
        raise VaultError(f"the vault's {root / VAULT_FILE} is damaged ({exc})") from None
    except OSError as exc:
        raise VaultError(f"cannot read the vault at {root}: {exc.strerror or exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str):
        raise VaultError(f"the vault's {root / VAULT_FILE} is damaged (not a vault's description)")
    if meta.get("version") != VAULT_FORMAT:
        raise VaultError(f"the vault at {root} has format {meta.get('version')!r}; this Strongroom reads format "
                         f"{VAULT_FORMAT} only (make a new vault and back up again)")
    return meta


def _open_catalog(path: Path, read_only: VaultReadOnly | None = None) -> tuple[Engine, dict[str, str]]:
    """The catalog's engine and its facts (catalog_meta). `read_only`: the vault cannot be
    written, and a write raises this; its catalog is opened read-only, and `immutable` when its
    write-ahead log holds nothing (SQLite then needs no shared-memory file, which it could not
    make). A log that holds changes (its last writer killed) is read as SQLite reads a read-only
    database's log, from the log and shared-memory files that are there."""
    if read_only is None:
        engine = cat.open_engine(f"sqlite:///{path}")
    else:
        wal = Path(f"{path}-wal")
        logged = wal.exists() and wal.stat().st_size > 0
        engine = cat.open_engine(f"sqlite:///file:{quote(str(path))}?mode=ro{'' if logged else '&immutable=1'}"
                                 "&uri=true", lambda: type(read_only)(str(read_only)))
        if logged:
            try:
                return _facts(engine)
            except DatabaseError:  # no shared-memory file, or no room to make one
                engine.dispose()
                raise type(read_only)(f"{read_only}; and its catalog's write-ahead log holds changes, which must "
                                      "be written into it before it can be read") from None
    return _facts(engine)


def _facts(engine: Engine) -> tuple[Engine, dict[str, str]]:
    with engine.connect() as db:
        return engine, dict(db.execute(select(cat.catalog_meta.c.key, cat.catalog_meta.c.value)).all())


def _read_only_fs(root: Path) -> VaultReadOnly | None:
    """A vault on read-only media (a disk mounted `ro` to restore from it) is read as it is."""
    return VaultReadOnly(READ_ONLY_FS) if os.statvfs(root).f_flag & os.ST_RDONLY else None


class VaultService:
    def __init__(self, root: Path) -> None:
        self.meta = read_vault_meta(root)
        self.root = root
        privacy.lock_down(root)
        self.id: str = self.meta["id"]
        self.storage = FolderStorage(root)
        catalog = root / CATALOG_FILE
        if not catalog.exists():
            # Never a new empty catalog in place of a lost one: its word would be "nothing
            # is needed", and a prune would delete every pack.
            raise CatalogUntrusted(f"the vault's catalog {catalog} is missing; {rebuild_hint(root)}")
        try:
            self.engine, facts = _open_catalog(catalog, _read_only_fs(root))
        except DatabaseError as exc:
            if not isinstance(storage_failure(exc), VaultFull):
                raise CatalogUntrusted(f"the vault's catalog {catalog} is unreadable ({exc.orig}); "
                                       f"{rebuild_hint(root)}") from None
            # Its disk is full, not the catalog broken: no rebuild, and what needs no room works
            self.engine, facts = _open_catalog(catalog, VaultFull(FULL_DISK))
        if facts.get("vault_id") != self.id:
            raise CatalogUntrusted(f"the vault's catalog {catalog} is empty or belongs to another vault; "
                                   f"{rebuild_hint(root)}")
        self.incarnation: str = facts["incarnation"]
        # Closed at exit, the last connection folds the write-ahead log into the catalog and
        # removes it: a vault at rest is its catalog file, not also a few MB of log.
        atexit.register(self.engine.dispose)
        self.jobs = JobBook(self.engine, self._archive_job, root)
        # token hash -> (machine, name, until when to trust this without the catalog)
        self.known_tokens: dict[str, tuple[int, str, float]] = {}

    @classmethod
    def create(cls, root: Path) -> "VaultService":
        if root.exists() and any(root.iterdir()):
            raise UsageError(f"{root} exists and is not empty")
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "packs").mkdir(mode=0o700)
        write_private(root / ADMIN_TOKEN_FILE, (secrets.token_urlsafe(32) + "\n").encode())
        protection.make_pin_secret(root)
        meta = {"format": "strongroom-vault", "version": VAULT_FORMAT, "id": str(uuid.uuid4()),
                "created": int(time.time())}
        write_private(root / VAULT_FILE, json.dumps(meta, indent=1).encode())
        # Closed, the only connection folds the write-ahead log into the catalog: a vault made
        # and then mounted read-only elsewhere must not depend on a log it cannot fold in.
        init_catalog(root / CATALOG_FILE, meta["id"]).dispose()
        return cls(root)

    # -- credentials and registration ------------------------------------------------------

    def issue_credentials(self, url: str, valid_days: int) -> Credentials:
        if valid_days < 1:
            raise UsageError("--valid-days must be at least 1")
        secret = secrets.token_urlsafe(32)
        issued = int(time.time())
        expires = issued + valid_days * 86400
        with cat.write(self.engine) as db:
            cid = db.execute(insert(cat.credentials).values(
                secret_hash=_hash_secret(secret), issued=issued, expires=expires)).inserted_primary_key[0]
        return Credentials(url, self.id, cid, secret, issued, expires)

    def check_credentials(self, db: Any, creds: Credentials) -> None:
        """Refuses credentials that are not this vault's newest unexpired ones."""
        if creds.vault_id != self.id:
            raise CredentialsError("these credentials belong to another vault")
        newest = db.execute(select(cat.credentials).order_by(cat.credentials.c.id.desc()).limit(1)).first()
        row = db.execute(select(cat.credentials).where(cat.credentials.c.id == creds.credential_id)).first()
        if row is None or not hmac.compare_digest(row.secret_hash, _hash_secret(creds.secret)):
            raise CredentialsError("these credentials were not issued by this vault")
        if newest is not None and newest.id != row.id:
            raise CredentialsError("these credentials were superseded by newer ones; use the newest file")
        if row.expires <= time.time():
            raise CredentialsError("these vault credentials have expired; download new ones")

    def register(self, creds: Credentials, machine: str, keyfile: str, key_check: str | None = None) -> str:
        """Registers a machine and returns its token; the newest unexpired credentials only.
        `key_check`: what a later `register --replace` must match (vault/machine_admin.py)."""
        if creds.vault_id != self.id:
            raise CredentialsError("these credentials belong to another vault")
        check_machine_name(machine)
        token = secrets.token_urlsafe(32)
        with cat.write(self.engine) as db:
            self.check_credentials(db, creds)
            if db.execute(select(cat.machines.c.id).where(cat.machines.c.name == machine)).first():
                raise CredentialsError(f"a machine named {machine!r} is already registered with this vault "
                                       "(a rebuilt machine takes it back with `register --replace`)")
            record = {"uid": secrets.token_hex(8), "name": machine, "registered": int(time.time()),
                      "keyfile": keyfile, "token_hash": _hash_secret(token)}
            if key_check is not None:
                record["key_check"] = key_check
            self.storage.put(records.machine_object(record["uid"]), records.encode_json(record))
            hook("machine-record-stored")  # tests: a kill -9 between the record and the catalog's row
            db.execute(insert(cat.machines).values(**record))
        return token

    def authenticate(self, token: str) -> tuple[int, str]:
        """The (id, name) of the machine holding this token.

        Tokens are compared by their hashes in constant time; a token seen before is found
        by its hash in memory, which tells a timing observer nothing about other tokens
        (it would have to guess a 256-bit secret whose hash matches)."""
        wanted = _hash_secret(token)
        known = self.known_tokens.get(wanted)
        if known is not None and known[2] > time.monotonic():
            return known[0], known[1]
        with self.engine.connect() as db:
            rows = db.execute(select(cat.machines.c.id, cat.machines.c.name, cat.machines.c.token_hash,
                                     cat.machines.c.revoked, cat.machines.c.removed_ns)).all()
        for mid, name, th, _revoked, _removed in rows:
            if hmac.compare_digest(th, wanted):
                # Kept a few seconds only: another process (an admin's command on the vault's
                # folder) may revoke the token meanwhile.
                self.known_tokens[wanted] = (mid, name, time.monotonic() + TOKEN_CACHE_S)
                return mid, name
        for _mid, name, _th, revoked, removed in rows:
            if revoked and wanted in json.loads(revoked):
                why = ("was removed from the vault" if removed else
                       "was taken over by a rebuilt machine (`register --replace`)")
                raise VaultError(f"this machine's token was revoked: machine {name!r} {why}")
        raise VaultError("this machine is not registered with the vault (its token was refused)")

    def machine_id(self, name: str) -> int:
        with self.engine.connect() as db:
            row = db.execute(select(cat.machines.c.id).where(cat.machines.c.name == name,
                                                             cat.machines.c.removed_ns.is_(None))).first()
        if row is None:
            raise UsageError(f"no machine named {name!r} is registered with this vault")
        return row.id

    def keyfile(self, machine_id: int) -> str:
        with self.engine.connect() as db:
            return db.execute(select(cat.machines.c.keyfile).where(cat.machines.c.id == machine_id)).scalar_one()

    def _archive_job(self, machine_id: int, job: JobRecord) -> None:
        self.storage.put(records.job_object(self.machine_uid(machine_id), job.id), records.encode_json(job.to_dict()))

    def machine_uid(self, machine_id: int, db: Connection | None = None) -> str:
        """The machine's uid (its folder in storage), read within `db`'s transaction if given."""
        if db is None:
            with self.engine.connect() as own:
                return self.machine_uid(machine_id, own)
        return cat.driver_sql(db, "SELECT uid FROM machines WHERE id = ?", (machine_id,)).scalar_one()

    # -- packs and blobs --------------------------------------------------------------------

    def blob_epoch(self, machine_id: int) -> tuple[str, int]:
        """(epoch, seq): the epoch changes when blobs of the machine are dropped or the catalog
        is rebuilt; seq grows with every pack indexed."""
        with self.engine.connect() as db:
            row = db.execute(select(cat.machines.c.drops, cat.machines.c.pack_seq)
                             .where(cat.machines.c.id == machine_id)).one()
        return f"{self.incarnation}:{row.drops}", row.pack_seq

    def blob_ids_since(self, machine_id: int, epoch: str | None, since: int, after: bytes = b"",
                       limit: int = BLOB_PAGE) -> tuple[str, int, bytes]:
        """A page of the machine's blob IDs in packs indexed after seq `since` of `epoch` (all of
        them when the epoch is another), ascending from after `after`: (current epoch, current
        seq, up to `limit` IDs back to back). A short page is the last.

        An agent keeps the set on disk and asks only for what changed since its last backup,
        so this work is bounded by the change, not by the size of the vault."""
        current, seq = self.blob_epoch(machine_id)
        query = select(cat.blobs.c.blob_id).where(cat.blobs.c.blob_id > after)
        if epoch == current:
            # Only the blobs of the packs indexed since: looked up by pack (the machine's packs
            # are few), not by a walk over all its blob IDs, which the planner would take for
            # the order and which made a backup after a million-file one wait seconds here.
            newer = select(cat.packs.c.id).where(cat.packs.c.machine_id == machine_id, cat.packs.c.seq > since)
            query = query.where(cat.blobs.c.pack_id.in_(newer))
        else:
            query = query.where(cat.blobs.c.machine_id == machine_id)
        with self.engine.connect() as db:
            rows = db.execute(query.order_by(cat.blobs.c.blob_id).limit(min(limit, BLOB_PAGE))).all()
        return current, seq, b"".join(bytes(r[0]) for r in rows)

    def store_pack(self, machine_id: int, name: str, data: bytes | memoryview) -> None:
        """Verifies a pack's name and header, stores it durably, then indexes its blobs."""
        refs = self.verify_pack(name, data)
        self.storage.put(pack_object(name), data)
        self._index_pack(machine_id, name, len(data), refs)

    def spool_dir(self) -> Path:
        """Where a served vault receives uploads before they are verified (same disk as packs)."""
        path = self.root / SPOOL_DIR
        path.mkdir(exist_ok=True)
        return path

    def store_pack_file(self, machine_id: int, name: str, path: Path) -> None:
        """As store_pack, for a pack received into a spool file (which the storage takes over)."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise IntegrityError("empty pack")
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as data:
                refs = self.verify_pack(name, data)
        self.storage.put_file(pack_object(name), path)
        self._index_pack(machine_id, name, size, refs)

    @staticmethod
    def verify_pack(name: str, data: bytes | memoryview | mmap.mmap) -> list[packfmt.BlobRef]:
        if len(data) > MAX_PACK_BYTES:
            raise UsageError(f"pack of {len(data)} bytes is larger than the vault accepts")
        if packfmt.pack_name(data) != name:
            raise IntegrityError("pack content does not match its name (damaged in transit?)")
        return packfmt.read_header(data)

    def _index_pack(self, machine_id: int, name: str, size: int, refs: list[packfmt.BlobRef]) -> None:
        """The pack's index record goes to storage, then its rows to the catalog.

        Both under the catalog's write lock, after the owner check: two uploads of one pack
        (a retry racing its original, or another machine's copy of its bytes) then index it
        once, and an index record in storage is never rewritten to name another owner."""
        with cat.write(self.engine) as db:
            owner = cat.driver_sql(db, "SELECT machine_id FROM packs WHERE name = ?", (name,)).first()
            if owner is not None:
                if owner[0] != machine_id:
                    raise VaultError(f"pack {name} belongs to another machine")
                return  # a retried upload
            uid = self.machine_uid(machine_id, db)
            created = int(time.time())
            # A ref is the row (id, kind, offset, length) that the record and the catalog take.
            self.storage.put(records.index_object(name), records.pack_index(name, uid, size, created, refs))
            hook("pack-index-stored")  # tests: a kill -9 between the record and the catalog's rows
            index_pack_rows(db, machine_id, name, size, created, refs)

    def blob_locations(self, machine_id: int, ids: list[bytes]) -> dict[bytes, BlobLocation]:
        with self.engine.begin() as db:
            rows = cat.find_blobs(db, machine_id, list(ids))
        return {k: BlobLocation(r.pack, r.offset, r.length, r.kind) for k, r in rows.items()}

    def read_range(self, pack: str, offset: int, length: int) -> bytes:
        return self.storage.get_range(pack_object(pack), offset, length)

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[memoryview]:
        """Many blobs in one call: what a served vault answers in one request.

        Ranges that lie together in a pack are read in one go and handed out as views of it:
        a backup packs a folder's small files one after the other, so a restore asks for runs
        of neighbours, and one read per blob cost a system call and a lock each (20,000 for
        the bench's small files). A gap of at most _READ_GAP between two of them is read and
        dropped, a few KiB costing less than another call, while all gaps together keep the
        bytes read within MAX_READ_BYTES (a request of many ranges 16 KiB apart is read one by one)."""
        spare = MAX_READ_BYTES - sum(n for _p, _o, n in ranges)
        if spare < 0:
            raise UsageError(f"at most {MAX_READ_BYTES} bytes in one read")
        parts: list[memoryview] = [memoryview(b"")] * len(ranges)
        order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0], ranges[i][1]))
        start = 0
        while start < len(order):
            pack, first, _n = ranges[order[start]]
            end, stop = first, start
            while stop < len(order):
                p, o, n = ranges[order[stop]]
                gap = max(o - end, 0)
                if p != pack or gap > min(_READ_GAP, spare):
                    break
                spare -= gap
                end = max(end, o + n)
                stop += 1
            data = memoryview(self.read_range(pack, first, end - first))
            for i in order[start:stop]:
                offset = ranges[i][1] - first
                parts[i] = data[offset:offset + ranges[i][2]]
            start = stop
        return parts

    def read_pack(self, pack: str) -> bytes:
        return self.storage.get(pack_object(pack))

    # -- recovery points --------------------------------------------------------------------

    def add_point_delta(self, machine_id: int, kind: str, mode: str, stats: dict[str, Any], manifest: bytes,
                        added: Iterable[bytes], removed: Iterable[bytes], base: str, count: int,
                        point_id: str | None = None, retain_until_ns: int | None = None,
                        checksum: str | None = None) -> PointRecord:
        """`add_point` with the refs given as a change to those of point `base` (this
        machine's, live or soft-deleted): the IDs `added` and `removed`, each ascending. Only
        the added ones are looked up in the blob index, so an optimized backup's work is
        bounded by its change. `count` is how many refs the agent expects the point to have,
        `checksum` (if given) the BLAKE3 of them all, sorted: a delta that does not lead there
        is refused (the agent then sends them all)."""
        row = self._point_row(base)
        if row is None or row.machine_id != machine_id:
            raise VaultError(f"no point {base} of this machine to take the refs from; send them all")
        uid = self.machine_uid(machine_id)
        made = reflist.apply_delta(self.point_refs(uid, base), reflist.ids(reflist.rechunk(removed)),
                                   reflist.ids(self._present(machine_id, added)))
        tally = reflist.Tally()

        def counted() -> Iterator[bytes]:
            yield from tally.passing(reflist.rechunk(made))
            if tally.count != count:
                raise VaultError(f"the point's refs made from point {base} number {tally.count}, not the {count} "
                                 "the agent expects; send them all")
            if checksum is not None and tally.checksum != checksum:
                raise VaultError(f"the point's refs made from point {base} are not those the agent listed "
                                 "(their checksums differ); send them all")
        return self.add_point(machine_id, kind, mode, stats, manifest, counted(), point_id, retain_until_ns,
                              from_delta=True)

    def add_point(self, machine_id: int, kind: str, mode: str, stats: dict[str, Any],
                  manifest: bytes, refs: Iterable[bytes], point_id: str | None = None,
                  retain_until_ns: int | None = None, created_ns: int | None = None,
                  from_delta: bool = False) -> PointRecord:
        """Records a point after checking that every blob it references is this machine's and
        in the vault. `refs` are the blob IDs, ascending, in pieces of any size (streamed:
        a point has no size limit). The agent may choose the ID, so that a retried request
        is harmless. `created_ns` is for an imported seed only (vault/seed_import.py): the
        time the machine made it, so that the vault's order of points stays the sealed one.

        The refs are checked outside the catalog's write lock; the short transaction that
        records the point checks that no prune dropped blobs of the machine meanwhile (else
        it checks again, with the lock held)."""
        pid = point_id or secrets.token_hex(8)
        if not pid or len(pid) > 32 or not all(c in "0123456789abcdef" for c in pid):
            raise UsageError("point IDs are 1 to 32 lowercase hex digits")
        done = self._point_row(pid)
        if done is not None:
            if done.machine_id != machine_id:
                raise VaultError(f"point {pid} belongs to another machine")
            return next(p for p in self.points(machine_id) if p.id == pid)
        uid = self.machine_uid(machine_id)
        drops = self._drops(machine_id)
        fd, spool = tempfile.mkstemp(prefix=".refs-", dir=self.spool_dir())
        try:
            with os.fdopen(fd, "wb") as out:
                # A delta's refs were checked on their way in (add_point_delta): only the IDs it
                # added were looked up, and its order holds by construction.
                count, checksum = reflist.write_refs(refs if from_delta else self._present(machine_id, refs),
                                                     out, ordered=from_delta)
            self.storage.put_file(records.refs_object(uid, pid), Path(spool))
        finally:
            Path(spool).unlink(missing_ok=True)
        created = created_ns or time.time_ns()
        record = {"id": pid, "machine": uid, "created_ns": created, "kind": kind, "mode": mode, "stats": stats,
                  "manifest": manifest, "retain_until_ns": retain_until_ns,
                  "refs": {"count": count, "blake3": checksum}}
        self.storage.put(records.point_object(uid, pid), records.encode_binary(record))
        hook("point-record-stored")  # tests: a kill -9 between the record and the catalog's row
        try:
            with cat.write(self.engine) as db:
                if self._drops(machine_id, db) != drops:
                    for _chunk in self._present(machine_id, self.point_refs(uid, pid, count, checksum), db):
                        pass
                insert_point_row(db, machine_id, record)
                name = db.execute(select(cat.machines.c.name).where(cat.machines.c.id == machine_id)).scalar_one()
        except StrongroomError:
            self.storage.delete(records.point_object(uid, pid))  # never recorded: no trace left
            self.storage.delete(records.refs_object(uid, pid))
            raise
        return PointRecord(pid, name, created, kind, mode, stats, manifest)

    def finish_point(self, machine_id: int, uid: str, point_id: str) -> bool:
        """Records a point from its record in storage, as `add_point` would have once it stored
        it: the end of a recording a kill interrupted (vault/trust.py). False, and nothing done,
        unless the record is sound and every blob of its refs is this machine's in the vault."""
        try:
            record = records.decode_binary(self.storage.get(records.point_object(uid, point_id)), f"point {point_id}")
            if record.get("id") != point_id or record.get("machine") != uid:
                return False
            refs = self.point_refs(uid, point_id, record["refs"]["count"], record["refs"]["blake3"])
            for _chunk in self._present(machine_id, refs):
                pass
        except (StrongroomError, KeyError, TypeError):
            return False
        with cat.write(self.engine) as db:
            insert_point_row(db, machine_id, record)
        return True

    def _point_row(self, point_id: str) -> Any:
        with self.engine.connect() as db:
            return db.execute(select(cat.points.c.machine_id).where(cat.points.c.id == point_id)).first()

    def _drops(self, machine_id: int, db: Any = None) -> int:
        if db is None:
            with self.engine.connect() as conn:
                return self._drops(machine_id, conn)
        return db.execute(select(cat.machines.c.drops).where(cat.machines.c.id == machine_id)).scalar_one()

    def _present(self, machine_id: int, refs: Iterable[bytes], db: Any = None) -> Iterator[bytes]:
        """Passes the refs on in chunks, after checking that the machine has every blob."""
        for chunk, missing in cat.absent_by_chunk(db if db is not None else self.engine, machine_id,
                                                  reflist.rechunk(refs)):
            if missing:
                raise VaultError(f"the point references {len(missing)} blobs this machine does not "
                                 "have in the vault (pruned since the agent last looked?); back up again")
            yield chunk

    def point_refs(self, uid: str, point_id: str, count: int | None = None,
                   checksum: str | None = None) -> Iterator[bytes]:
        """A point's refs from storage, in chunks, verified against its record's checksum."""
        if count is None or checksum is None:
            record = records.decode_binary(self.storage.get(records.point_object(uid, point_id)), f"point {point_id}")
            count, checksum = record["refs"]["count"], record["refs"]["blake3"]
        what = f"the refs of point {point_id}"
        with self.storage.open(records.refs_object(uid, point_id)) as stream:
            yield from reflist.verify_refs(reflist.read_refs(stream, what), count, checksum, what)

    def points(self, machine_id: int, deleted: bool = False) -> list[PointRecord]:
        """The machine's points, newest first; with `deleted`, the soft-deleted ones instead."""
        gone = cat.points.c.deleted_ns.is_not(None) if deleted else cat.points.c.deleted_ns.is_(None)
        q = (select(cat.points, cat.machines.c.name.label("machine"))
             .join(cat.machines, cat.machines.c.id == cat.points.c.machine_id)
             .where(cat.points.c.machine_id == machine_id, gone)
             .order_by(cat.points.c.created_ns.desc()))
        with self.engine.connect() as db:
            return [PointRecord(r.id, r.machine, r.created_ns, r.kind, r.mode, json.loads(r.stats),
                                bytes(r.manifest)) for r in db.execute(q)]

    def undelete_point(self, machine_id: int, point_id: str) -> None:
        with cat.write(self.engine) as db:
            self.storage.delete(records.deleted_object(self.machine_uid(machine_id), point_id))
            done = db.execute(update(cat.points).where(cat.points.c.id == point_id,
                                                       cat.points.c.machine_id == machine_id,
                                                       cat.points.c.deleted_ns.is_not(None))
                              .values(deleted_ns=None)).rowcount
        if not done:
            raise UsageError(f"no deleted point {point_id} of this machine (purged already, or never deleted)")

    # -- policy -----------------------------------------------------------------------------

    def set_policy(self, machine_id: int, doc: dict[str, Any] | None, pin: str | None = None) -> int:
        """Stores a new version of the machine's policy (checked here too) and returns it.
        None stops protection and keeps the data. Shortening retention needs a PIN."""
        if doc is not None:
            doc = check_vault_doc(doc)
        with protection.guarded_write(self.engine) as db:
            protection.guard_policy_change(self, db, machine_id, doc, pin)
            return protection.store_policy(self, db, machine_id, doc)

    def stop_protection(self, machine_id: int, delete_data: bool, pin: str | None = None) -> int:
        """Stops scheduled backups (a policy version without one); with `delete_data`, also
        soft-deletes every point. Returns how many points were deleted."""
        with protection.guarded_write(self.engine) as db:
            deleted = protection.delete_machine_points(self, db, machine_id, pin) if delete_data else 0
            protection.store_policy(self, db, machine_id, None)
        return deleted

    def forget_points(self, machine_id: int, point_ids: list[str], pin: str | None = None) -> dict[str, Any]:
        """Soft-deletes the machine's chosen points (a PIN for `delete-data`); see protection."""
        with protection.guarded_write(self.engine) as db:
            done = protection.forget_points(self, db, machine_id, point_ids, pin)
        return {"deleted": done, "soft_delete_days": protection.settings(self.engine)["soft_delete_days"]}

    def policy(self, machine_id: int) -> tuple[int, dict[str, Any] | None] | None:
        with self.engine.connect() as db:
            return protection.latest_policy(db, machine_id)

    def machines(self) -> list[dict[str, Any]]:
        """Every registered machine with its points, last backup and the bytes its packs hold."""
        sizes = (select(cat.packs.c.machine_id, func.sum(cat.packs.c.size).label("size"))
                 .group_by(cat.packs.c.machine_id).subquery())
        counts = (select(cat.points.c.machine_id, func.count().label("n"),
                         func.max(cat.points.c.created_ns).label("last"))
                  .where(cat.points.c.deleted_ns.is_(None))
                  .group_by(cat.points.c.machine_id).subquery())
        q = (select(cat.machines.c.name, cat.machines.c.registered, sizes.c.size, counts.c.n, counts.c.last)
             .outerjoin(sizes, sizes.c.machine_id == cat.machines.c.id)
             .outerjoin(counts, counts.c.machine_id == cat.machines.c.id)
             .where(cat.machines.c.removed_ns.is_(None))
             .order_by(cat.machines.c.name))
        with self.engine.connect() as db:
            return [{"name": r.name, "registered": r.registered, "points": r.n or 0, "last_backup_ns": r.last,
                     "stored_bytes": int(r.size or 0)} for r in db.execute(q)]

    # -- verification -----------------------------------------------------------------------

    def check_structure(self, machine_id: int | None) -> list[dict[str, Any]]:
        """Problems found without the key: missing or mis-sized packs, point refs that are
        damaged or name blobs the catalog does not have (one machine's, or all)."""
        problems: list[dict[str, Any]] = []
        mine = (lambda col: col == machine_id) if machine_id is not None else (lambda col: True)
        with self.engine.connect() as db:
            packs = db.execute(select(cat.packs.c.name, cat.packs.c.size).where(mine(cat.packs.c.machine_id))).all()
            points = db.execute(select(cat.points.c.id, cat.points.c.machine_id, cat.machines.c.uid)
                                .join(cat.machines, cat.machines.c.id == cat.points.c.machine_id)
                                .where(mine(cat.points.c.machine_id))).all()
        for name, size in packs:
            try:
                actual = self.storage.size(pack_object(name))
            except StrongroomError:
                problems.append({"pack": name, "error": "pack is missing from storage"})
                continue
            if actual != size:
                problems.append({"pack": name, "error": f"pack is {actual} bytes, catalog says {size}"})
        for pid, mid, uid in points:
            try:
                lost = sum(len(missing) for _chunk, missing in
                           cat.absent_by_chunk(self.engine, mid, reflist.rechunk(self.point_refs(uid, pid))))
            except StrongroomError as exc:
                problems.append({"point": pid, "error": f"refs unreadable: {exc}"})
                continue
            if lost:
                problems.append({"point": pid, "error": f"references {lost} blobs missing from the catalog"})
        return problems

    def orphan_packs(self) -> list[str]:
        """Packs in storage that the catalog does not know: left by a backup killed between
        storing a pack and indexing it. Harmless; the prune of retention reclaims them."""
        with self.engine.connect() as db:
            known = {r[0] for r in db.execute(select(cat.packs.c.name))}
        return sorted(name.rsplit("/", 1)[-1] for name, _size in self.storage.list("packs")
                      if name.rsplit("/", 1)[-1] not in known)

    def pack_names(self, machine_id: int | None = None) -> list[str]:
        q = select(cat.packs.c.name)
        if machine_id is not None:
            q = q.where(cat.packs.c.machine_id == machine_id)
        with self.engine.connect() as db:
            return [r[0] for r in db.execute(q)]


def init_catalog(path: Path, vault_id: str) -> Engine:
    """A new catalog for the vault: its tables and the facts that say whose it is."""
    engine = cat.open_engine(f"sqlite:///{path}")
    with cat.write(engine) as db:
        db.execute(insert(cat.catalog_meta), [{"key": "vault_id", "value": vault_id},
                                              {"key": "incarnation", "value": secrets.token_hex(8)}])
    return engine


def index_pack_rows(db: Any, machine_id: int, name: str, size: int, created: int,
                    rows: list[tuple[bytes, int, int, int]]) -> int:
    """Catalog rows for an indexed pack; the machine's pack sequence moves on."""
    (seq,) = cat.driver_sql(db, "UPDATE machines SET pack_seq = pack_seq + 1 WHERE id = ? RETURNING pack_seq",
                            (machine_id,)).one()
    (pack_id,) = cat.driver_sql(db, "INSERT INTO packs (name, machine_id, size, created, seq) VALUES (?, ?, ?, ?, ?) "
                                "RETURNING id", (name, machine_id, size, created, seq)).one()
    cat.insert_blobs(db, machine_id, pack_id, rows)
    return pack_id


def insert_point_row(db: Any, machine_id: int, record: dict[str, Any], deleted_ns: int | None = None) -> None:
    """The catalog row of a point whose record is in storage."""
    db.execute(insert(cat.points).values(
        id=record["id"], machine_id=machine_id, created_ns=record["created_ns"], kind=record["kind"],
        mode=record["mode"], stats=json.dumps(record["stats"]), manifest=record["manifest"],
        refs_count=record["refs"]["count"], retain_until_ns=record["retain_until_ns"], deleted_ns=deleted_ns))
