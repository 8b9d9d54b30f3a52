"""Errors that reach the user as one clear line, each with the exit code the README documents."""

import errno

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_WARNINGS = 3


class StrongroomError(Exception):
    """A failure the user can act on; the CLI prints its message alone and exits non-zero."""

    exit_code = EXIT_FAILURE


class UsageError(StrongroomError):
    """The command line asked for something that cannot be done as written."""

    exit_code = EXIT_USAGE


class WrongPassphrase(StrongroomError):
    """The passphrase does not unwrap the master key."""


class CredentialsError(StrongroomError):
    """Vault credentials that are malformed, expired or superseded."""


class VaultError(StrongroomError):
    """The vault is missing, unreadable or refused a request."""


class VaultUnreachable(VaultError):
    """The served vault did not answer for the whole retry window. A command stops at it
    rather than go on item by item: every later call would fail the same way."""


class MissingObject(VaultError):
    """An object asked for by name (a pack, a record) is not in the vault's storage."""


class VaultReadOnly(VaultError):
    """The vault can be read but not written: its file system is mounted read-only, or full
    (VaultFull). Restores go on (agent/jobrun.py)."""

    @staticmethod
    def of(exc: OSError) -> "VaultReadOnly | None":
        """What a failed write of the vault's means, if it is one of these."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return VaultFull(f"the vault's disk is full ({exc.strerror})")
        if exc.errno == errno.EROFS:
            return VaultReadOnly(READ_ONLY_FS)
        return None


class VaultFull(VaultReadOnly):
    """The vault's storage has no room left (its disk or the quota is full)."""


READ_ONLY_FS = "the vault's file system is read-only: the vault can be read, not written"


class IntegrityError(StrongroomError):
    """Stored data failed verification against its checksum."""
