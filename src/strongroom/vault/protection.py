"""The vault's guards on destructive acts: PINs, the soft-delete period, immutability.

Deleting a machine's data or shortening its retention needs a PIN that the vault's admin
creates, valid five minutes and for one act (as MARS's security PIN), so that a stolen
machine token alone cannot destroy backups. An immutable vault refuses those acts to
everyone, for good: immutability cannot be turned off.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from typing import Any

import blake3
from sqlalchemy import delete, insert, select, update

from strongroom.errors import CredentialsError, UsageError, VaultError
from strongroom.vault import catalog as cat
from strongroom.vault.retention import LIMITS

PIN_SECONDS = 300
SOFT_DELETE_RANGE = (14, 180)
DEFAULTS: dict[str, Any] = {"soft_delete_days": 14, "immutable": False}


def _hash(pin: str) -> str:
    return blake3.blake3(pin.encode()).hexdigest()


def settings(engine: Any) -> dict[str, Any]:
    with engine.connect() as db:
        stored = {r.key: json.loads(r.value) for r in db.execute(select(cat.settings))}
    return {**DEFAULTS, **stored}


def change_settings(engine: Any, soft_delete_days: int | None = None, immutable: bool | None = None) -> dict[str, Any]:
    current = settings(engine)
    if soft_delete_days is not None and not SOFT_DELETE_RANGE[0] <= soft_delete_days <= SOFT_DELETE_RANGE[1]:
        raise UsageError(f"the soft-delete period is {SOFT_DELETE_RANGE[0]} to {SOFT_DELETE_RANGE[1]} days")
    if immutable is False and current["immutable"]:
        raise VaultError("this vault is immutable, for good: that cannot be turned off")
    if current["immutable"] and soft_delete_days is not None and soft_delete_days < current["soft_delete_days"]:
        raise VaultError("this vault is immutable: the soft-delete period cannot be shortened")
    changes = {k: v for k, v in (("soft_delete_days", soft_delete_days), ("immutable", immutable)) if v is not None}
    with cat.write(engine) as db:
        for key, value in changes.items():
            db.execute(delete(cat.settings).where(cat.settings.c.key == key))
            db.execute(insert(cat.settings).values(key=key, value=json.dumps(value)))
    return settings(engine)


def make_pin(engine: Any) -> str:
    pin = f"{secrets.randbelow(10**8):08d}"
    with cat.write(engine) as db:
        db.execute(delete(cat.pins).where(cat.pins.c.expires < time.time()))
        db.execute(insert(cat.pins).values(hash=_hash(pin), expires=int(time.time()) + PIN_SECONDS))
    return pin


def spend_pin(db: Any, pin: str | None, act: str) -> None:
    """Uses up a valid PIN inside the caller's transaction, or refuses the act."""
    if not pin:
        raise CredentialsError(f"{act} needs a PIN: the vault admin makes one with `strongroom vault pin`")
    now = time.time()
    for row in db.execute(select(cat.pins)).all():
        if hmac.compare_digest(row.hash, _hash(pin)) and row.expires > now:
            db.execute(delete(cat.pins).where(cat.pins.c.hash == row.hash))
            return
    raise CredentialsError("that PIN is wrong, used already or older than 5 minutes")


def shortens(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether `new` keeps some points for less time than `old` (a tier lowered or dropped)."""
    if not old or "retention" not in old:
        return False
    if not new:
        return False  # protection stopped, data kept: kept for good
    for tier in LIMITS:
        before, after = old["retention"].get(tier), new["retention"].get(tier)
        if before is not None and (after is None or after < before):
            return True
    return False


def guard_policy_change(engine: Any, db: Any, old: dict[str, Any] | None, new: dict[str, Any] | None,
                        pin: str | None) -> None:
    if not shortens(old, new):
        return
    if settings(engine)["immutable"]:
        raise VaultError("this vault is immutable: retention cannot be shortened")
    spend_pin(db, pin, "shortening retention")


def delete_machine_points(engine: Any, db: Any, machine_id: int, pin: str | None) -> int:
    """Soft-deletes all of a machine's points (recoverable for the soft-delete period)."""
    if settings(engine)["immutable"]:
        raise VaultError("this vault is immutable: no point may be deleted before it expires")
    spend_pin(db, pin, "deleting backup data")
    return db.execute(update(cat.points).where(cat.points.c.machine_id == machine_id,
                                               cat.points.c.deleted_ns.is_(None))
                      .values(deleted_ns=time.time_ns())).rowcount
