"""Derives this machine's key at start-up, before a command loads its modules: peak memory.

Argon2id holds 64 MiB while it runs. Run inside the command, those come on top of everything
the command imported (click, rich, cryptography, the agent's modules: about 40 MiB); run
here, from the entry point (cli/handover.py) with only the standard library and argon2
loaded (keyfile.py), on top of about 13. The key that opens the master key is left in
keyfile.py's memo, where the command's own `unwrap_key` finds it.

Only the plain case is done early: a command that reads this machine's key, the passphrase
in $STRONGROOM_PASSPHRASE, no --passphrase-file (it would win over the environment) and no
--from-machine. Anything else, and any failure here (no home, a malformed key file, a wrong
or short passphrase), is left to the command, which then says what is wrong in its own words.
"""

from __future__ import annotations

import os

from strongroom.agent.homepath import KEYFILE, command_start, home_path

# The commands that open this machine's key through cli/common.py `open_agent`.
KEYED = frozenset({"backup", "restore", "ls", "points", "check", "diff", "find", "dump", "stats", "mount", "export"})
_SKIP = ("--passphrase-file", "--from-machine", "--help", "-h", "--version")


def derive_early(argv: list[str]) -> None:
    """Unwraps this machine's key now when the command will surely want it (see above)."""
    from strongroom import keyfile  # noqa: PLC0415 - Argon2 alone: see above
    from strongroom.agent.passphrase import ENV_VAR  # noqa: PLC0415
    from strongroom.errors import StrongroomError  # noqa: PLC0415

    passphrase = os.environ.get(ENV_VAR)
    home, at = command_start(argv)
    if (not passphrase or len(passphrase) < keyfile.MIN_PASSPHRASE or at >= len(argv) or argv[at] not in KEYED
            or any(a.split("=", 1)[0] in _SKIP for a in argv)):
        return
    try:
        keyfile.kek((home_path(home) / KEYFILE).read_text(), passphrase)
    except (OSError, UnicodeError, StrongroomError):
        return
