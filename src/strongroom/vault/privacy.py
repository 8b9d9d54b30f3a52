"""Keeping a vault folder to its owner: no other local user may read its catalog (wrapped
keys, PIN hashes, jobs, policies), its packs or its secrets.

Vault commands run with umask 077, so that whatever they create (SQLite's files included,
which take the database file's mode) is the owner's alone; opening a vault also takes group
and other access away from the folder and the files at its top, for vaults made before.
The folder's own mode is what guards the packs below it: a user who cannot enter the
folder reaches nothing inside, whatever the modes deeper down.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_umask() -> None:
    os.umask(PRIVATE_UMASK)


def lock_down(root: Path) -> None:
    """Removes group and other permissions from `root` and its direct entries; a folder
    this user may not change (another owner's) is left as it is."""
    for path in (root, *root.iterdir()):
        try:
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & PRIVATE_UMASK:
                os.chmod(path, stat.S_IMODE(mode) & ~PRIVATE_UMASK)
        except (PermissionError, FileNotFoundError):
            continue
        except OSError as exc:
            if exc.errno != errno.EROFS:  # a vault on read-only media: its modes are what they are
                raise
