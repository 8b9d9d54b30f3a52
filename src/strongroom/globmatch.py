"""Glob patterns on byte paths, one meaning for every command that selects files.

Used by backup excludes, restore --include/--exclude and find. Rules (as restic's and
rsync's users expect): a pattern without `/` matches an entry's name at any depth; a pattern
with `/` matches the whole path from the root (a leading `/` is optional). `*` and `?` never
cross `/`; `**` crosses any number of directories; `[...]` is a character class (`[!...]`
negates). Paths and patterns are bytes, so names that are not UTF-8 match too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

Matcher = Callable[[bytes, bytes], bool]  # (full path, name) -> matches


def _translate(pattern: bytes) -> bytes:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i:i + 1]
        if c == b"*":
            if pattern[i:i + 2] == b"**":
                i += 2
                if pattern[i:i + 1] == b"/":  # "**/" also matches no directory at all
                    out.append(b"(?:.*/)?")
                    i += 1
                else:
                    out.append(b".*")
                continue
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"[":
            end = pattern.find(b"]", i + 2 if pattern[i + 1:i + 2] in (b"!", b"]") else i + 1)
            if end < 0:
                out.append(b"\\[")
            else:
                body = pattern[i + 1:end]
                if body.startswith(b"!"):
                    body = b"^" + body[1:]
                out.append(b"[" + body.replace(b"\\", b"\\\\") + b"]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def compile_glob(pattern: str | bytes, *, ignore_case: bool = False) -> Matcher:
    """One pattern as a function of (full path, name)."""
    raw = pattern.encode("utf-8", "surrogateescape") if isinstance(pattern, str) else pattern
    anchored = b"/" in raw
    body = _translate(raw.lstrip(b"/") if anchored else raw)
    regex = re.compile(b"(?s:" + body + b")\\Z", re.IGNORECASE if ignore_case else 0)
    if anchored:
        return lambda full, name: regex.match(full.lstrip(b"/")) is not None
    return lambda full, name: regex.match(name) is not None


def compile_globs(patterns: Iterable[str | bytes], *, ignore_case: bool = False) -> Matcher:
    """Several patterns: matches when any one does; no pattern matches nothing."""
    matchers = [compile_glob(p, ignore_case=ignore_case) for p in patterns]
    return lambda full, name: any(m(full, name) for m in matchers)
