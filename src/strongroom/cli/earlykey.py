"""Derives this machine's key at start-up, before a command loads its modules: peak memory.

Argon2id holds 64 MiB while it runs. Run inside the command, those come on top of everything
the command imported (click, rich, the agent's modules: about 40 MiB); run here, from the
entry point (cli/handover.py) with only the standard library and crypto.py loaded, on top of
about 20. The key is left in crypto.py's memo, where the command's own `unwrap_key` finds it.

Only the plain case is done early: a command that reads this machine's key, the passphrase
in $STRONGROOM_PASSPHRASE, no --passphrase-file (it would win over the environment) and no
--from-machine. Anything else, and any failure here (no home, a malformed key file, a wrong
or short passphrase), is left to the command, which then says what is wrong in its own words.
"""

from __future__ import annotations

import os
import threading

from strongroom.agent.homepath import KEYFILE, command_start, home_path

# The commands that open this machine's key through cli/common.py `open_agent`.
KEYED = frozenset({"backup", "restore", "ls", "points", "check", "diff", "find", "dump", "stats", "mount", "export"})
_SKIP = ("--passphrase-file", "--from-machine", "--help", "-h", "--version")


def derive_early(argv: list[str]) -> None:
    """Unwraps this machine's key now when the command will surely want it (see above)."""
    from strongroom import crypto  # noqa: PLC0415 - cryptography and Argon2, needed anyway
    from strongroom.agent.passphrase import ENV_VAR  # noqa: PLC0415
    from strongroom.errors import StrongroomError  # noqa: PLC0415

    passphrase = os.environ.get(ENV_VAR)
    home, at = command_start(argv)
    if (not passphrase or len(passphrase) < crypto.MIN_PASSPHRASE or at >= len(argv) or argv[at] not in KEYED
            or any(a.split("=", 1)[0] in _SKIP for a in argv)):
        return
    try:
        crypto.unwrap_key((home_path(home) / KEYFILE).read_text(), passphrase)
    except (OSError, UnicodeError, StrongroomError):
        return


def derive_meanwhile(argv: list[str]) -> threading.Thread | None:
    """`derive_early` on a thread of its own, started now; join it before the command runs.

    Argon2 releases the GIL and keeps one core busy for 0.2-0.4 s; the command's modules
    (click, rich, the agent's: 0.12-0.18 CPU-s) load on the other core meanwhile, so a
    command's start-up costs the longer of the two instead of their sum. Only those modules
    come on top of Argon2's 64 MiB: the vault's catalog (SQLAlchemy) still loads after the key."""
    _home, at = command_start(argv)
    if at >= len(argv) or argv[at] not in KEYED:
        return None
    from strongroom import crypto  # noqa: F401, PLC0415 - loaded here, not by two threads at once
    from strongroom.agent import passphrase  # noqa: F401, PLC0415
    thread = threading.Thread(target=derive_early, args=(argv,), name="derive-key", daemon=True)
    thread.start()
    return thread
