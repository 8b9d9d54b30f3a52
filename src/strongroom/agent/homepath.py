"""Where the agent home is when no --home is given: with no heavy import, so that
`strongroom backup` can find the home's daemon before loading anything (cli/handover.py)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "STRONGROOM_HOME"
KEYFILE = "key.json"  # this machine's wrapped key, in the home


def default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/strongroom")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "strongroom"


def home_path(given: Path | None) -> Path:
    """--home, else $STRONGROOM_HOME, else the per-user default."""
    env = os.environ.get(ENV_VAR)
    return given or (Path(env) if env else default_home())


def command_start(argv: list[str]) -> tuple[Path | None, int]:
    """(--home if given, the index of the command's name) in the CLI's arguments."""
    home: Path | None = None
    i = 0
    while i < len(argv):
        if argv[i] == "--home" and i + 1 < len(argv):
            home, i = Path(argv[i + 1]), i + 2
        elif argv[i].startswith("--home="):
            home, i = Path(argv[i][len("--home="):]), i + 1
        else:
            break
    return home, i
