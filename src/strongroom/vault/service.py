"""The vault service: the domain rules over storage and catalog, with no knowledge of keys.

One service, two ways in: called in-process for an embedded vault, or behind the HTTP API
for a served one. Every agent-facing call is made on behalf of a machine, authenticated by
the token it got at registration.
"""

from __future__ import annotations

import hmac
import json
import mmap
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from sqlalchemy import Engine, func, insert, select, update

from strongroom import packs as packfmt
from strongroom.credentials import Credentials
from strongroom.errors import (
    CredentialsError,
    IntegrityError,
    StrongroomError,
    UsageError,
    VaultError,
)
from strongroom.fsutil import write_private
from strongroom.policy import check_vault_doc
from strongroom.vault import catalog as cat
from strongroom.vault import privacy, protection
from strongroom.vault.jobs import JobBook
from strongroom.vault.storage.fs import FolderStorage

VAULT_FILE = "vault.json"
ADMIN_TOKEN_FILE = "admin.token"
SPOOL_DIR = "incoming"
# The largest pack accepted: data packs are ~8 MiB, but one directory of a million entries
# makes a tree blob of ~100 MB, and that travels in a pack of its own.
MAX_PACK_BYTES = 256 * 1024 * 1024
MAX_READ_BYTES = 64 * 1024 * 1024  # one batched read: bounded memory in the vault


def _hash_secret(secret: str) -> str:
    return blake3.blake3(secret.encode()).hexdigest()


def pack_object(name: str) -> str:
    return f"packs/{name[:2]}/{name}"


@dataclass(frozen=True)
class PointRecord:
    id: str
    machine: str
    created_ns: int
    kind: str
    mode: str
    stats: dict[str, Any]
    manifest: bytes


@dataclass(frozen=True)
class BlobLocation:
    pack: str
    offset: int
    length: int
    kind: int


class VaultService:
    def __init__(self, root: Path) -> None:
        meta_path = root / VAULT_FILE
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise VaultError(f"no Strongroom vault at {root}") from None
        except (OSError, ValueError) as exc:
            raise VaultError(f"cannot read the vault at {root}: {getattr(exc, 'strerror', None) or exc}") from None
        self.root = root
        privacy.lock_down(root)
        self.id: str = self.meta["id"]
        self.storage = FolderStorage(root)
        self.engine: Engine = cat.open_engine(f"sqlite:///{root / 'catalog.sqlite'}")
        self.jobs = JobBook(self.engine)
        # token hash -> machine; machines are never renamed or removed while a vault runs
        self.known_tokens: dict[str, tuple[int, str]] = {}

    @classmethod
    def create(cls, root: Path) -> "VaultService":
        if root.exists() and any(root.iterdir()):
            raise UsageError(f"{root} exists and is not empty")
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "packs").mkdir(mode=0o700)
        write_private(root / ADMIN_TOKEN_FILE, (secrets.token_urlsafe(32) + "\n").encode())
        protection.make_pin_secret(root)
        meta = {"format": "strongroom-vault", "version": 1, "id": str(uuid.uuid4()), "created": int(time.time())}
        write_private(root / VAULT_FILE, json.dumps(meta, indent=1).encode())
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

    def register(self, creds: Credentials, machine: str, keyfile: str) -> str:
        """Registers a machine and returns its token; the newest unexpired credentials only."""
        if creds.vault_id != self.id:
            raise CredentialsError("these credentials belong to another vault")
        if not machine or len(machine) > 255 or "/" in machine:
            raise UsageError(f"invalid machine name {machine!r}")
        token = secrets.token_urlsafe(32)
        with cat.write(self.engine) as db:
            newest = db.execute(select(cat.credentials).order_by(cat.credentials.c.id.desc()).limit(1)).first()
            row = db.execute(select(cat.credentials).where(cat.credentials.c.id == creds.credential_id)).first()
            if row is None or not hmac.compare_digest(row.secret_hash, _hash_secret(creds.secret)):
                raise CredentialsError("these credentials were not issued by this vault")
            if newest is not None and newest.id != row.id:
                raise CredentialsError("these credentials were superseded by newer ones; use the newest file")
            if row.expires <= time.time():
                raise CredentialsError("these vault credentials have expired; download new ones")
            if db.execute(select(cat.machines.c.id).where(cat.machines.c.name == machine)).first():
                raise CredentialsError(f"a machine named {machine!r} is already registered with this vault")
            db.execute(insert(cat.machines).values(name=machine, registered=int(time.time()),
                                                   keyfile=keyfile, token_hash=_hash_secret(token)))
        return token

    def authenticate(self, token: str) -> tuple[int, str]:
        """The (id, name) of the machine holding this token.

        Tokens are compared by their hashes in constant time; a token seen before is found
        by its hash in memory, which tells a timing observer nothing about other tokens
        (it would have to guess a 256-bit secret whose hash matches)."""
        wanted = _hash_secret(token)
        known = self.known_tokens.get(wanted)
        if known is not None:
            return known
        with self.engine.connect() as db:
            for mid, name, th in db.execute(select(cat.machines.c.id, cat.machines.c.name, cat.machines.c.token_hash)):
                if hmac.compare_digest(th, wanted):
                    self.known_tokens[wanted] = (mid, name)
                    return mid, name
        raise VaultError("this machine is not registered with the vault (its token was refused)")

    def machine_id(self, name: str) -> int:
        with self.engine.connect() as db:
            row = db.execute(select(cat.machines.c.id).where(cat.machines.c.name == name)).first()
        if row is None:
            raise UsageError(f"no machine named {name!r} is registered with this vault")
        return row.id

    def keyfile(self, machine_id: int) -> str:
        with self.engine.connect() as db:
            return db.execute(select(cat.machines.c.keyfile).where(cat.machines.c.id == machine_id)).scalar_one()

    # -- packs and blobs --------------------------------------------------------------------

    def blob_ids(self, machine_id: int) -> set[bytes]:
        q = (select(cat.blobs.c.blob_id).join(cat.packs, cat.packs.c.id == cat.blobs.c.pack_id)
             .where(cat.packs.c.machine_id == machine_id))
        with self.engine.connect() as db:
            return {bytes(r[0]) for r in db.execute(q)}

    def store_pack(self, machine_id: int, name: str, data: bytes | memoryview) -> None:
        """Verifies a pack's name and header, stores it durably, then indexes its blobs."""
        refs = self._verify_pack(name, data)
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
                refs = self._verify_pack(name, data)
        self.storage.put_file(pack_object(name), path)
        self._index_pack(machine_id, name, size, refs)

    @staticmethod
    def _verify_pack(name: str, data: bytes | memoryview | mmap.mmap) -> list[packfmt.BlobRef]:
        if len(data) > MAX_PACK_BYTES:
            raise UsageError(f"pack of {len(data)} bytes is larger than the vault accepts")
        if packfmt.pack_name(data) != name:
            raise IntegrityError("pack content does not match its name (damaged in transit?)")
        return packfmt.read_header(data)

    def _index_pack(self, machine_id: int, name: str, size: int, refs: list[packfmt.BlobRef]) -> None:
        with cat.write(self.engine) as db:
            existing = db.execute(select(cat.packs.c.id).where(cat.packs.c.name == name)).first()
            if existing:
                return
            pid = db.execute(insert(cat.packs).values(name=name, machine_id=machine_id, size=size,
                                                      created=int(time.time()))).inserted_primary_key[0]
            if refs:
                cat.insert_blobs(db, pid, [(r.blob_id, r.kind, r.offset, r.length) for r in refs])

    def blob_locations(self, ids: list[bytes]) -> dict[bytes, BlobLocation]:
        with self.engine.begin() as db:
            rows = cat.find_blobs(db, list(ids))
        return {k: BlobLocation(r.pack, r.offset, r.length, r.kind) for k, r in rows.items()}

    def read_range(self, pack: str, offset: int, length: int) -> bytes:
        return self.storage.get_range(pack_object(pack), offset, length)

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        """Many blobs in one call: what a served vault answers in one request."""
        if sum(n for _p, _o, n in ranges) > MAX_READ_BYTES:
            raise UsageError(f"at most {MAX_READ_BYTES} bytes in one read")
        return [self.read_range(p, o, n) for p, o, n in ranges]

    def read_pack(self, pack: str) -> bytes:
        return self.storage.get(pack_object(pack))

    # -- recovery points --------------------------------------------------------------------

    def add_point(self, machine_id: int, kind: str, mode: str, stats: dict[str, Any],
                  manifest: bytes, refs: list[bytes], point_id: str | None = None,
                  retain_until_ns: int | None = None) -> PointRecord:
        """Records a point after checking that every blob it references is this machine's and
        in the vault. The agent may choose the ID, so that a retried request is harmless."""
        pid = point_id or secrets.token_hex(8)
        if len(pid) > 32:
            raise UsageError("point IDs are at most 32 characters")
        with cat.write(self.engine) as db:
            if point_id is not None:
                done = db.execute(select(cat.points.c.machine_id).where(cat.points.c.id == pid)).first()
                if done is not None:
                    if done.machine_id != machine_id:
                        raise VaultError(f"point {pid} belongs to another machine")
                    return next(p for p in self.points(machine_id) if p.id == pid)
            rows = cat.find_blobs(db, refs)
            missing = len(set(refs)) - len(rows)
            if missing:
                raise VaultError(f"the point references {missing} blobs the vault does not have")
            if any(r.machine_id != machine_id for r in rows.values()):
                raise VaultError("a point may reference only its own machine's blobs")
            created = time.time_ns()
            db.execute(insert(cat.points).values(
                id=pid, machine_id=machine_id, created_ns=created, kind=kind, mode=mode,
                stats=json.dumps(stats), manifest=manifest, refs=cat.encode_refs(r.row_id for r in rows.values()),
                retain_until_ns=retain_until_ns))
            name = db.execute(select(cat.machines.c.name).where(cat.machines.c.id == machine_id)).scalar_one()
        return PointRecord(pid, name, created, kind, mode, stats, manifest)

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
            return protection.store_policy(db, machine_id, doc)

    def stop_protection(self, machine_id: int, delete_data: bool, pin: str | None = None) -> int:
        """Stops scheduled backups (a policy version without one); with `delete_data`, also
        soft-deletes every point. Returns how many points were deleted."""
        with protection.guarded_write(self.engine) as db:
            deleted = protection.delete_machine_points(self, db, machine_id, pin) if delete_data else 0
            protection.store_policy(db, machine_id, None)
        return deleted

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
             .order_by(cat.machines.c.name))
        with self.engine.connect() as db:
            return [{"name": r.name, "registered": r.registered, "points": r.n or 0, "last_backup_ns": r.last,
                     "stored_bytes": int(r.size or 0)} for r in db.execute(q)]

    # -- verification -----------------------------------------------------------------------

    def check_structure(self) -> list[dict[str, Any]]:
        """Problems found without the key: missing or mis-sized packs, dangling point refs."""
        problems: list[dict[str, Any]] = []
        with self.engine.connect() as db:
            known_blobs = {r[0] for r in db.execute(select(cat.blobs.c.id))}
            for name, size in db.execute(select(cat.packs.c.name, cat.packs.c.size)):
                try:
                    actual = self.storage.size(pack_object(name))
                except StrongroomError:
                    problems.append({"pack": name, "error": "pack is missing from storage"})
                    continue
                if actual != size:
                    problems.append({"pack": name, "error": f"pack is {actual} bytes, catalog says {size}"})
            for pid, refs in db.execute(select(cat.points.c.id, cat.points.c.refs)):
                lost = [r for r in cat.decode_refs(refs) if r not in known_blobs]
                if lost:
                    problems.append({"point": pid, "error": f"references {len(lost)} blobs missing from the catalog"})
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

