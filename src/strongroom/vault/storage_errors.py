"""How the served vault's own storage failing (its disk full, read-only or failing) reaches a
machine: as one line that says so, not as HTTP 500 and a traceback in the server's log.

The embedded vault's OSError reaches the agent's own handlers (agent/packer.py, cli/main.py),
which say the same in the same words. A served one would otherwise stop in uvicorn, and the
agent could only say "the vault answered HTTP 500". The answer names no path: a machine has
no business learning the vault's folders; the server's log has them.
"""

from __future__ import annotations

import errno
import logging
import sqlite3

from sqlalchemy.exc import DatabaseError

from strongroom.errors import VaultError, VaultFull

log = logging.getLogger("strongroom.vault")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full
# The catalog's failures that are its storage's, not a bug: the disk, its rights, its reads
_SQLITE_STORAGE = {sqlite3.SQLITE_FULL: "full", sqlite3.SQLITE_IOERR: "failing", sqlite3.SQLITE_READONLY: "read-only",
                   sqlite3.SQLITE_CANTOPEN: "unreadable"}


def storage_failure(exc: Exception, request: str) -> VaultError | None:
    """The one-line error a machine gets for `exc`, raised answering `request` ("PUT /path"),
    logged with its detail; None if `exc` is not the storage's (a bug keeps its traceback)."""
    if isinstance(exc, OSError):
        if exc.errno in _FULL_ERRNOS:
            answer: VaultError = VaultFull(f"the vault's disk is full ({exc.strerror})")
        else:
            answer = VaultError(f"the vault's storage failed ({exc.strerror or type(exc).__name__})")
    elif isinstance(exc, DatabaseError):
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or getattr(exc.orig, "pgcode", None) == _POSTGRES_DISK_FULL:
            answer = VaultFull("the vault's disk is full (its catalog cannot grow)")
        elif code in _SQLITE_STORAGE:
            answer = VaultError(f"the vault's catalog is {_SQLITE_STORAGE[code]} ({exc.orig})")
        else:
            return None
    else:
        return None
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    log.error("%s: %s%s", request, answer, where)
    return answer
