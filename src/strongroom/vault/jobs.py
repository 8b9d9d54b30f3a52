"""The vault's record of backup and restore jobs, and the lease that allows one backup per machine.

The files a job could not handle are named by the machine's paths, so they reach the vault
sealed with the key of the machine whose data the job handled: the vault keeps the sealed
bytes and their count, and shows a machine only its own jobs and restores of its data
made elsewhere.

A backup holds a lease row (a unique key in the catalog) that its agent renews while it
runs; an agent that dies stops renewing, and the next backup takes the expired lease over
and marks the dead job failed. The agent chooses job IDs, so a retried request after a
lost answer finds its own job instead of making a second one.

A prune runs in the vault, not in an agent, and holds the vault's prune lock besides (flock
on PRUNE_LOCK in the vault folder, which the kernel releases when its process dies): whoever
takes that lock, or finds it free, knows that a prune job still "running" died, and ends it
at once instead of waiting for its lease to lapse.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import IntegrityError as DuplicateRow

from strongroom.errors import UsageError, VaultError, VaultReadOnly
from strongroom.vault import catalog as cat
from strongroom.vault.shapes import LEASE_SECONDS, LEASED, MAX_SEALED_FAILED, JobRecord  # noqa: F401 - re-exported

# waiting_for_seed: a backup written to an offline seed folder, not in the vault until
# `vault import-seed` brings it in (then completed).
STATUSES = ("completed", "completed_with_warnings", "failed", "cancelled", "waiting_for_seed")
KINDS = ("backup", "restore", "prune", "import", "mount")  # mount: a `strongroom mount` while it lasts
PRUNE_LOCK = "prune.lock"
_DEAD_PRUNE = "the prune stopped before it ended (its process died)"


def _expire_stale(db: Any, now_ns: int, *where: Any) -> bool:
    """Marks running jobs whose lease expired failed (their agent died) and frees their lease."""
    result = db.execute(update(cat.jobs)
                        .where(cat.jobs.c.status == "running", cat.jobs.c.lease_expires < now_ns // 10**9, *where)
                        .values(status="failed", ended_ns=now_ns, lease_key=None,
                                message="the agent stopped reporting (its lease expired)"))
    return result.rowcount > 0


class JobBook:
    def __init__(self, engine: Engine, archive: Callable[[int, JobRecord], None] | None = None,
                 root: Path | None = None) -> None:
        self.engine = engine
        self.archive = archive  # keeps each finished job's record in storage too
        self.root = root  # the vault folder, where PRUNE_LOCK is

    @contextmanager
    def pruning(self) -> Iterator[None]:
        """Holds the prune lock while a prune runs: one at a time."""
        with self._prune_lock() as held:
            if not held:
                raise VaultError("another prune of this vault is running; one at a time")
            yield

    def _no_prune_runs(self) -> bool:
        """True if no prune holds the lock; a prune job still "running" then died, and is ended."""
        with self._prune_lock() as held:
            return held

    @contextmanager
    def _prune_lock(self) -> Iterator[bool]:
        """Holds the prune lock, if no prune does (True), having ended the prune jobs that died."""
        assert self.root is not None, "a JobBook that prunes knows its vault folder"
        try:
            fd = os.open(self.root / PRUNE_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise VaultReadOnly.of(exc) or exc from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            self._fail_dead("prune", _DEAD_PRUNE)
            yield True
        finally:
            os.close(fd)

    def start(self, machine_id: int, job_id: str, kind: str, source_machine_id: int | None = None) -> JobRecord:
        if kind not in KINDS or not job_id or len(job_id) > 32:
            raise UsageError(f"invalid job {kind!r} {job_id!r}")
        lease = f"data:{machine_id}" if kind in LEASED else None
        now = time.time_ns()
        for attempt in range(2):
            with cat.write(self.engine) as db:
                mine = db.execute(select(cat.jobs.c.machine_id).where(cat.jobs.c.id == job_id)).first()
                if mine is not None:
                    if mine.machine_id != machine_id:
                        raise VaultError(f"job {job_id} belongs to another machine")
                    break  # a retried start: the first one went through
                if lease and _expire_stale(db, now, cat.jobs.c.lease_key == lease):
                    continue
                try:
                    with db.begin_nested():
                        db.execute(insert(cat.jobs).values(
                            id=job_id, machine_id=machine_id, kind=kind, source_machine_id=source_machine_id,
                            started_ns=now, status="running", lease_key=lease,
                            lease_expires=now // 10**9 + LEASE_SECONDS))
                except DuplicateRow:
                    holder = db.execute(select(cat.jobs.c.id, cat.jobs.c.kind)
                                        .where(cat.jobs.c.lease_key == lease)).first()
                else:
                    break
            # (out of the transaction: ending a dead prune's job writes too)
            if attempt == 0 and holder and holder.kind == "prune" and self.root and self._no_prune_runs():
                continue
            what = holder.kind if holder else "backup"
            raise VaultError(f"another {what} of this machine is running (job {holder and holder.id}); "
                             "one at a time")
        return self.get(job_id)

    def renew(self, machine_id: int, job_id: str) -> None:
        with cat.write(self.engine) as db:
            result = db.execute(update(cat.jobs)
                                .where(cat.jobs.c.id == job_id, cat.jobs.c.machine_id == machine_id,
                                       cat.jobs.c.status == "running")
                                .values(lease_expires=int(time.time()) + LEASE_SECONDS))
        if result.rowcount == 0:
            raise VaultError(f"job {job_id} is no longer running in the vault (its lease expired)")

    def finish(self, machine_id: int, job_id: str, status: str, mode: str = "", point_id: str | None = None,
               files: int = 0, nbytes: int = 0, failed_count: int = 0, failed_sealed: str | None = None,
               message: str = "", mode_reason: str = "") -> JobRecord:
        if status not in STATUSES:
            raise UsageError(f"invalid job status {status!r}")
        if failed_count < 0 or (failed_sealed is not None and len(failed_sealed) > MAX_SEALED_FAILED):
            raise UsageError("invalid list of failed files")
        with cat.write(self.engine) as db:
            owner = db.execute(select(cat.jobs.c.machine_id).where(cat.jobs.c.id == job_id)).scalar()
            if owner != machine_id:
                raise VaultError(f"job {job_id} is not a job of this machine")
            # A job that has ended keeps its record: a retried finish changes nothing.
            db.execute(update(cat.jobs).where(cat.jobs.c.id == job_id, cat.jobs.c.status == "running").values(
                status=status, ended_ns=time.time_ns(), mode=mode, point_id=point_id, files=files, bytes=nbytes,
                failed=json.dumps({"count": failed_count, "sealed": failed_sealed}), message=message[:4000],
                mode_reason=mode_reason[:1000],
                lease_key=None, lease_expires=None))
        record = self.get(job_id)
        if self.archive is not None:
            self.archive(machine_id, record)
        return record

    def _fail_dead(self, kind: str, message: str) -> None:
        """Ends this kind's running jobs as failed and frees their leases, their process being
        known to be gone: else a killed prune held its machines' data for a lease's length (90 s),
        refusing their backups, and the next prune skipped them."""
        with cat.write(self.engine) as db:
            dead = db.execute(select(cat.jobs.c.id, cat.jobs.c.machine_id)
                              .where(cat.jobs.c.status == "running", cat.jobs.c.kind == kind)).all()
        for job_id, machine_id in dead:
            self.finish(machine_id, job_id, "failed", message=message)

    def record_event(self, machine_id: int, kind: str, mode: str, message: str) -> JobRecord:
        """A critical act on the machine (vault/machine_admin.py), recorded as a finished job."""
        now = time.time_ns()
        job_id = "ev-" + secrets.token_hex(8)
        with cat.write(self.engine) as db:
            db.execute(insert(cat.jobs).values(id=job_id, machine_id=machine_id, kind=kind, started_ns=now,
                                               ended_ns=now, status="completed", mode=mode, message=message))
        record = self.get(job_id)
        if self.archive is not None:
            self.archive(machine_id, record)
        return record

    def take_over(self, machine_id: int, job_id: str, kind: str) -> None:
        """Starts the job, or runs it again when a killed run of the same work left it behind
        (running, or failed when its lease lapsed): its lease is taken anew."""
        with cat.write(self.engine) as db:
            row = db.execute(select(cat.jobs.c.machine_id, cat.jobs.c.status).where(cat.jobs.c.id == job_id)).first()
        if row is None:
            self.start(machine_id, job_id, kind)
            return
        if row.machine_id != machine_id or row.status not in ("running", "failed", "cancelled"):
            raise VaultError(f"job {job_id} cannot be run again")
        now = time.time_ns()
        lease = f"data:{machine_id}"
        with cat.write(self.engine) as db:
            _expire_stale(db, now, cat.jobs.c.lease_key == lease, cat.jobs.c.id != job_id)
            try:
                with db.begin_nested():
                    db.execute(update(cat.jobs).where(cat.jobs.c.id == job_id).values(
                        status="running", ended_ns=None, message="", lease_key=lease,
                        lease_expires=now // 10**9 + LEASE_SECONDS))
            except DuplicateRow:
                raise VaultError("another backup, prune or import of this machine is running; one at a time") from None

    def seed_arrived(self, machine_id: int, point_id: str) -> None:
        """The backup that wrote point `point_id` to a seed folder is complete: its point was imported."""
        with cat.write(self.engine) as db:
            ids = db.execute(select(cat.jobs.c.id).where(cat.jobs.c.machine_id == machine_id,
                                                         cat.jobs.c.point_id == point_id,
                                                         cat.jobs.c.status == "waiting_for_seed")).scalars().all()
            db.execute(update(cat.jobs).where(cat.jobs.c.id.in_(ids)).values(status="completed"))
        if self.archive is not None:
            for job_id in ids:
                self.archive(machine_id, self.get(job_id))

    def _query(self) -> Any:
        me, src = cat.machines.alias(), cat.machines.alias()  # Core aliases: no ORM import (6 MiB)
        return (select(cat.jobs, me.c.name.label("machine_name"), src.c.name.label("source_name"))
                .join(me, me.c.id == cat.jobs.c.machine_id)
                .outerjoin(src, src.c.id == cat.jobs.c.source_machine_id))

    @staticmethod
    def _record(r: Any) -> JobRecord:
        failed = json.loads(r.failed)
        if isinstance(failed, list):  # recorded before lists were sealed: shown as a count only
            failed = {"count": len(failed), "sealed": None}
        return JobRecord(r.id, r.machine_name, r.kind, r.status, r.started_ns, r.ended_ns, r.source_name,
                         r.mode, r.point_id, r.files, r.bytes, failed["count"], failed["sealed"], r.message,
                         r.mode_reason or "")

    def get(self, job_id: str) -> JobRecord:
        with self.engine.connect() as db:
            row = db.execute(self._query().where(cat.jobs.c.id == job_id)).first()
        if row is None:
            raise VaultError(f"no job {job_id}")
        return self._record(row)

    def list(self, machine_id: int | None = None, limit: int = 100, viewer: int | None = None) -> list[JobRecord]:
        """Newest first; running jobs whose lease expired are shown as failed. For a `viewer`
        machine, only its own jobs and restores of its data by other machines."""
        q = self._query().order_by(cat.jobs.c.started_ns.desc()).limit(limit)
        if machine_id is not None:
            q = q.where(cat.jobs.c.machine_id == machine_id)
        if viewer is not None:
            q = q.where(or_(cat.jobs.c.machine_id == viewer, cat.jobs.c.source_machine_id == viewer))
        with cat.write(self.engine) as db:
            _expire_stale(db, time.time_ns())
            return [self._record(r) for r in db.execute(q)]
