"""Where the agent home is when no --home is given: with no heavy import, so that
`strongroom backup` can find the home's daemon before loading anything (cli/handover.py)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "STRONGROOM_HOME"


def default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/strongroom")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "strongroom"


def home_path(given: Path | None) -> Path:
    """--home, else $STRONGROOM_HOME, else the per-user default."""
    env = os.environ.get(ENV_VAR)
    return given or (Path(env) if env else default_home())
