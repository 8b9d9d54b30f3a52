"""Machine names: the characters a machine may be registered under.

A machine name is printed by every machine's `jobs` and `machines` and by the dashboard, so
a hostile machine could otherwise reach other people's terminals through it (an OSC 52
sequence in a name once wrote to the clipboard of whoever listed the jobs). Names are what
host names allow, plus `_`: ASCII letters, digits, `.`, `-` and `_`, starting with a letter
or a digit, at most 64 characters (a Linux host name's limit).
"""

from __future__ import annotations

import re

from strongroom.errors import UsageError

MAX_MACHINE_NAME = 64
_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_machine_name(name: str) -> str:
    """The name, if a machine may be registered under it; else a UsageError saying why."""
    if not isinstance(name, str) or not _MACHINE_NAME.fullmatch(name) or len(name) > MAX_MACHINE_NAME:
        shown = repr(name).encode("ascii", "backslashreplace").decode()[:100]
        raise UsageError(f"invalid machine name {shown}: use 1 to {MAX_MACHINE_NAME} ASCII letters, digits, "
                         "'.', '-' or '_', starting with a letter or a digit")
    return name
