"""The vault's guards on destructive acts: PINs, retention that only its admin may shorten,
the soft-delete period, immutability.

Deleting a machine's data or shortening its retention needs a PIN that the vault's admin
makes for one machine and one act, valid five minutes (as MARS's security PIN), so that a
stolen machine token alone cannot destroy backups. PINs are stored as hashes keyed with a
secret of the vault's own (`pin.key`), so that a copy of the catalog does not give them
away, and wrong PINs are counted per machine: five within five minutes lock PIN use for
that machine for fifteen. An immutable vault refuses those acts to everyone, for good:
immutability cannot be turned off.

Policies and settings are read and written here alone, so that where they are kept can
change in one place.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import blake3
from sqlalchemy import Column, Engine, Integer, Table, delete, func, insert, select, update

from strongroom.errors import CredentialsError, UsageError, VaultError
from strongroom.fsutil import write_private
from strongroom.vault.storage import Storage
from strongroom.vault import catalog as cat
from strongroom.vault import records
from strongroom.vault.retention import LIMITS, Retention, expiries

PIN_SECONDS = 300
MAX_WRONG_PINS = 5  # per machine, within WRONG_PIN_WINDOW_S...
WRONG_PIN_WINDOW_S = 300
PIN_LOCK_S = 900  # ...lock PIN use for that machine this long after the last of them
PIN_SECRET_FILE = "pin.key"
ACTS = {"delete-data": "deleting backup data", "shorten-retention": "shortening retention",
        "remove-machine": "removing a machine", "rename-machine": "renaming a machine"}
SOFT_DELETE_RANGE = (14, 180)
DEFAULTS: dict[str, Any] = {"soft_delete_days": 14, "immutable": False}
# A new time zone moves a point's expiry by the clock shift between the zones' DST rules;
# that much is not counted as shortening (tiers and periods are compared exactly).
_ZONE_SLACK = timedelta(hours=1)

# Wrong PIN attempts, kept only while they can still count towards a lock.
pin_failures = Table(
    "pin_failures", cat.metadata,
    Column("id", Integer, primary_key=True),
    Column("machine_id", Integer, nullable=False, index=True),
    Column("at", Integer, nullable=False),
)


class PinRefused(CredentialsError):
    """A wrong PIN: the attempt is recorded even though the act is refused."""


class VaultRoot(Protocol):
    root: Path
    engine: Engine
    storage: Storage  # where every record goes before the catalog points at it

    def machine_uid(self, machine_id: int) -> str: ...


# -- settings ------------------------------------------------------------------------------


def settings(engine: Engine) -> dict[str, Any]:
    with engine.connect() as db:
        stored = {r.key: json.loads(r.value) for r in db.execute(select(cat.settings))}
    return {**DEFAULTS, **stored}


def change_settings(vault: VaultRoot, soft_delete_days: int | None = None,
                    immutable: bool | None = None) -> dict[str, Any]:
    engine = vault.engine
    current = settings(engine)
    if soft_delete_days is not None and not SOFT_DELETE_RANGE[0] <= soft_delete_days <= SOFT_DELETE_RANGE[1]:
        raise UsageError(f"the soft-delete period is {SOFT_DELETE_RANGE[0]} to {SOFT_DELETE_RANGE[1]} days")
    if immutable is False and current["immutable"]:
        raise VaultError("this vault is immutable, for good: that cannot be turned off")
    if current["immutable"] and soft_delete_days is not None and soft_delete_days < current["soft_delete_days"]:
        raise VaultError("this vault is immutable: the soft-delete period cannot be shortened")
    changes = {k: v for k, v in (("soft_delete_days", soft_delete_days), ("immutable", immutable)) if v is not None}
    vault.storage.put(records.SETTINGS, records.encode_json({**current, **changes}))
    with cat.write(engine) as db:
        for key, value in changes.items():
            db.execute(delete(cat.settings).where(cat.settings.c.key == key))
            db.execute(insert(cat.settings).values(key=key, value=json.dumps(value)))
    return settings(engine)


# -- PINs ----------------------------------------------------------------------------------


def _pin_secret(root: Path) -> bytes:
    """The vault's key for PIN hashes, made on first use (0600, in the vault folder)."""
    path = root / PIN_SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = b""
    if len(secret) != 32:
        try:  # two processes making it at once: the first one's stays
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            secret = path.read_bytes()
        else:
            secret = secrets.token_bytes(32)
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
                os.fsync(f.fileno())
    if len(secret) != 32:
        raise VaultError(f"{path} is damaged (not 32 bytes); delete it: PINs made before are then void")
    return secret


def make_pin_secret(root: Path) -> None:
    """Writes the PIN key of a new vault."""
    write_private(root / PIN_SECRET_FILE, secrets.token_bytes(32))


def _pin_hash(secret: bytes, machine_id: int, act: str, pin: str) -> str:
    # Machine and act are inside the hash: a PIN made for one is not found for another.
    return blake3.blake3(f"{machine_id}\0{act}\0{pin}".encode(), key=secret).hexdigest()


def _check_act(act: str) -> None:
    if act not in ACTS:
        raise UsageError(f"unknown act {act!r}: PINs are for {', '.join(sorted(ACTS))}")


def make_pin(vault: VaultRoot, machine: str, act: str) -> str:
    """A PIN for `act` by `machine`, valid PIN_SECONDS."""
    _check_act(act)
    pin = f"{secrets.randbelow(10**8):08d}"
    secret = _pin_secret(vault.root)
    with cat.write(vault.engine) as db:
        machine_id = db.execute(select(cat.machines.c.id).where(cat.machines.c.name == machine)).scalar()
        if machine_id is None:
            raise UsageError(f"no machine named {machine!r} is registered with this vault")
        now = time.time()
        db.execute(delete(cat.pins).where(cat.pins.c.expires < now))
        db.execute(delete(pin_failures).where(pin_failures.c.at < now - WRONG_PIN_WINDOW_S - PIN_LOCK_S))
        db.execute(insert(cat.pins).values(hash=_pin_hash(secret, machine_id, act, pin),
                                           expires=int(now) + PIN_SECONDS))
    return pin


def _locked_until(db: Any, machine_id: int, now: float) -> float:
    """When PIN use for the machine unlocks: 15 minutes after 5 wrong PINs within 5 minutes."""
    times = sorted(r[0] for r in db.execute(select(pin_failures.c.at).where(
        pin_failures.c.machine_id == machine_id, pin_failures.c.at > now - WRONG_PIN_WINDOW_S - PIN_LOCK_S)))
    n = MAX_WRONG_PINS - 1
    return max((times[i + n] + PIN_LOCK_S for i in range(len(times) - n)
                if times[i + n] - times[i] <= WRONG_PIN_WINDOW_S), default=0.0)


def spend_pin(vault: VaultRoot, db: Any, machine_id: int, pin: str | None, act: str) -> None:
    """Uses up a valid PIN for this machine and act inside the caller's transaction, or
    refuses the act. The caller's transaction is `guarded_write`, which keeps the record of
    a wrong attempt: so spend the PIN before writing anything else in it."""
    what = ACTS[act]
    if not pin:
        raise CredentialsError(f"{what} needs a PIN: the vault admin makes one with "
                               f"`strongroom vault pin VAULT --machine NAME --act {act}`")
    now = time.time()
    locked = _locked_until(db, machine_id, now)
    if locked > now:
        raise CredentialsError(f"PINs for this machine are locked until {_clock(locked)} after "
                               f"{MAX_WRONG_PINS} wrong ones within {WRONG_PIN_WINDOW_S // 60} minutes")
    wanted = _pin_hash(_pin_secret(vault.root), machine_id, act, str(pin))
    if db.execute(delete(cat.pins).where(cat.pins.c.hash == wanted, cat.pins.c.expires > now)).rowcount:
        return
    db.execute(insert(pin_failures).values(machine_id=machine_id, at=int(now)))
    wrong = db.execute(select(func.count()).select_from(pin_failures).where(
        pin_failures.c.machine_id == machine_id, pin_failures.c.at > now - WRONG_PIN_WINDOW_S)).scalar()
    then = (f"; PINs for this machine are now locked for {PIN_LOCK_S // 60} minutes"
            if _locked_until(db, machine_id, now) > now else "")
    raise PinRefused(f"that PIN is wrong, used already, older than {PIN_SECONDS // 60} minutes or made for "
                     f"another machine or act ({wrong} of {MAX_WRONG_PINS} wrong PINs allowed within "
                     f"{WRONG_PIN_WINDOW_S // 60} minutes){then}")


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when).astimezone().strftime("%H:%M:%S")


@contextmanager
def guarded_write(engine: Engine) -> Iterator[Any]:
    """A write transaction that keeps a wrong PIN's record when the act is refused: it
    commits on PinRefused (spend_pin comes before any other write) and rolls back on
    anything else."""
    with engine.execution_options(write=True).connect() as db:
        transaction = db.begin()
        try:
            yield db
        except PinRefused:
            transaction.commit()
            raise
        except BaseException:
            transaction.rollback()
            raise
        transaction.commit()


# -- policies ------------------------------------------------------------------------------


def latest_policy(db: Any, machine_id: int) -> tuple[int, dict[str, Any] | None] | None:
    """(version, document) of the machine's newest policy; a None document: protection stopped."""
    row = db.execute(select(cat.policies.c.version, cat.policies.c.doc)
                     .where(cat.policies.c.machine_id == machine_id)
                     .order_by(cat.policies.c.version.desc()).limit(1)).first()
    return (row.version, json.loads(row.doc)) if row else None


def last_active_policy(db: Any, machine_id: int) -> dict[str, Any] | None:
    """The newest policy that was not a stop: the retention the machine last had."""
    row = db.execute(select(cat.policies.c.doc)
                     .where(cat.policies.c.machine_id == machine_id, cat.policies.c.doc != "null")
                     .order_by(cat.policies.c.version.desc()).limit(1)).first()
    return json.loads(row.doc) if row else None


def store_policy(vault: VaultRoot, db: Any, machine_id: int, doc: dict[str, Any] | None) -> int:
    """A new version of the machine's policy: its record in storage, then its catalog row."""
    last = latest_policy(db, machine_id)
    version = (last[0] if last else 0) + 1
    created = time.time_ns()
    vault.storage.put(records.policy_object(vault.machine_uid(machine_id), version),
                      records.encode_json({"version": version, "created_ns": created, "doc": doc}))
    db.execute(insert(cat.policies).values(machine_id=machine_id, version=version,
                                           created_ns=created, doc=json.dumps(doc)))
    return version


def tiers_shortened(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` lowers or drops a retention tier of `old`."""
    for tier in LIMITS:
        before, after = old["retention"].get(tier), new["retention"].get(tier)
        if before is not None and (after is None or after < before):
            return True
    return False


def _kept_until(points: dict[str, int], floors: dict[str, int], doc: dict[str, Any] | None) -> dict[str, datetime]:
    """Until when each live point is kept under `doc` (None: by its own floor alone)."""
    utc = timezone.utc
    until = {pid: datetime.fromtimestamp(floors.get(pid, ns) / 1e9, utc) for pid, ns in points.items()}
    if doc is not None:
        by_policy = expiries(points, Retention(**doc["retention"]), ZoneInfo(doc.get("timezone", "UTC")))
        until = {pid: max(when, by_policy[pid].astimezone(utc)) for pid, when in until.items()}
    return until


def points_shortened(db: Any, machine_id: int, old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether some live point would be kept less under `new` than under `old` (with each
    point's own --retain-until floor), as a change of time zone can do to weekly tiers."""
    rows = db.execute(select(cat.points.c.id, cat.points.c.created_ns, cat.points.c.retain_until_ns)
                      .where(cat.points.c.machine_id == machine_id, cat.points.c.deleted_ns.is_(None))).all()
    if not rows or old is None:
        return False  # without a policy before, points had only their floors, which still hold
    points = {r.id: r.created_ns for r in rows}
    floors = {r.id: r.retain_until_ns for r in rows if r.retain_until_ns}
    before, after = _kept_until(points, floors, old), _kept_until(points, floors, new)
    now = datetime.now(timezone.utc)
    return any(before[p] > now and after[p] < before[p] - _ZONE_SLACK for p in points)


def shortens(db: Any, machine_id: int, new: dict[str, Any] | None) -> bool:
    """Whether storing `new` keeps something for less time than the machine's retention in
    force: that of its last policy that was not a stop (a stop keeps the data for good,
    which must not turn a later, shorter policy into a first one), and each live point's."""
    if new is None:
        return False  # protection stopped, data kept: kept for good
    old = last_active_policy(db, machine_id)
    return (old is not None and tiers_shortened(old, new)) or points_shortened(db, machine_id, old, new)


def guard_policy_change(vault: VaultRoot, db: Any, machine_id: int, new: dict[str, Any] | None,
                        pin: str | None) -> None:
    """Refuses a policy that shortens retention: always on an immutable vault, else without
    a PIN for this machine and `shorten-retention`."""
    if not shortens(db, machine_id, new):
        return
    if settings(vault.engine)["immutable"]:
        raise VaultError("this vault is immutable: retention cannot be shortened")
    spend_pin(vault, db, machine_id, pin, "shorten-retention")


def delete_machine_points(vault: VaultRoot, db: Any, machine_id: int, pin: str | None) -> int:
    """Soft-deletes all of a machine's points (recoverable for the soft-delete period)."""
    if settings(vault.engine)["immutable"]:
        raise VaultError("this vault is immutable: no point may be deleted before it expires")
    spend_pin(vault, db, machine_id, pin, "delete-data")
    live = db.execute(select(cat.points.c.id).where(cat.points.c.machine_id == machine_id,
                                                    cat.points.c.deleted_ns.is_(None))).scalars().all()
    now = time.time_ns()
    mark_deleted(vault, machine_id, live, now)
    return db.execute(update(cat.points).where(cat.points.c.id.in_(live)).values(deleted_ns=now)).rowcount


def mark_deleted(vault: VaultRoot, machine_id: int, point_ids: list[str], when_ns: int) -> None:
    """Soft-delete marks in storage, before the catalog says so: a rebuilt catalog knows."""
    uid = vault.machine_uid(machine_id)
    for pid in point_ids:
        vault.storage.put(records.deleted_object(uid, pid), records.encode_json({"deleted_ns": when_ns}))


def forget_points(vault: VaultRoot, db: Any, machine_id: int, point_ids: list[str], pin: str | None) -> list[str]:
    """Soft-deletes chosen live points of a machine (`strongroom forget`), recoverable for the
    soft-delete period. Refused, before the PIN is spent: a point that is not a live point of
    the machine; leaving the machine with no point (retention never takes a machine's last
    point, so neither does this); and, on an immutable vault, a point whose retention has not
    ended (without a policy, points are kept for good)."""
    rows = db.execute(select(cat.points.c.id, cat.points.c.created_ns, cat.points.c.retain_until_ns)
                      .where(cat.points.c.machine_id == machine_id, cat.points.c.deleted_ns.is_(None))).all()
    live = {r.id: r.created_ns for r in rows}
    wanted = list(dict.fromkeys(point_ids))
    if not wanted:
        raise UsageError("name at least one point to forget")
    for pid in wanted:
        if pid not in live:
            raise UsageError(f"{pid} is not a live recovery point of this machine (see `strongroom points`)")
    if len(wanted) == len(live):
        only = f"point {wanted[0]} is this machine's only recovery point" if len(live) == 1 else \
            f"these are all {len(live)} of this machine's recovery points"
        raise UsageError(f"{only}: retention never removes a machine's last point, even while its backups fail, "
                         "and forget keeps it too; to delete all of its data use `strongroom protection stop "
                         "--delete-data --pin PIN`")
    if settings(vault.engine)["immutable"]:
        doc = last_active_policy(db, machine_id)
        current = latest_policy(db, machine_id)
        if doc is None or current is None or current[1] is None:
            raise VaultError("this vault is immutable and this machine's points have no retention policy "
                             "in force, so they never expire: none may be deleted")
        floors = {r.id: r.retain_until_ns for r in rows if r.retain_until_ns}
        until = _kept_until(live, floors, doc)
        now = datetime.now(timezone.utc)
        for pid in wanted:
            if until[pid] > now:
                raise VaultError(f"this vault is immutable: point {pid} is kept until "
                                 f"{until[pid]:%Y-%m-%d %H:%M} UTC by its retention; no point may be "
                                 "deleted before it expires")
    spend_pin(vault, db, machine_id, pin, "delete-data")
    now_ns = time.time_ns()
    mark_deleted(vault, machine_id, wanted, now_ns)
    db.execute(update(cat.points).where(cat.points.c.id.in_(wanted)).values(deleted_ns=now_ns))
    return wanted
