"""Acts on a machine's registration: a new wrapped key (passphrase change), removal, renaming,
and a rebuilt machine taking its name back (`register --replace`).

Each is a critical act, recorded as an event in the machine's jobs (kind `passphrase`,
`remove`, `rename` or `replace`, mode `critical`), in the catalog and in storage like any
finished job, so that whoever watches the jobs (and the alerts to come) sees it.

Who may do what, against a hostile machine: a machine changes only its own wrapped key (its
token says which); removing or renaming a machine needs the vault admin (its token, or the
vault's folder) or a PIN the admin made for that machine and that act; taking a name back
needs the vault's newest credentials (which only the admin issues) and, for machines
registered since this version, proof of the machine's key: the agent sends a value derived
from the master key (crypto.MasterKey.replace_proof) whose hash the vault kept at
registration, so credentials alone cannot take a machine's name away from it.

Storage first, as everywhere: the machine record (machines/<uid>.json) is rewritten before
the catalog changes, inside the catalog's write transaction.
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
from typing import Any

import blake3
from sqlalchemy import select, update

from strongroom.credentials import Credentials
from strongroom.crypto import check_keyfile
from strongroom.errors import CredentialsError, UsageError, VaultError
from strongroom.names import check_machine_name
from strongroom.testhook import hook
from strongroom.vault import catalog as cat
from strongroom.vault import protection, records
from strongroom.vault.jobs import JobRecord

CRITICAL_MODE = "critical"


def _hash(secret: str) -> str:
    return blake3.blake3(secret.encode()).hexdigest()


def key_check_of(proof_hex: str) -> str:
    """What the vault keeps of a replace proof: its hash (the proof itself is a secret)."""
    return blake3.blake3(bytes.fromhex(proof_hex)).hexdigest()


def _row(db: Any, *where: Any) -> Any:
    return db.execute(select(cat.machines).where(*where)).first()


def _live(db: Any, name: str) -> Any:
    row = _row(db, cat.machines.c.name == name, cat.machines.c.removed_ns.is_(None))
    if row is None:
        raise UsageError(f"no machine named {name!r} is registered with this vault")
    return row


def _store(service: Any, db: Any, row: Any, **changes: Any) -> None:
    """The machine's record in storage, then its catalog row (in the caller's transaction)."""
    doc = {"uid": row.uid, "name": row.name, "registered": row.registered, "keyfile": row.keyfile,
           "token_hash": row.token_hash}
    for field in ("removed_ns", "key_check"):
        if getattr(row, field) is not None:
            doc[field] = getattr(row, field)
    for field in ("former_names", "revoked"):
        if getattr(row, field):
            doc[field] = json.loads(getattr(row, field))
    doc.update(changes)
    service.storage.put(records.machine_object(row.uid), records.encode_json(doc))
    hook("machine-record-stored")
    column = {k: json.dumps(v) if k in ("former_names", "revoked") else v for k, v in changes.items()}
    db.execute(update(cat.machines).where(cat.machines.c.id == row.id).values(**column))


def record_event(service: Any, machine_id: int, kind: str, message: str) -> JobRecord:
    """A critical act as a finished job of the machine: catalog row, then its archive."""
    return service.jobs.record_event(machine_id, kind, CRITICAL_MODE, message)


# -- passphrase change ------------------------------------------------------------------------


def _check_proof(row: Any, proof: str | None) -> None:
    """Refuses unless `proof` is the replace proof of the machine's key (when the vault knows
    its hash: machines registered before this version are taken on their word once)."""
    if row.key_check is None:
        return
    try:
        good = proof is not None and hmac.compare_digest(key_check_of(proof), row.key_check)
    except ValueError:
        good = False
    if not good:
        raise CredentialsError(f"the key offered is not machine {row.name}'s: nothing changed")


def change_keyfile(service: Any, machine_id: int, keyfile: str, proof: str | None) -> None:
    """The machine's master key, wrapped anew (a new passphrase): replaces the vault's copy.
    The proof of the key is asked for too, so that a stolen token alone cannot swap the copy
    other machines restore with (and `register --replace` needs) for one of another key."""
    check_keyfile(keyfile)  # a copy others restore with: never store one this version cannot open
    with protection.guarded_write(service.engine) as db:
        row = _row(db, cat.machines.c.id == machine_id)
        _check_proof(row, proof)
        changes: dict[str, Any] = {"keyfile": keyfile}
        if proof is not None and row.key_check is None:  # registered before replace proofs
            changes["key_check"] = key_check_of(proof)
        _store(service, db, row, **changes)
    record_event(service, machine_id, "passphrase", "passphrase changed: the vault's copy of the wrapped key "
                 "was replaced (other machines restoring this one's data need the new passphrase)")


# -- removal and renaming -------------------------------------------------------------------


def _authorise(service: Any, db: Any, target_id: int, act: str, pin: str | None, admin: bool) -> None:
    if not admin:
        protection.spend_pin(service, db, target_id, pin, act)


def remove_machine(service: Any, name: str, pin: str | None = None, admin: bool = False) -> int:
    """Revokes the machine's token and soft-deletes its points; returns how many were deleted."""
    with protection.guarded_write(service.engine) as db:
        row = _live(db, name)
        _authorise(service, db, row.id, "remove-machine", pin, admin)
        live = db.execute(select(cat.points.c.id).where(cat.points.c.machine_id == row.id,
                                                        cat.points.c.deleted_ns.is_(None))).scalars().all()
        if live and protection.settings(service.engine)["immutable"]:
            raise VaultError("this vault is immutable: no point may be deleted before it expires, so a machine "
                             "with points cannot be removed")
        now = time.time_ns()
        protection.mark_deleted(service, row.id, live, now)
        db.execute(update(cat.points).where(cat.points.c.id.in_(live)).values(deleted_ns=now))
        revoked = json.loads(row.revoked or "[]") + [row.token_hash]
        _store(service, db, row, removed_ns=now, token_hash="removed:" + secrets.token_hex(16), revoked=revoked)
    service.known_tokens.clear()
    record_event(service, row.id, "remove", f"machine {name} removed: its token revoked, {len(live)} points "
                 "soft-deleted")
    return len(live)


def rename_machine(service: Any, old: str, new: str, pin: str | None = None, admin: bool = False) -> None:
    check_machine_name(new)
    with protection.guarded_write(service.engine) as db:
        row = _live(db, old)
        _authorise(service, db, row.id, "rename-machine", pin, admin)
        if _row(db, cat.machines.c.name == new) is not None:
            raise UsageError(f"a machine named {new!r} is already registered with this vault")
        former = json.loads(row.former_names or "[]")
        _store(service, db, row, name=new, former_names=[n for n in former if n != new] + [old])
    service.known_tokens.clear()
    record_event(service, row.id, "rename", f"machine {old} renamed {new}")


def names_of(service: Any, name: str) -> list[str]:
    """The names a machine's points may be sealed under: its former names (renames)."""
    with service.engine.connect() as db:
        row = _live(db, name)
    return json.loads(row.former_names or "[]")


# -- a rebuilt machine takes its name back ----------------------------------------------------


def replace_keyfile(service: Any, creds: Credentials, name: str) -> str:
    """The wrapped key of `name`, for a machine about to take that name back (credentials
    checked; nothing changes)."""
    with service.engine.connect() as db:
        service.check_credentials(db, creds)
        row = _row(db, cat.machines.c.name == name)
    if row is None:
        raise UsageError(f"no machine named {name!r} is registered with this vault")
    return row.keyfile


def replace_machine(service: Any, creds: Credentials, name: str, proof: str | None) -> str:
    """A new token for machine `name`, whose old token stops working; returns it."""
    token = secrets.token_urlsafe(32)
    with protection.guarded_write(service.engine) as db:
        service.check_credentials(db, creds)
        row = _row(db, cat.machines.c.name == name)
        if row is None:
            raise UsageError(f"no machine named {name!r} is registered with this vault")
        _check_proof(row, proof)
        revoked = json.loads(row.revoked or "[]") + ([row.token_hash] if not row.token_hash.startswith("removed:")
                                                     else [])
        _store(service, db, row, token_hash=_hash(token), revoked=revoked, removed_ns=None)
    service.known_tokens.clear()
    record_event(service, row.id, "replace", f"machine {name} taken back by a rebuilt machine (register --replace); "
                 "its previous token is revoked")
    return token
