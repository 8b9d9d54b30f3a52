"""What a backup takes beyond its sources and plain excludes: the selection rules.

`--exclude-from` / `--include-from` (pattern files), `--exclude-caches` (CACHEDIR.TAG),
`--exclude-if-present NAME`, `--exclude-larger-than SIZE`, `--one-file-system` and
`--files-from` (source lists), for `strongroom backup` and for the policy the daemon
follows. The walk in agent/backup.py consults a `Selection` at three points: when it has
listed a directory (`listing`), when it has stat'ed an entry (`leaves_out`) and when a
directory turned out empty (`drops_empty`). Patterns mean what globmatch.py says, as for
`--exclude`.

Marked directories (a valid CACHEDIR.TAG, or a file named by --exclude-if-present) are
kept with the marker file alone, as restic does: a restore shows that something was left
out there, and the tag keeps the folder marked. A mount point of another file system under
`--one-file-system` is kept as an empty directory, so a restored system has it to mount on.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from strongroom.errors import UsageError
from strongroom.globmatch import compile_globs

CACHEDIR_TAG = b"CACHEDIR.TAG"
# bford.info/cachedir: the tag's first 43 bytes; anything else is not a cache directory's tag.
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
MAX_LIST_BYTES = 64 * 1024 * 1024  # a pattern or path list larger than this is a mistake
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def parse_size(text: str) -> int:
    """'500K', '1.5G', '10MiB', '4096' -> bytes (units are binary: K = 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"{text!r} is not a size (like 500K, 10M, 1.5G or a number of bytes)")
    return int(float(m[1]) * _SIZE_UNITS[m[2].upper()])


def _read_list(path: Path, what: str) -> bytes:
    """The file's bytes; `-` is standard input (`find -print0 | strongroom backup --files-from - -0`)."""
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_LIST_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_LIST_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_LIST_BYTES:
        raise UsageError(f"the {what} {path} is larger than {MAX_LIST_BYTES // 1024 // 1024} MiB")
    return data


def read_patterns(path: Path) -> list[str]:
    """A pattern file: one pattern a line; blank lines and lines starting with `#` ignored;
    trailing spaces and a CR before the newline are dropped (leading spaces are kept:
    they may begin a name)."""
    out = []
    for raw in _read_list(path, "pattern file").split(b"\n"):
        line = raw.rstrip(b"\r").rstrip(b" \t")
        if line and not line.startswith(b"#"):
            out.append(os.fsdecode(line))
    return out


def read_paths(path: Path, nul: bool) -> list[bytes]:
    """A path list (`--files-from`): one path a line, blank lines and `#` comments ignored;
    with `nul` (`-0`), NUL-separated and taken verbatim (as `find -print0` writes)."""
    data = _read_list(path, "path list")
    if nul:
        return [p for p in data.split(b"\0") if p]
    out = []
    for raw in data.split(b"\n"):
        line = raw.rstrip(b"\r")
        if line.strip() and not line.startswith(b"#"):
            out.append(line)
    return out


def existing_paths(paths: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    """The listed paths that exist, and a warning for each that does not (or cannot be
    stat'ed): a list made earlier may name files deleted since, which must not stop the rest."""
    found, missing = [], []
    for p in paths:
        try:
            os.lstat(p)
            found.append(p)
        except OSError as exc:
            reason = "does not exist" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
            missing.append((os.path.abspath(p), f"listed in --files-from but {reason}; not backed up"))
    return found, missing


@dataclass(frozen=True)
class SelectionRules:
    """The rules as given on the command line or stored (sealed) in the policy."""

    include_patterns: tuple[str, ...] = ()
    exclude_caches: bool = False
    exclude_if_present: tuple[str, ...] = ()
    exclude_larger_than: int | None = None
    one_file_system: bool = False

    def __post_init__(self) -> None:
        for name in self.exclude_if_present:
            if not name or "/" in name or name in (".", "..") or "\0" in name:
                raise UsageError(f"--exclude-if-present takes a file name, not {name!r}")
        if self.exclude_larger_than is not None and self.exclude_larger_than < 0:
            raise UsageError("--exclude-larger-than takes a size of 0 or more")

    def __bool__(self) -> bool:
        return self != SelectionRules()

    def to_doc(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> "SelectionRules":
        """From a stored document; a missing or partial one means the defaults."""
        doc = doc or {}
        size = doc.get("exclude_larger_than")
        return cls(tuple(str(p) for p in doc.get("include_patterns", ())), bool(doc.get("exclude_caches")),
                   tuple(str(n) for n in doc.get("exclude_if_present", ())),
                   int(size) if size is not None else None, bool(doc.get("one_file_system")))

    def describe(self) -> list[str]:
        """The rules in words, one per rule set, for `policy show`."""
        out = []
        if self.include_patterns:
            out.append("only " + ", ".join(self.include_patterns))
        if self.exclude_caches:
            out.append("no cache directories (CACHEDIR.TAG)")
        if self.exclude_if_present:
            out.append("no directories holding " + ", ".join(self.exclude_if_present))
        if self.exclude_larger_than is not None:
            out.append(f"no files larger than {self.exclude_larger_than} bytes")
        if self.one_file_system:
            out.append("one file system")
        return out


@dataclass
class Selection:
    """The rules at work during one walk (single-threaded, depth first)."""

    rules: SelectionRules = field(default_factory=SelectionRules)
    sources: list[bytes] = field(default_factory=list)
    read_at: dict[bytes, bytes] = field(default_factory=dict)  # source -> where it is read (a snapshot)

    def __post_init__(self) -> None:
        r = self.rules
        self.active = bool(r)
        self.included = compile_globs(os.fsencode(p) for p in r.include_patterns)
        self.markers = [os.fsencode(n) for n in r.exclude_if_present]
        self._inside: list[bytes] = []  # included directories on the walk's current path
        self._source_dev: dict[bytes, int] = {}

    # -- the hooks ----------------------------------------------------------------------------

    def listing(self, dfd: int, path: bytes, names: list[bytes]) -> list[bytes]:
        """The names of directory `path` (open as `dfd`) that the walk is to look at."""
        if not self.active:
            return names
        r = self.rules
        if r.one_file_system:
            # Devices as the walk opens them: a source read from a snapshot has the snapshot's.
            if (path or b"/") in self.sources:
                self._source_dev[path or b"/"] = os.fstat(dfd).st_dev
            elif os.fstat(dfd).st_dev != self._dev_of(path):
                return []  # a mount point: kept, empty
        if r.exclude_caches and CACHEDIR_TAG in names and _is_cache_tag(dfd):
            return [CACHEDIR_TAG]
        present = [n for n in self.markers if n in names]
        if present:
            return present
        return names

    def leaves_out(self, full: bytes, name: bytes, st: os.stat_result, is_dir: bool) -> bool:
        """Whether the entry at `full`, stat'ed as `st`, is left out of the backup."""
        if not self.active:
            return False
        if not is_dir and self.rules.exclude_larger_than is not None and st.st_size > self.rules.exclude_larger_than:
            return True
        if not self.rules.include_patterns:
            return False
        if self._is_inside(full) or self.included(full, name):
            if is_dir:
                self._inside.append(full)
            return False
        return not is_dir  # a directory is walked for matches below it; `drops_empty` decides

    def drops_empty(self, path: bytes) -> bool:
        """Whether directory `path`, which holds nothing backed up, is left out: with include
        patterns, only the directories that lead to a match are kept."""
        return bool(self.rules.include_patterns) and path not in self.sources and not self._is_inside(path)

    # -- helpers ------------------------------------------------------------------------------

    def _is_inside(self, full: bytes) -> bool:
        # The walk is depth first: a directory left behind is never entered again.
        stack = self._inside
        while stack and not (full == stack[-1] or full.startswith(stack[-1].rstrip(b"/") + b"/")):
            stack.pop()
        return bool(stack)

    def _dev_of(self, path: bytes) -> int:
        """The device of the source that holds `path` (the longest that does), as `listing`
        saw it when the walk entered that source."""
        holders = [s for s in self.sources if s == b"/" or path.startswith(s + b"/")]
        src = max(holders, key=len) if holders else b"/"
        if src not in self._source_dev:  # not entered through `listing` (an optimized walk, a file)
            self._source_dev[src] = os.stat(self.read_at.get(src, src)).st_dev
        return self._source_dev[src]


def change_base(points: list[Any]) -> list[Any]:
    """The points (newest first) a files backup compares with: a `backup --stdin` point holds
    no files, and taking it as the parent would make the next backup read everything again."""
    return [p for p in points if "stdin" not in p.manifest]


def _is_cache_tag(dfd: int) -> bool:
    """Whether the directory's CACHEDIR.TAG begins with the signature (a regular file only:
    a FIFO or a link planted there must neither block the walk nor mark the folder)."""
    try:
        fd = os.open(CACHEDIR_TAG, _OPEN_FLAGS, dir_fd=dfd)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.pread(fd, len(CACHEDIR_SIGNATURE), 0) == CACHEDIR_SIGNATURE
    except OSError:
        return False
    finally:
        os.close(fd)
