"""Named points in long or critical operations where an end-to-end test can stop the process.

$STRONGROOM_TEST_HOOK holds `NAME=ACTION` pairs separated by commas. At `hook(NAME)`:
`kill` sends SIGKILL to this process (a crash at exactly that step); `wait:PATH` writes
`PATH.reached` and waits (up to 120 s) until PATH exists, so the test can act on the files
in between; `sleep:SECONDS` pauses there, each time, so that a process of the test that runs
all along gets its turn at that step however busy the machine. Unset (as always outside
tests), a hook is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV_VAR = "STRONGROOM_TEST_HOOK"
# For hooks on paths taken per file, where even the lookup would cost: `if ACTIVE: hook(...)`.
ACTIVE = bool(os.environ.get(ENV_VAR))


def _actions() -> dict[str, str]:
    text = os.environ.get(ENV_VAR, "")
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def hook(name: str) -> None:
    action = _actions().get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep:"):
        time.sleep(float(action[6:]))
    elif action.startswith("wait:"):
        go = Path(action[5:])
        Path(f"{go}.reached").write_text(name)
        deadline = time.monotonic() + 120
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
