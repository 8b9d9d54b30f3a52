"""The life of a `strongroom mount`: checking the mount point, serving until the time is up,
a signal or an unmount, and cleaning a stale mount that a killed process left behind.

A mount shows as file system type `fuse.strongroom` in /proc/self/mountinfo: that is how
`strongroom unmount` knows a mount point is one of ours (it unmounts nothing else), and how a
mount whose process died is recognised (its mount point answers ENOTCONN) and cleaned.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import hashlib

from strongroom.errors import StrongroomError, UsageError

FSTYPE = "fuse.strongroom"
_UNMOUNT_TIMEOUT = 60
_TASKS = 99  # pyfuse3's default
_READ_AHEAD_KIB = 1024  # about one blob


def fuse_missing() -> str | None:
    """Why FUSE cannot be used here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel or container)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (install the fuse3 package)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as exc:
        return f"pyfuse3 does not load ({exc}); install libfuse3 (the fuse3 package)"
    return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_type(path: Path) -> str | None:
    """The file system type mounted at `path` (the last mount there), or None."""
    wanted = os.path.realpath(path) if not _dead(path) else os.path.abspath(path)
    return _mountinfo(wanted)[0]


def _mountinfo(wanted: str) -> tuple[str | None, str | None]:
    """(file system type, "major:minor") of the last mount at the absolute path `wanted`."""
    found: tuple[str | None, str | None] = (None, None)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            left, _sep, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 5 and _unescape(fields[4]) == wanted:
                found = (right.split()[0] if right else None, fields[2])
    return found


def _read_ahead(mountpoint: Path, kib: int) -> None:
    """Lets the kernel read ahead `kib` KiB in one request to this mount (its default, 128
    KiB, splits reading a blob of about 1 MiB into eight round trips). Only root may; anyone
    else keeps the default. The device is found in mountinfo: a stat would wait for the
    mount's answer."""
    device = _mountinfo(str(mountpoint))[1]
    if device is None or not re.fullmatch(r"\d+:\d+", device):
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(str(kib))
    except OSError:
        pass


def _dead(path: Path) -> bool:
    """A FUSE mount whose process is gone answers ENOTCONN to every request. Opening the
    folder is one that always reaches the process: a stat may be answered from the kernel's
    attribute cache for a while after the process died."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def marker_for(home_path: Path, mountpoint: Path) -> Path:
    """The file in the agent home naming the job of the mount at `mountpoint`, while it runs."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:16]
    return home_path / f"mount-{digest}.job"


def prepare_mountpoint(mountpoint: Path) -> Path:
    """The mount point, absolute, after cleaning a stale mount of ours there; refused with one
    line if it is in use, not a folder, or not empty."""
    path = Path(os.path.abspath(mountpoint))
    kind = mount_type(path)
    if kind == FSTYPE:
        if not _dead(path):
            raise UsageError(f"{path} is already a strongroom mount; `strongroom unmount {path}` ends it")
        _fusermount(path, lazy=True)  # a killed mount's leftover
    elif kind is not None and _dead(path):
        raise UsageError(f"{path} is a dead FUSE mount of another program; unmount it first")
    if not path.exists():
        raise UsageError(f"mount point {path} does not exist; make an empty folder for it")
    if not path.is_dir():
        raise UsageError(f"mount point {path} is not a folder")
    if any(path.iterdir()):
        raise UsageError(f"mount point {path} is not empty")
    return path


def unmount(mountpoint: Path) -> bool:
    """Ends the strongroom mount at `mountpoint`: True if its process was alive (it then ends
    and records its job), False if the mount was stale (its process was killed)."""
    path = Path(os.path.abspath(mountpoint))
    if mount_type(path) != FSTYPE:
        raise UsageError(f"{path} is not a strongroom mount")
    dead = _dead(path)
    _fusermount(path, lazy=dead)
    return not dead


def _fusermount(path: Path, lazy: bool) -> None:
    command = ["fusermount3", "-u"] + (["-z"] if lazy else []) + ["--", str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_UNMOUNT_TIMEOUT)
    except FileNotFoundError:
        raise StrongroomError("fusermount3 is missing (install the fuse3 package)") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        if "busy" in reason.lower():
            raise StrongroomError(f"{path} is busy: a program has a file or folder in it open (close it, "
                                  "or leave that folder) and run `strongroom unmount` again")
        raise StrongroomError(f"could not unmount {path}: {reason}")


def serve(fs: object, mountpoint: Path, seconds: float, on_ready: Callable[[], None]) -> str:
    """Mounts `fs` read only at `mountpoint` and serves it until `seconds` pass (0: no limit),
    SIGINT, SIGTERM or SIGHUP (its terminal closed) arrives, or it is unmounted from outside.
    Returns why it ended: "time", "signal" or "unmounted". The mount is gone when this returns."""
    import pyfuse3
    import trio

    options = set(pyfuse3.default_options) | {"ro", "fsname=strongroom", "subtype=strongroom"}
    # pyfuse3 answers with up to `tasks` requests under way at once. More than one lets a slow
    # answer (a served vault's round trip) not hold up the others, but costs every request a
    # hand-over between two tasks (measured: about 20 % more CPU and 1.5 times the time of
    # `find` and `cat` over a mount). A file system that answers from a local disk says so.
    tasks = 1 if getattr(fs, "local", False) else _TASKS
    if tasks == 1:
        fs.serial = True  # type: ignore[attr-defined]
    if os.geteuid() == 0:
        options.add("allow_other")  # every user sees what the point shows them (their modes, ACLs)
    reason = "unmounted"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def fuse() -> None:
                await pyfuse3.main(1, tasks)
                nursery.cancel_scope.cancel()

            async def signals() -> None:
                nonlocal reason
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as received:
                    async for _sig in received:
                        reason = "signal"
                        pyfuse3.terminate()
                        return

            async def timer() -> None:
                nonlocal reason
                await trio.sleep(seconds)
                reason = "time"
                pyfuse3.terminate()

            async def read_ahead() -> None:
                # The kernel's INIT sets the read-ahead (to at most what it offered): raised after.
                while not getattr(fs, "initialized", True):
                    await trio.sleep(0.005)
                _read_ahead(mountpoint, _READ_AHEAD_KIB)

            nursery.start_soon(signals)
            nursery.start_soon(fuse)
            nursery.start_soon(read_ahead)
            if seconds > 0:
                nursery.start_soon(timer)
            on_ready()

    # A listing keeps what it decodes for the life of the mount (inodes, tree entries): the
    # cyclic garbage collector's passes over that ever larger heap took about 5 % of the CPU
    # of `find` over a mount. What start-up made is frozen out of its scans, and it runs less
    # often (young garbage, such as a request's exception, is still collected every 10,000
    # objects).
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    pyfuse3.init(fs, str(mountpoint), options)
    try:
        trio.run(main)
    finally:
        # Unmounted from outside: nothing left to unmount; else detach it now (files still open
        # in it keep working until closed, as the kernel's lazy unmount does).
        pyfuse3.close(unmount=reason != "unmounted")
    return reason
