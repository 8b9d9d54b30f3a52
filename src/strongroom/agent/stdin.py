"""`backup --stdin NAME`: a stream (a database dump) stored as one file of a recovery point.

The point's tree holds one regular file, `/NAME`, mode 0600, owned by the user who ran the
backup, dated when the stream ended; it is restored, listed and dumped like any file. The
manifest's `stdin` field names it, so that a later files backup never takes this point as
the parent it compares with (agent/selection.py, `change_base`).

A shell pipe does not tell the reader how its producer ended: `pg_dump db | strongroom
backup --stdin db.sql` sees a killed pg_dump as an early end of its stream. With
`--stdin-from-command` the agent runs the producer itself and records no point unless it
exits 0. An empty stream is stored (an empty dump is a file too) with a warning (exit 3).
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import IO, Any

from strongroom.agent.backup import Backup, _PendingDir
from strongroom.agent.fsmeta import group_name, user_name
from strongroom.errors import StrongroomError, UsageError
from strongroom.model import FILE, Entry, is_safe_name

STDIN_MODE = 0o600  # a dump holds whatever the database holds: private, like a key file


def stdin_name(text: str) -> bytes:
    """The file name a stream is stored under: one name, no `/`."""
    name = os.fsencode(text)
    if not is_safe_name(name):
        raise UsageError(f"--stdin takes a file name (no '/', not . or ..), not {text!r}")
    return name


class StdinBackup(Backup):
    """A backup whose one source is a stream; `command`, if given, produces it."""

    def __init__(self, *args: Any, name: bytes, stream: IO[bytes] | None = None,
                 command: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name, self.stream, self.command = name, stream, command
        self.manifest_extra["stdin"] = name
        # No source until the walk begins: what a backup does to its sources first (btrfs
        # snapshots, agent/snapshot.py) must not touch a path named /NAME on this machine.

    def _build_root(self, parent_root: bytes | None) -> _PendingDir:
        self.sources = [b"/" + self.name]  # what the manifest records
        if self.command is None:
            entry = self._store(self.stream)  # type: ignore[arg-type]
        else:
            entry = self._store_command(self.command)
        self.counters.files_new = 1
        if not entry["s"]:
            self._warn(b"/" + self.name, "the input was empty: an empty file was stored")
        if self.on_file is not None:
            self.on_file("new", b"/" + self.name, entry["s"])
        return self._queue([entry], None)

    def _store_command(self, argv: list[str]) -> Entry:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        except OSError as exc:
            raise UsageError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            entry = self._store(proc.stdout)  # type: ignore[arg-type]
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()  # type: ignore[union-attr]
            rc = proc.wait()
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited {rc}"
            raise StrongroomError(f"the command {argv[0]} {how}: its output is not recorded as a point")
        return entry

    def _store(self, stream: IO[bytes]) -> Entry:
        ids, lengths = self._store_stream(stream)
        size = sum(lengths)
        self.counters.bytes_total = size
        now = time.time_ns()
        uid, gid = os.geteuid(), os.getegid()
        entry: Entry = {"n": self.name, "t": FILE, "m": STDIN_MODE, "u": uid, "g": gid, "mt": now, "at": now,
                        "ct": now, "s": size, "c": ids}
        if ids:
            entry["cl"] = lengths  # tree format 2: a mount maps byte ranges to blobs by these
        user, group = user_name(uid), group_name(gid)
        if user is not None:
            entry["U"] = user
        if group is not None:
            entry["G"] = group
        return entry
