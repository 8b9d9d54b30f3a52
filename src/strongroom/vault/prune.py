"""Pruning, in the vault and without the key: expire points by each machine's policy, purge
soft-deleted points after the soft-delete period (14 days unless the vault says more), and
reclaim space from the pack maps and the per-point blob sets: packs no point needs are
deleted, packs mostly dead are repacked.

Safety: a machine is pruned under the same lease as its backups (a `prune` job), so no
backup of that machine runs meanwhile, and its packs are its own (blob IDs are keyed per
machine). Storage changes follow the catalog in an order a crash cannot break: a new pack
is stored before the catalog points at it, and an old one is deleted only after the catalog
stopped pointing at it; what a crash leaves is an unindexed pack, deleted a day later.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select, update

from strongroom import packs as packfmt
from strongroom.errors import VaultError
from strongroom.vault import catalog as cat
from strongroom.vault import protection
from strongroom.vault.retention import Retention, expired
from strongroom.vault.service import VaultService, pack_object

REPACK_BELOW = 0.5  # repack a pack when less than this share of its bytes is still needed
ORPHAN_AGE_S = 86400  # an unindexed pack younger than this may be an upload in progress


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune(service: VaultService, *, dry_run: bool = False, now_ns: int | None = None,
          repack_below: float = REPACK_BELOW) -> PruneReport:
    now_ns = now_ns or time.time_ns()
    grace_days = protection.settings(service.engine)["soft_delete_days"]
    report = PruneReport(dry_run, bytes_before=_stored_bytes(service))
    with service.engine.connect() as db:
        machines = db.execute(select(cat.machines.c.id, cat.machines.c.name)).all()
    for mid, name in machines:
        job = secrets.token_hex(8)
        if not dry_run:
            try:
                service.jobs.start(mid, job, "prune")
            except VaultError:
                report.busy_machines.append(name)
                continue
        try:
            _prune_machine(service, mid, report, now_ns, grace_days, repack_below)
        except BaseException as exc:
            if not dry_run:
                service.jobs.finish(mid, job, "failed", message=str(exc))
            raise
        if not dry_run:
            service.jobs.finish(mid, job, "completed")
    if not dry_run:
        report.orphans_deleted = _delete_old_orphans(service, now_ns)
    report.bytes_after = _stored_bytes(service) if not dry_run else report.bytes_before
    return report


def _stored_bytes(service: VaultService) -> int:
    return sum(size for _name, size in service.storage.list("packs"))


def _prune_machine(service: VaultService, mid: int, report: PruneReport, now_ns: int, grace_days: int,
                   repack_below: float) -> None:
    expired_now = _expire(service, mid, now_ns)
    if expired_now and not report.dry_run:
        with cat.write(service.engine) as db:
            db.execute(update(cat.points).where(cat.points.c.id.in_(expired_now)).values(deleted_ns=now_ns))
    report.points_expired += expired_now
    purge_before = now_ns - grace_days * 86400 * 10**9
    with cat.write(service.engine) as db:
        rows = db.execute(select(cat.points.c.id, cat.points.c.refs, cat.points.c.deleted_ns)
                          .where(cat.points.c.machine_id == mid)).all()
        purged = [r.id for r in rows if r.deleted_ns is not None and r.deleted_ns < purge_before]
        if purged and not report.dry_run:
            db.execute(delete(cat.points).where(cat.points.c.id.in_(purged)))
    report.points_purged += purged
    # Soft-deleted points keep their data: they can be undeleted until they are purged.
    live: set[int] = set()
    for r in rows:
        if r.id not in purged:
            live.update(cat.decode_refs(r.refs))
    _reclaim(service, mid, live, report, repack_below)


def _expire(service: VaultService, mid: int, now_ns: int) -> list[str]:
    policy = service.policy(mid)
    if policy is None or policy[1] is None:
        return []  # no policy, or protection stopped with the data kept: kept for good
    doc = policy[1]
    tz = ZoneInfo(doc.get("timezone", "UTC"))
    with service.engine.connect() as db:
        rows = db.execute(select(cat.points.c.id, cat.points.c.created_ns, cat.points.c.retain_until_ns)
                          .where(cat.points.c.machine_id == mid, cat.points.c.deleted_ns.is_(None))).all()
    alive = {r.id: r.created_ns for r in rows}
    floors = {r.id: r.retain_until_ns for r in rows if r.retain_until_ns}
    return sorted(expired(alive, Retention(**doc["retention"]), datetime.fromtimestamp(now_ns / 1e9, tz), floors))


def _reclaim(service: VaultService, mid: int, live: set[int], report: PruneReport, repack_below: float) -> None:
    with service.engine.connect() as db:
        packs = db.execute(select(cat.packs.c.id, cat.packs.c.name, cat.packs.c.size)
                           .where(cat.packs.c.machine_id == mid)).all()
        blobs = db.execute(select(cat.blobs.c.id, cat.blobs.c.pack_id, cat.blobs.c.blob_id, cat.blobs.c.kind,
                                  cat.blobs.c.offset, cat.blobs.c.length)
                           .where(cat.blobs.c.pack_id.in_([p.id for p in packs]))).all() if packs else []
    by_pack: dict[int, list[Any]] = {}
    for b in blobs:
        by_pack.setdefault(b.pack_id, []).append(b)
    for pack in packs:
        contents = by_pack.get(pack.id, [])
        needed = [b for b in contents if b.id in live]
        if not needed:
            report.packs_deleted += 1
            if not report.dry_run:
                _drop_pack(service, pack.id, pack.name)
        elif sum(b.length for b in needed) < repack_below * sum(b.length for b in contents):
            report.packs_repacked += 1
            if not report.dry_run:
                _repack(service, mid, pack, needed)


def _drop_pack(service: VaultService, pack_id: int, name: str) -> None:
    with cat.write(service.engine) as db:
        db.execute(delete(cat.blobs).where(cat.blobs.c.pack_id == pack_id))
        db.execute(delete(cat.packs).where(cat.packs.c.id == pack_id))
    service.storage.delete(pack_object(name))


def _repack(service: VaultService, mid: int, pack: Any, needed: list[Any]) -> None:
    """Copies the needed envelopes (sealed, opaque here) into a new pack; blob rows keep their
    ids, which the points' refs name, and only move to the new place."""
    builder = packfmt.PackBuilder()
    for b in needed:
        builder.add(bytes(b.blob_id), b.kind, service.read_range(pack.name, b.offset, b.length))
    name, data, refs = builder.finish()
    service.storage.put(pack_object(name), data)
    with cat.write(service.engine) as db:
        new_id = db.execute(insert(cat.packs).values(name=name, machine_id=mid, size=len(data),
                                                     created=int(time.time()))).inserted_primary_key[0]
        for b, ref in zip(needed, refs):
            db.execute(update(cat.blobs).where(cat.blobs.c.id == b.id)
                       .values(pack_id=new_id, offset=ref.offset, length=ref.length))
        db.execute(delete(cat.blobs).where(cat.blobs.c.pack_id == pack.id))
        db.execute(delete(cat.packs).where(cat.packs.c.id == pack.id))
    service.storage.delete(pack_object(pack.name))


def _delete_old_orphans(service: VaultService, now_ns: int) -> int:
    count = 0
    for name in service.orphan_packs():
        if now_ns / 1e9 - service.storage.modified(pack_object(name)) > ORPHAN_AGE_S:
            service.storage.delete(pack_object(name))
            count += 1
    return count
