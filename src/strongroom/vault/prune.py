"""Pruning, in the vault and without the key: expire points by each machine's policy, purge
soft-deleted points after the soft-delete period (14 days unless the vault says more), and
reclaim space: packs no point needs are deleted, packs mostly dead are repacked.

Safety, by construction:
- Prune runs only on a catalog it can trust (vault/trust.py): never on a missing, empty,
  unreadable or stale one, whose word would be "nothing is needed".
- A machine is pruned under the same lease as its backups (a `prune` job), renewed while
  prune runs, and its blobs are its own (blob rows are unique per machine).
- Liveness is computed by streaming: the sorted refs of every point the machine keeps are
  merged and joined with its blob rows sorted by ID, so memory does not grow with blobs.
- Before a pack is dropped or rewritten, the transaction that does it checks again that no
  point recorded since prune started needs a blob it drops, and bumps the machine's drop
  counter, which makes a point being recorded at that moment check its refs again
  (VaultService.add_point). Storage follows the catalog in an order a crash cannot break:
  a new pack and its index record are stored before the catalog points at them, and an old
  one is deleted only after the catalog stopped pointing at it.
- An orphan (a pack in storage the catalog does not know) is deleted only when it is old,
  has no index record, and holds no blob that a point needs and the catalog cannot find (a
  pack whose index record a killed store left is taken in by trust.py, not deleted here).
  A prune holds the vault's prune lock (vault/jobs.py): one at a time, and a prune job still
  "running" has died, so its leases are freed at once.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import blake3
from sqlalchemy import column, delete, select, table, update

from strongroom import packs as packfmt
from strongroom.errors import IntegrityError, MissingObject, VaultError
from strongroom.testhook import hook
from strongroom.vault import catalog as cat
from strongroom.vault import protection, records, trust
from strongroom.vault import refs as reflist
from strongroom.vault.retention import Retention, expired_per_kind
from strongroom.vault.service import VaultService, index_pack_rows, pack_object
from strongroom.vault.wire import ID_SIZE

REPACK_BELOW = 0.5  # repack a pack when less than this share of its bytes is still needed
ORPHAN_AGE_S = 86400  # an unindexed pack younger than this may be an upload in progress
RENEW_EVERY_S = 20.0  # the lease lasts 90 s: renew well within it
_MERGE_FAN_IN = 64  # refs streams merged at once (each an open file)
_MAX_DANGLING = 1_000_000  # needed blobs the catalog cannot find, remembered to spare orphans
_LIVE_ROWS = table("live_rows", column("id"))  # temporary: the blob rows some point needs


@dataclass
class PruneReport:
    dry_run: bool
    points_expired: list[str] = field(default_factory=list)
    points_purged: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    packs_repacked: int = 0
    orphans_deleted: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    busy_machines: list[str] = field(default_factory=list)
    packs_kept_for_new_points: int = 0  # a backup recorded a point needing them meanwhile
    damaged_packs: list[str] = field(default_factory=list)  # not what their name says: left as they are

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Lease:
    """The machine's data lease, held by a vault-side job (a prune; a seed's import, whose
    job `job_id` a re-run takes over) and renewed as it goes on."""

    def __init__(self, service: VaultService, machine_id: int, dry_run: bool, job_id: str | None = None,
                 kind: str = "prune") -> None:
        self.service, self.machine_id, self.job = service, machine_id, job_id or secrets.token_hex(8)
        self.active = not dry_run
        if self.active:
            service.jobs.take_over(machine_id, self.job, kind)
        self.renewed = time.monotonic()

    def keep(self) -> None:
        if self.active and time.monotonic() - self.renewed > RENEW_EVERY_S:
            self.service.jobs.renew(self.machine_id, self.job)
            self.renewed = time.monotonic()

    def finish(self, status: str, message: str = "", **fields: Any) -> None:
        if self.active:
            self.service.jobs.finish(self.machine_id, self.job, status, message=message, **fields)


def prune(service: VaultService, *, dry_run: bool = False, now_ns: int | None = None,
          repack_below: float = REPACK_BELOW) -> PruneReport:
    if dry_run:
        return _prune(service, True, now_ns, repack_below)
    with service.jobs.pruning():  # one at a time; a killed one's leases freed (vault/jobs.py)
        return _prune(service, False, now_ns, repack_below)


def _prune(service: VaultService, dry_run: bool, now_ns: int | None, repack_below: float) -> PruneReport:
    now_ns = now_ns or time.time_ns()
    trust.ensure_trusted(service, now_ns)
    grace_days = protection.settings(service.engine)["soft_delete_days"]
    report = PruneReport(dry_run, bytes_before=_stored_bytes(service))
    dangling: set[bytes] = set()
    with service.engine.connect() as db:
        machines = db.execute(select(cat.machines.c.id, cat.machines.c.name, cat.machines.c.uid)).all()
    for mid, name, uid in machines:
        try:
            lease = Lease(service, mid, dry_run)
        except VaultError:
            report.busy_machines.append(name)
            continue
        try:
            _prune_machine(service, mid, uid, report, now_ns, grace_days, repack_below, lease, dangling)
        except BaseException as exc:
            lease.finish("failed", str(exc))
            raise
        lease.finish("completed")
    if not dry_run and len(dangling) < _MAX_DANGLING:
        report.orphans_deleted = _delete_old_orphans(service, now_ns, dangling)
    report.bytes_after = _stored_bytes(service) if not dry_run else report.bytes_before
    return report


def _stored_bytes(service: VaultService) -> int:
    return sum(size for _name, size in service.storage.list("packs"))


def _prune_machine(service: VaultService, mid: int, uid: str, report: PruneReport, now_ns: int, grace_days: int,
                   repack_below: float, lease: Lease, dangling: set[bytes]) -> None:
    expired_now = _expire(service, mid, now_ns)
    if expired_now and not report.dry_run:
        protection.mark_deleted(service, mid, expired_now, now_ns)
        with cat.write(service.engine) as db:
            db.execute(update(cat.points).where(cat.points.c.id.in_(expired_now)).values(deleted_ns=now_ns))
    report.points_expired += expired_now
    purge_before = now_ns - grace_days * 86400 * 10**9
    with cat.write(service.engine) as db:
        rows = db.execute(select(cat.points.c.id, cat.points.c.deleted_ns)
                          .where(cat.points.c.machine_id == mid)).all()
        purged = [r.id for r in rows if r.deleted_ns is not None and r.deleted_ns < purge_before]
        if purged and not report.dry_run:
            db.execute(delete(cat.points).where(cat.points.c.id.in_(purged)))
    if not report.dry_run:
        for pid in purged:
            trust.delete_point_records(service, uid, pid)
    report.points_purged += purged
    # Soft-deleted points keep their data: they can be undeleted until they are purged.
    kept = [r.id for r in rows if r.id not in purged]
    _reclaim(service, mid, uid, kept, report, repack_below, now_ns, lease, dangling)


def _expire(service: VaultService, mid: int, now_ns: int) -> list[str]:
    policy = service.policy(mid)
    if policy is None or policy[1] is None:
        return []  # no policy, or protection stopped with the data kept: kept for good
    doc = policy[1]
    tz = ZoneInfo(doc.get("timezone", "UTC"))
    with service.engine.connect() as db:
        rows = db.execute(select(cat.points.c.id, cat.points.c.created_ns, cat.points.c.retain_until_ns,
                                 cat.points.c.kind)
                          .where(cat.points.c.machine_id == mid, cat.points.c.deleted_ns.is_(None))).all()
    alive = {r.id: r.created_ns for r in rows}
    floors = {r.id: r.retain_until_ns for r in rows if r.retain_until_ns}
    kinds = {r.id: r.kind for r in rows}
    return sorted(expired_per_kind(alive, kinds, Retention(**doc["retention"]),
                                   datetime.fromtimestamp(now_ns / 1e9, tz), floors))


# -- liveness, streamed -------------------------------------------------------------------------

def _live_ids(service: VaultService, uid: str, point_ids: list[str], scratch: str, lease: Lease) -> Iterator[bytes]:
    """The distinct blob IDs the points reference, ascending; merged a bounded number of
    streams at a time (each an open file), through scratch files when there are many."""
    sources: list[Callable[[], Iterator[bytes]]] = [
        (lambda p=p: reflist.ids(service.point_refs(uid, p))) for p in point_ids]
    while len(sources) > _MERGE_FAN_IN:
        level = []
        for i in range(0, len(sources), _MERGE_FAN_IN):
            fd, path = tempfile.mkstemp(prefix=".merge-", dir=scratch)
            with os.fdopen(fd, "wb") as out:
                for blob_id in reflist.merged([open_ids() for open_ids in sources[i:i + _MERGE_FAN_IN]]):
                    out.write(blob_id)
                    lease.keep()
            level.append(lambda path=path: _raw_ids(path))
        sources = level
    yield from reflist.merged([open_ids() for open_ids in sources])


def _raw_ids(path: str) -> Iterator[bytes]:
    try:
        with open(path, "rb", buffering=1024 * 1024) as f:
            while blob_id := f.read(ID_SIZE):
                yield blob_id
    finally:
        os.unlink(path)


class _PackUse:
    __slots__ = ("live", "total")

    def __init__(self) -> None:
        self.live = 0
        self.total = 0


def _reclaim(service: VaultService, mid: int, uid: str, point_ids: list[str], report: PruneReport,
             repack_below: float, start_ns: int, lease: Lease, dangling: set[bytes]) -> None:
    use: dict[int, _PackUse] = {}
    with service.engine.connect() as db:
        db.exec_driver_sql("CREATE TEMPORARY TABLE IF NOT EXISTS live_rows (id INTEGER PRIMARY KEY)")
        db.exec_driver_sql("DELETE FROM live_rows")
        rows = db.execute(select(cat.blobs.c.id, cat.blobs.c.blob_id, cat.blobs.c.pack_id, cat.blobs.c.length)
                          .where(cat.blobs.c.machine_id == mid).order_by(cat.blobs.c.blob_id))
        live = _live_ids(service, uid, point_ids, str(service.spool_dir()), lease)
        wanted = next(live, None)
        batch: list[tuple[int]] = []
        while chunk := rows.fetchmany(10_000):
            lease.keep()
            for row_id, blob_id, pack_id, length in chunk:
                blob_id = bytes(blob_id)
                while wanted is not None and wanted < blob_id:
                    if len(dangling) < _MAX_DANGLING:
                        dangling.add(wanted)  # needed, and no row of this machine has it
                    wanted = next(live, None)
                pack = use.setdefault(pack_id, _PackUse())
                pack.total += length
                if wanted == blob_id:
                    pack.live += length
                    batch.append((row_id,))
                    wanted = next(live, None)
            if batch:
                db.exec_driver_sql("INSERT INTO live_rows (id) VALUES (?)", batch)
                batch = []
        while wanted is not None:
            if len(dangling) < _MAX_DANGLING:
                dangling.add(wanted)
            wanted = next(live, None)
        packs = {p.id: p for p in db.execute(select(cat.packs.c.id, cat.packs.c.name, cat.packs.c.size)
                                             .where(cat.packs.c.machine_id == mid))}
        db.commit()  # no read transaction held while packs drop: the WAL can be checkpointed
        for pack_id, pack in packs.items():
            lease.keep()
            counts = use.get(pack_id, _PackUse())
            if counts.live == 0:
                report.packs_deleted += 1
                if not report.dry_run:
                    _drop_pack(service, mid, uid, pack, start_ns, report)
            elif counts.live < repack_below * counts.total:
                report.packs_repacked += 1
                if not report.dry_run:
                    needed = db.execute(select(cat.blobs).where(
                        cat.blobs.c.pack_id == pack_id, cat.blobs.c.id.in_(select(_LIVE_ROWS.c.id)))).all()
                    db.commit()
                    _repack(service, mid, uid, pack, needed, start_ns, report)
        db.exec_driver_sql("DELETE FROM live_rows")


def _needed_since(service: VaultService, db: Any, mid: int, uid: str, dropped: list[bytes], start_ns: int) -> bool:
    """Whether a point recorded since prune started references any of the dropped blob IDs;
    run inside the transaction that drops them, so no point can slip in between."""
    dropped = sorted(dropped)
    if not dropped:
        return False
    new = db.execute(select(cat.points.c.id).where(cat.points.c.machine_id == mid,
                                                   cat.points.c.created_ns >= start_ns)).scalars().all()
    for pid in new:
        want = iter(dropped)
        target = next(want)
        for blob_id in reflist.ids(service.point_refs(uid, pid)):
            while target < blob_id:
                target = next(want, None)
                if target is None:
                    break
            if target is None:
                break
            if target == blob_id:
                return True
    return False


def _bump_drops(db: Any, mid: int) -> None:
    db.execute(update(cat.machines).where(cat.machines.c.id == mid).values(drops=cat.machines.c.drops + 1))


def _drop_pack(service: VaultService, mid: int, uid: str, pack: Any, start_ns: int, report: PruneReport) -> None:
    record = _take_index_record(service, pack.name)
    with cat.write(service.engine) as db:
        ids = [bytes(r[0]) for r in db.execute(select(cat.blobs.c.blob_id).where(cat.blobs.c.pack_id == pack.id))]
        kept = _needed_since(service, db, mid, uid, ids, start_ns)
        if not kept:
            db.execute(delete(cat.blobs).where(cat.blobs.c.pack_id == pack.id))
            db.execute(delete(cat.packs).where(cat.packs.c.id == pack.id))
            _bump_drops(db, mid)
    if kept:
        _put_back(service, pack.name, record)
        report.packs_deleted -= 1
        report.packs_kept_for_new_points += 1
        return
    hook("prune-drop-indexed")  # tests: a kill -9 at each step of a prune
    service.storage.delete(pack_object(pack.name))


def _repack(service: VaultService, mid: int, uid: str, pack: Any, needed: list[Any], start_ns: int,
            report: PruneReport) -> None:
    """Copies the needed envelopes (sealed, opaque here) into a new pack, stored with its
    index record before the catalog moves the blob rows to it. Not from a damaged pack: the
    new pack's name would vouch for damaged envelopes, which the vault's own check (by the
    packs' names, without the key) could no longer see; the damaged one stays, for `check`."""
    if not _intact(service, pack.name):
        report.packs_repacked -= 1
        report.damaged_packs.append(pack.name)
        return
    builder = packfmt.PackBuilder()
    for b in needed:
        builder.add(bytes(b.blob_id), b.kind, service.read_range(pack.name, b.offset, b.length))
    name, data, refs = builder.finish()
    created = int(time.time())
    rows = [(r.blob_id, r.kind, r.offset, r.length) for r in refs]
    service.storage.put(pack_object(name), data)  # its index record once the catalog holds it
    hook("prune-repack-stored")
    record = _take_index_record(service, pack.name)
    keep = {bytes(b.blob_id) for b in needed}
    with cat.write(service.engine) as db:
        dropped = [bytes(r[0]) for r in db.execute(select(cat.blobs.c.blob_id).where(cat.blobs.c.pack_id == pack.id))
                   if bytes(r[0]) not in keep]
        if _needed_since(service, db, mid, uid, dropped, start_ns):
            abandoned = True
        else:
            abandoned = False
            db.execute(delete(cat.blobs).where(cat.blobs.c.pack_id == pack.id))
            db.execute(delete(cat.packs).where(cat.packs.c.id == pack.id))
            index_pack_rows(db, mid, name, len(data), created, rows)
            _bump_drops(db, mid)
    if abandoned:
        _put_back(service, pack.name, record)
        report.packs_repacked -= 1
        report.packs_kept_for_new_points += 1
        service.storage.delete(pack_object(name))
        return
    service.storage.put(records.index_object(name), records.pack_index(name, uid, len(data), created, rows))
    hook("prune-repack-indexed")
    service.storage.delete(pack_object(pack.name))


# A pack's index record goes before the catalog lets the pack go, and comes back if it keeps it;
# a new pack's is written once the catalog holds it. Killed anywhere, a prune leaves a pack the
# catalog knows without its record (`vault rebuild-catalog` reads the pack's own header) or a
# pack nobody knows, which the orphans' rule deletes when old: never an index record the catalog
# does not know, which trust.py rightly takes, 15 minutes on, for a catalog older than storage,
# and then refuses every prune until the catalog is rebuilt.
def _take_index_record(service: VaultService, pack: str) -> bytes | None:
    try:
        record = service.storage.get(records.index_object(pack))
    except MissingObject:
        return None
    service.storage.delete(records.index_object(pack))
    return record


def _put_back(service: VaultService, pack: str, record: bytes | None) -> None:
    if record is not None:
        service.storage.put(records.index_object(pack), record)


def _intact(service: VaultService, name: str) -> bool:
    """Whether a pack still is what its name says (the BLAKE3 of its bytes), read in pieces."""
    digest = blake3.blake3()
    with service.storage.open(pack_object(name)) as stream:
        while piece := stream.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest() == name


def _delete_old_orphans(service: VaultService, now_ns: int, dangling: set[bytes]) -> int:
    indexed = {records.last_part(n) for n, _size in service.storage.list(records.INDEX)}
    count = 0
    for name in service.orphan_packs():
        if name in indexed or now_ns / 1e9 - service.storage.modified(pack_object(name)) <= ORPHAN_AGE_S:
            continue
        try:
            held = {r.blob_id for r in packfmt.read_header(service.read_pack(name))}
        except IntegrityError:
            held = set()  # not a readable pack: nothing in it can be used
        if held & dangling:
            continue  # a point needs a blob that only this pack holds: `vault rebuild-catalog` takes it in
        service.storage.delete(pack_object(name))
        count += 1
    return count
