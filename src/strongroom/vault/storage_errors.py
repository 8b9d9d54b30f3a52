"""How the vault's own storage failing (its disk full, read-only or failing) reaches the user:
as one line that says so, never as HTTP 500 or an "internal error".

Served, the error travels to the agent like any refusal (vault/hotpath.py `error_response`,
which also logs it with the path); the answer names no path, since a machine has no business
learning the vault's folders. Embedded, the CLI prints the same line (cli/main.py). A pack's
OSError in an embedded vault meets the agent's own handler first (agent/packer.py).
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DatabaseError

from strongroom.errors import VaultError, VaultFull, VaultReadOnly

_POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full
# The catalog's failures that are its storage's, not a bug (SQLite's primary result codes): the
# disk, its rights, its reads
_SQLITE_STORAGE = {sqlite3.SQLITE_IOERR: "failing", sqlite3.SQLITE_READONLY: "read-only",
                   sqlite3.SQLITE_CANTOPEN: "unreadable"}
# No room for the shared-memory file a catalog in WAL mode is opened with: a full disk, which
# SQLite reports as "disk I/O error"
_SQLITE_IOERR_SHMSIZE = sqlite3.SQLITE_IOERR | 19 << 8


def storage_failure(exc: BaseException) -> VaultError | None:
    """The one-line error for `exc`; None if it is not the storage's (a bug keeps its traceback)."""
    if isinstance(exc, OSError):
        answer = VaultReadOnly.of(exc) or VaultError(f"the vault's storage failed ({exc.strerror or type(exc).__name__})")
    elif isinstance(exc, DatabaseError):
        code = getattr(exc.orig, "sqlite_errorcode", None)  # an extended result code
        if code == sqlite3.SQLITE_FULL or getattr(exc.orig, "pgcode", None) == _POSTGRES_DISK_FULL:
            answer = VaultFull("the vault's disk is full (its catalog cannot grow)")
        elif code == _SQLITE_IOERR_SHMSIZE:
            answer = VaultFull("the vault's disk is full (its catalog cannot be opened)")
        elif code is not None and code & 0xFF in _SQLITE_STORAGE:
            answer = VaultError(f"the vault's catalog is {_SQLITE_STORAGE[code & 0xFF]} ({exc.orig})")
        else:
            return None
    else:
        return None
    return answer
